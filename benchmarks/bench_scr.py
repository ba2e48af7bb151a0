"""SCR alone: our jitted Algorithm 2 vs a scikit-learn / scipy pipeline, same process.

  python -m benchmarks.bench_scr            # 100k points, indoor Table 9 parameters
  python -m benchmarks.bench_scr --quick    # 4k points

Scene: 60 box-shaped objects in a 12 x 12 x 3 m room, offsets pointing to each box
centre plus 5 cm noise, random 32-d features. Baseline: sklearn KMeans(n_init=1,
max_iter=10) on the same L2-normalised features, a cKDTree kNN query per K-means segment
(distance < tau_d), scipy connected_components, numpy centroids. Reports medians over
repeats, the two pipelines timed in turn (ours after compilation), and the ratio
baseline / ours (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial
import sklearn.cluster

from kernels import knn as knn_lib
from pointins_jax.pointins import connected_components as cc_lib
from pointins_jax.pointins import kmeans as kmeans_lib
from pointins_jax.pointins import scr
from benchmarks.timing import interleaved_median_seconds, median_seconds


def room_scene(n: int, seed: int = 0):
  """coord, offsets f32 [n, 3] metres; features f32 [n, 32]; valid bool [n]."""
  rng = np.random.default_rng(seed)
  num_objects = 60
  centre = np.stack([rng.uniform(0, 12, num_objects), rng.uniform(0, 12, num_objects),
                     rng.uniform(0.3, 2.0, num_objects)], -1)
  half_size = rng.uniform(0.2, 1.0, (num_objects, 3))
  obj = rng.integers(0, num_objects, n)
  coord = centre[obj] + rng.uniform(-1, 1, (n, 3)) * half_size[obj]
  offsets = centre[obj] - coord + rng.normal(0, 0.05, (n, 3))
  features = rng.normal(size=(n, 32))
  return (coord.astype(np.float32), offsets.astype(np.float32), features.astype(np.float32),
          np.ones(n, bool))


def baseline(coord, offsets, features, valid, *, num_clusters, kmeans_iters, k_nn, tau_d,
             tau_min, seed=0):
  """sklearn KMeans + per-segment cKDTree + scipy connected components (Algorithm 2)."""
  n = len(coord)
  unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
  cluster = np.full(n, -1)
  cluster[valid] = sklearn.cluster.KMeans(num_clusters, n_init=1, max_iter=kmeans_iters,
                                          random_state=seed).fit_predict(unit[valid])
  predicted = coord + offsets
  senders, receivers = [], []
  for segment in range(num_clusters):
    members = np.flatnonzero(cluster == segment)
    if len(members) == 0:
      continue
    dist, nn = scipy.spatial.cKDTree(predicted[members]).query(
        predicted[members], k=min(k_nn, len(members)), distance_upper_bound=tau_d)
    dist, nn = dist.reshape(len(members), -1), nn.reshape(len(members), -1)
    keep = dist < tau_d
    senders.append(np.repeat(members, nn.shape[1])[keep.ravel()])
    receivers.append(members[nn[keep]])
  senders, receivers = np.concatenate(senders), np.concatenate(receivers)
  graph = scipy.sparse.coo_matrix((np.ones(len(senders)), (senders, receivers)), (n, n))
  _, comp = scipy.sparse.csgraph.connected_components(graph, directed=False)
  size = np.bincount(comp, minlength=n)
  has_target = valid & (size[comp] >= tau_min)
  centroid = np.stack([np.bincount(comp, predicted[:, a], minlength=n) for a in range(3)], -1)
  target = np.where(has_target[:, None], centroid[comp] / np.maximum(size[comp], 1)[:, None]
                    - coord, 0.0)
  return target, has_target


def our_stage_seconds(coord, offsets, features, valid, key, params, knn_impl, repeats):
  """Medians of our three stages run separately (jitted, after compilation)."""
  kmeans = jax.jit(functools.partial(kmeans_lib.kmeans, k=params["num_clusters"],
                                     iters=params["kmeans_iters"]))
  cluster, _ = kmeans(features, valid, key=key)
  knn = jax.jit(lambda c, s: knn_lib.knn(c, c, params["k_nn"], query_valid=valid,
                                         key_valid=valid, query_segment=s, key_segment=s,
                                         max_distance=params["tau_d"], impl=knn_impl)[0])
  index = knn(coord + offsets, cluster)
  components = jax.jit(cc_lib.components_from_knn)
  stages = {"K-means": lambda: kmeans(features, valid, key=key),
            "kNN in centroid space": lambda: knn(coord + offsets, cluster),
            "connected components": lambda: components(index, valid)}
  return {name: median_seconds(lambda f=fn: jax.block_until_ready(f()), repeats)
          for name, fn in stages.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="4k points, 3 repeats")
  parser.add_argument("--points", type=int, default=None)
  parser.add_argument("--k-nn", type=int, default=150)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--knn-impl", default="auto")
  args = parser.parse_args()
  n = args.points or (4096 if args.quick else 100_000)
  repeats = 3 if args.quick else args.repeats
  params = dict(num_clusters=20, kmeans_iters=10, k_nn=args.k_nn, tau_d=1.2, tau_min=30)

  coord, offsets, features, valid = room_scene(n)
  arrays = [jax.device_put(a) for a in (coord, offsets, features, valid)]
  key = jax.random.key(0)
  ours = jax.jit(functools.partial(scr.spatial_clustering_targets, knn_impl=args.knn_impl,
                                   **params))
  start = time.perf_counter()
  out = jax.block_until_ready(ours(*arrays, key))
  compile_s = time.perf_counter() - start
  _, ref_has_target = baseline(coord, offsets, features, valid, **params)
  ours_s, base_s = interleaved_median_seconds(
      [lambda: ours(*arrays, key), lambda: baseline(coord, offsets, features, valid, **params)],
      repeats, warmup=False)

  print(f"device: {jax.devices()[0].device_kind}; N={n}, {params}, knn_impl={args.knn_impl}, "
        f"median of {repeats}")
  print("| pipeline | median (s) | ratio vs baseline |")
  print("|---|---|---|")
  print(f"| sklearn KMeans + cKDTree + scipy CC (baseline) | {base_s:.4f} | 1.00 |")
  print(f"| ours, jit (first call incl. compile {compile_s:.2f} s) | {ours_s:.4f} | "
        f"{base_s / ours_s:.2f}x |")
  for name, seconds in our_stage_seconds(*arrays, key, params, args.knn_impl,
                                         repeats).items():
    print(f"| ours, {name} alone | {seconds:.4f} | |")
  print(f"points with a target: ours {int(np.sum(out['has_target']))}, "
        f"baseline {int(ref_has_target.sum())} (K-means initialisations differ)")


if __name__ == "__main__":
  main()
