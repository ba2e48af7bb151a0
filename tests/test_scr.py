"""SCR (Algorithm 2) against a numpy / scipy (cKDTree + csgraph) reference."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial

from pointins_jax.pointins import kmeans as kmeans_lib
from pointins_jax.pointins import scr
from tests.test_kmeans import numpy_lloyd

# Production: ~100k points, K=20, k_nn=150, tau_d=1.2 m, tau_min=30 (indoor, Table 9).
N, K, K_NN, TAU_D, TAU_MIN = 500, 4, 12, 0.25, 8


def small_scene(seed, n=N):
  """Objects on a floor: offsets point to each object's centre (+ noise; 10% of them
  scattered, which strands points in small components), features encode the object's
  class (+ noise), 15% padding."""
  rng = np.random.default_rng(seed)
  num_objects = 10
  centre = np.stack([rng.uniform(0, 4, num_objects), rng.uniform(0, 4, num_objects),
                     rng.uniform(0.2, 1.0, num_objects)], -1)
  obj = rng.integers(0, num_objects, n)
  coord = centre[obj] + rng.uniform(-0.3, 0.3, (n, 3))
  offsets = centre[obj] - coord + rng.normal(0, 0.03, (n, 3))
  scattered = rng.random(n) < 0.1
  offsets[scattered] += rng.normal(0, 1.0, (scattered.sum(), 3))
  features = np.eye(8)[obj % 3] * 2 + rng.normal(0, 0.3, (n, 8))
  valid = rng.random(n) < 0.85
  return (coord.astype(np.float32), offsets.astype(np.float32), features.astype(np.float32),
          valid)


def reference_targets(coord, offsets, cluster, valid, centroid_source):
  """Algorithm 2 steps 3-5 with cKDTree per segment and scipy connected components."""
  n = len(coord)
  predicted = coord.astype(np.float64) + offsets
  senders, receivers = [], []
  for segment in np.unique(cluster[valid]):
    members = np.flatnonzero(valid & (cluster == segment))
    dist, nn = scipy.spatial.cKDTree(predicted[members]).query(
        predicted[members], k=min(K_NN, len(members)))
    dist, nn = dist.reshape(len(members), -1), nn.reshape(len(members), -1)
    keep = dist < TAU_D
    senders.append(np.repeat(members, nn.shape[1])[keep.ravel()])
    receivers.append(members[nn[keep]])
  senders, receivers = np.concatenate(senders), np.concatenate(receivers)
  graph = scipy.sparse.coo_matrix((np.ones(len(senders)), (senders, receivers)), (n, n))
  _, comp = scipy.sparse.csgraph.connected_components(graph, directed=False)
  comp = np.where(valid, comp, -1)
  sizes = np.bincount(comp[valid], minlength=n)
  has_target = valid & (sizes[np.maximum(comp, 0)] >= TAU_MIN)
  source = predicted if centroid_source == "predicted" else coord.astype(np.float64)
  target = np.zeros((n, 3))
  for c in np.unique(comp[has_target]):
    members = comp == c
    target[members] = source[members].mean(0) - coord[members]
  return target, has_target, comp


def same_partition(a, b, mask):
  """Two labelings restricted to mask induce the same partition."""
  pairs = set(zip(a[mask].tolist(), b[mask].tolist()))
  return len(pairs) == len(set(a[mask].tolist())) == len(set(b[mask].tolist()))


@pytest.mark.parametrize("centroid_source", scr.CENTROID_SOURCES)
def test_matches_reference(centroid_source):
  coord, offsets, features, valid = small_scene(0)
  key = jax.random.key(0)
  fn = jax.jit(functools.partial(scr.spatial_clustering_targets, num_clusters=K,
                                 kmeans_iters=10, k_nn=K_NN, tau_d=TAU_D, tau_min=TAU_MIN,
                                 centroid_source=centroid_source))
  out = jax.tree.map(np.asarray, fn(coord, offsets, features, valid, key))

  unit = kmeans_lib.normalize_features(features)
  start = kmeans_lib.init_centers(unit, jnp.asarray(valid), K, key)
  ref_cluster, _ = numpy_lloyd(np.asarray(unit), valid, np.asarray(start), 10)
  np.testing.assert_array_equal(out["cluster"], ref_cluster)

  target, has_target, comp = reference_targets(coord, offsets, ref_cluster, valid,
                                               centroid_source)
  assert 3 <= has_target.sum() < valid.sum()  # the scene exercises both outcomes
  np.testing.assert_array_equal(out["has_target"], has_target)
  np.testing.assert_allclose(out["target"], target, atol=1e-5)
  assert same_partition(out["instance_id"], comp, has_target)
  assert out["num_instances"] == len(np.unique(comp[has_target]))
  np.testing.assert_array_equal(np.unique(out["instance_id"][has_target]),
                                np.arange(out["num_instances"]))
  assert np.all(out["instance_id"][~has_target] == -1)


def test_vmap_and_padding_ignored():
  scenes = [small_scene(s, 300) for s in range(2)]
  coord, offsets, features, valid = (np.stack(a) for a in zip(*scenes))
  keys = jax.random.split(jax.random.key(1), 2)
  fn = functools.partial(scr.spatial_clustering_targets, num_clusters=K, k_nn=K_NN,
                         tau_d=TAU_D, tau_min=TAU_MIN)
  batched = jax.jit(jax.vmap(fn))(coord, offsets, features, valid, keys)
  for b in range(2):
    garbage = np.where(valid[b][:, None], offsets[b], 50.0).astype(np.float32)
    single = fn(coord[b], garbage, features[b], valid[b], keys[b])
    np.testing.assert_array_equal(batched["has_target"][b], single["has_target"])
    np.testing.assert_allclose(batched["target"][b], single["target"], atol=1e-6)
    assert not np.any(np.asarray(single["has_target"])[~valid[b]])


def test_all_invalid_gives_no_targets():
  coord, offsets, features, _ = small_scene(2, 100)
  out = scr.spatial_clustering_targets(coord, offsets, features, np.zeros(100, bool),
                                       jax.random.key(0), num_clusters=K, k_nn=K_NN,
                                       tau_d=TAU_D, tau_min=TAU_MIN)
  assert not np.any(out["has_target"]) and int(out["num_instances"]) == 0
  np.testing.assert_array_equal(out["target"], 0.0)
  np.testing.assert_array_equal(out["instance_id"], -1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(centroid_source="mean"), "centroid_source"),
    (dict(tau_d=0.0), "tau_d > 0"),
    (dict(k_nn=0), "k_nn >= 1"),
])
def test_bad_arguments_raise(kwargs, match):
  coord, offsets, features, valid = small_scene(3, 50)
  with pytest.raises(ValueError, match=match):
    scr.spatial_clustering_targets(coord, offsets, features, valid, jax.random.key(0),
                                   **kwargs)


def test_segment_sums_match_numpy():
  rng = np.random.default_rng(6)
  values = rng.normal(size=(300, 4)).astype(np.float32)
  segment = rng.integers(0, 12, 300)
  expected = np.zeros((15, 4))
  np.add.at(expected, segment, values)
  np.testing.assert_allclose(scr._segment_sums(jnp.asarray(values), jnp.asarray(segment), 15),
                             expected, atol=1e-5)
