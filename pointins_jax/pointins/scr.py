"""SCR: spatial clustering regularisation (paper Algorithm 2), one scene, jittable.

  1. predicted centroids c_i = x_i + O~_i (ODR-regularised teacher offsets);
  2. K-means on the teacher features -> K segments (`pointins.kmeans`);
  3. within each segment a kNN graph in centroid space (`kernels.knn` with segment ids),
     an edge i -> j kept only when ||c_i - c_j|| < tau_d (strict); connected components
     of that graph taken as undirected (an edge found from either end links both, as the
     paper's BFS does), by array union-find (`pointins.connected_components`);
  4. components with fewer than tau_min points are discarded: their points get no target;
  5. refined centroid per component; target O*_i = centroid - x_i.

The paper is inconsistent in step 5: Eq. 4 averages the points x_i, Algorithm 2 averages
the predicted centroids c_i. `centroid_source='predicted'` (default) follows Algorithm 2,
`'points'` follows Eq. 4.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels import knn as knn_lib
from pointins_jax.pointins import connected_components as cc_lib
from pointins_jax.pointins import kmeans as kmeans_lib

CENTROID_SOURCES = ("predicted", "points")


def _check_arguments(coord, offsets, features, valid, num_clusters, kmeans_iters, k_nn, tau_d,
                     tau_min, centroid_source):
  n = coord.shape[0]
  if coord.shape != (n, 3) or offsets.shape != (n, 3):
    raise ValueError(f"spatial_clustering_targets: coord and offsets must be [N, 3], got "
                     f"{coord.shape} and {offsets.shape} (vmap over the batch axis).")
  if features.ndim != 2 or features.shape[0] != n or valid.shape != (n,):
    raise ValueError(f"spatial_clustering_targets: need features [{n}, C] and valid [{n}], "
                     f"got {features.shape} and {valid.shape}.")
  if num_clusters < 1 or kmeans_iters < 0 or k_nn < 1 or tau_min < 1 or not tau_d > 0:
    raise ValueError(
        "config.offset: need num_clusters >= 1, kmeans_iters >= 0, k_nn >= 1, tau_min >= 1 "
        f"and tau_d > 0; got num_clusters={num_clusters}, kmeans_iters={kmeans_iters}, "
        f"k_nn={k_nn}, tau_min={tau_min}, tau_d={tau_d}.")
  if centroid_source not in CENTROID_SOURCES:
    raise ValueError(f"config.offset.centroid_source={centroid_source!r}: use 'predicted' "
                     "(Algorithm 2) or 'points' (Eq. 4).")


def _segment_sums(values, segment, num_segments: int):
  """Deterministic per-segment sums, f32 [num_segments, D], of values [N, D].

  Sort by segment, then a segmented scan: unlike a scatter-add (run in a nondeterministic
  order on GPUs), the summation order is fixed, so equal inputs give equal bits.
  """
  order = jnp.argsort(segment, stable=True)
  segment, values = segment[order], values[order]
  starts = jnp.concatenate([jnp.ones((1,), bool), segment[1:] != segment[:-1]])
  ends = jnp.concatenate([segment[1:] != segment[:-1], jnp.ones((1,), bool)])

  def combine(left, right):
    left_start, left_sum = left
    right_start, right_sum = right
    return left_start | right_start, jnp.where(right_start[..., None], right_sum,
                                               left_sum + right_sum)

  _, running = jax.lax.associative_scan(combine, (starts, values))
  index = jnp.where(ends, segment, num_segments)  # one write per segment; the rest drop
  return jnp.zeros((num_segments, values.shape[1]), values.dtype).at[index].set(
      running, mode="drop")


def spatial_clustering_targets(coord, offsets, features, valid, key, *, num_clusters: int = 20,
                               kmeans_iters: int = 10, k_nn: int = 150, tau_d: float = 1.2,
                               tau_min: int = 30, centroid_source: str = "predicted",
                               knn_impl: str = "auto"):
  """Pseudo-instance offset targets of one scene (defaults: Table 9, indoor).

  Args:
    coord: f32 [N, 3] point coordinates, metres (original frame).
    offsets: f32 [N, 3] ODR-regularised teacher offsets, metres.
    features: f32 [N, C] teacher features.
    valid: bool [N] real points; padding gets no target and joins no component.
    key: PRNG key (K-means initialisation).
    num_clusters, kmeans_iters: K-means K and iterations.
    k_nn: neighbours per point (the point itself included, at distance 0).
    tau_d: centroid-space edge length limit, metres (strict).
    tau_min: smallest kept component, points.
    centroid_source: 'predicted' (Algorithm 2) | 'points' (Eq. 4).
    knn_impl: `kernels.knn.knn` implementation.
  Returns:
    dict(target f32 [N, 3] metres (0 where no target), has_target bool [N],
         instance_id i32 [N] in [0, num_instances) (-1 where no target, ordered by the
         smallest point index of each component), num_instances i32 [],
         cluster i32 [N] K-means segment (-1 on padding)).
  """
  _check_arguments(coord, offsets, features, valid, num_clusters, kmeans_iters, k_nn, tau_d,
                   tau_min, centroid_source)
  n = coord.shape[0]
  valid = valid.astype(bool)
  coord = coord.astype(jnp.float32)
  centroids = coord + offsets.astype(jnp.float32)
  # Named scopes charge each part's ops in profiles (benchmarks/profile_step.py).
  with jax.named_scope("scr_kmeans"):
    cluster, _ = kmeans_lib.kmeans(features, valid, num_clusters, kmeans_iters, key)
  with jax.named_scope("scr_knn"):
    index, _ = knn_lib.knn(centroids, centroids, min(k_nn, n), query_valid=valid,
                           key_valid=valid, query_segment=cluster, key_segment=cluster,
                           max_distance=tau_d, impl=knn_impl)
  with jax.named_scope("scr_components"):
    component = cc_lib.components_from_knn(index, node_valid=valid)  # -1 on padding

  # Per-component sums indexed by the component's root id; padding goes to slot n.
  slot = jnp.where(valid, component, n)
  source = centroids if centroid_source == "predicted" else coord
  source = jnp.where(valid[:, None], source, 0.0)
  sums = _segment_sums(jnp.concatenate([source, jnp.ones((n, 1), jnp.float32)], -1), slot,
                       n + 1)
  size = sums[:, 3]  # exact: integer counts below 2^24
  has_target = valid & (size[slot] >= tau_min)
  refined = sums[:, :3] / jnp.maximum(size, 1.0)[:, None]
  target = jnp.where(has_target[:, None], refined[slot] - coord, 0.0)

  kept_root = has_target & (component == jnp.arange(n))
  compact = jnp.cumsum(kept_root.astype(jnp.int32)) - 1  # root id -> 0..num_instances-1
  instance_id = jnp.where(has_target, compact[jnp.where(has_target, component, 0)], -1)
  return {"target": target, "has_target": has_target, "instance_id": instance_id,
          "num_instances": jnp.sum(kept_root).astype(jnp.int32), "cluster": cluster}
