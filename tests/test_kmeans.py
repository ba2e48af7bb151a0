"""K-means against a numpy Lloyd reference started from the same centres."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.pointins import kmeans as kmeans_lib

N, C, K = 600, 16, 8  # production: ~100k points, C = concatenated multi-scale channels, K=20


def numpy_lloyd(features, valid, centers, iters):
  """Reference Lloyd: assign to the nearest centre, mean of valid members, empty keeps."""
  centers = centers.astype(np.float64).copy()
  x = features[valid].astype(np.float64)
  for _ in range(iters):
    assign = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    for j in range(len(centers)):
      if np.any(assign == j):
        centers[j] = x[assign == j].mean(0)
  assign = np.full(len(features), -1)
  assign[valid] = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
  return assign, centers


def blobs(seed, n=N):
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(K, C)) * 3
  features = means[rng.integers(0, K, n)] + rng.normal(size=(n, C))
  return features.astype(np.float32), rng.random(n) < 0.85


@pytest.mark.parametrize("init", kmeans_lib.INITS)
def test_matches_numpy_lloyd_from_same_init(init):
  features, valid = blobs(0)
  key = jax.random.key(0)
  assign, centers = jax.jit(kmeans_lib.kmeans, static_argnums=(2, 3, 5))(
      features, valid, K, 10, key, init)
  unit = np.asarray(kmeans_lib.normalize_features(features))
  start = np.asarray(kmeans_lib.init_centers(jnp.asarray(unit), jnp.asarray(valid), K, key,
                                             init))
  ref_assign, ref_centers = numpy_lloyd(unit, valid, start, 10)
  np.testing.assert_array_equal(assign, ref_assign)
  np.testing.assert_allclose(centers, ref_centers, atol=1e-5)


def test_init_picks_distinct_valid_points():
  features, valid = blobs(1)
  unit = kmeans_lib.normalize_features(features)
  for init in kmeans_lib.INITS:
    centers = np.asarray(kmeans_lib.init_centers(unit, jnp.asarray(valid), K,
                                                 jax.random.key(3), init))
    rows = np.asarray(unit)[valid]
    matches = [np.flatnonzero(np.all(rows == c, axis=1)) for c in centers]
    assert all(len(m) > 0 for m in matches), init
    assert len({int(m[0]) for m in matches}) == K, init


def test_empty_cluster_keeps_centre():
  features = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], np.float32)
  centers = jnp.array([[1, 0], [0, 1], [-1, 0]], jnp.float32)  # third centre stays empty
  out = kmeans_lib.lloyd(jnp.asarray(features), jnp.ones(4, bool), centers, 3)
  np.testing.assert_array_equal(out[2], [-1, 0])


def test_invalid_rows_ignored_and_deterministic():
  features, valid = blobs(2)
  key = jax.random.key(7)
  assign, centers = kmeans_lib.kmeans(features, valid, K, 5, key)
  garbage = np.where(valid[:, None], features, 1e6).astype(np.float32)
  assign2, centers2 = kmeans_lib.kmeans(garbage, valid, K, 5, key)
  np.testing.assert_array_equal(assign, assign2)
  np.testing.assert_array_equal(centers, centers2)
  assert np.all(np.asarray(assign)[~valid] == -1)


def test_fewer_valid_points_than_clusters_and_none_valid():
  features, _ = blobs(3, 20)
  valid = np.zeros(20, bool)
  valid[:3] = True
  assign, centers = kmeans_lib.kmeans(features, valid, K, 4, jax.random.key(0))
  assert np.isfinite(np.asarray(centers)).all()
  assert set(np.asarray(assign)[:3]) <= set(range(K)) and np.all(np.asarray(assign)[3:] == -1)
  assign, centers = kmeans_lib.kmeans(features, np.zeros(20, bool), K, 4, jax.random.key(0))
  assert np.all(np.asarray(assign) == -1) and np.isfinite(np.asarray(centers)).all()


def test_vmap_over_scenes():
  features = np.stack([blobs(s, 200)[0] for s in range(2)])
  valid = np.stack([blobs(s, 200)[1] for s in range(2)])
  keys = jax.random.split(jax.random.key(0), 2)
  assign, _ = jax.vmap(lambda f, v, k: kmeans_lib.kmeans(f, v, K, 5, k))(features, valid, keys)
  for b in range(2):
    np.testing.assert_array_equal(assign[b], kmeans_lib.kmeans(features[b], valid[b], K, 5,
                                                                keys[b])[0])


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="init"):
    kmeans_lib.kmeans(jnp.zeros((4, 2)), jnp.ones(4, bool), 2, 1, jax.random.key(0), "pp")
  with pytest.raises(ValueError, match="features \\[N, C\\]"):
    kmeans_lib.kmeans(jnp.zeros((4,)), jnp.ones(4, bool), 2, 1, jax.random.key(0))
