"""Union-find connected components against scipy.sparse.csgraph (as partitions)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph

from pointins_jax.pointins import connected_components as cc


def scipy_labels(senders, receivers, edge_valid, n, node_valid=None):
  """Reference: min node id per component; -1 for invalid nodes."""
  node_valid = np.ones(n, bool) if node_valid is None else node_valid
  keep = edge_valid & node_valid[senders] & node_valid[receivers]
  graph = scipy.sparse.coo_matrix((np.ones(keep.sum()), (senders[keep], receivers[keep])),
                                  shape=(n, n))
  _, comp = scipy.sparse.csgraph.connected_components(graph, directed=False)
  smallest = np.full(comp.max() + 1, n)
  np.minimum.at(smallest, comp, np.arange(n))
  return np.where(node_valid, smallest[comp], -1)


def run(senders, receivers, edge_valid, n, node_valid=None):
  fn = jax.jit(cc.connected_components, static_argnums=(3,), static_argnames="return_num_rounds")
  labels, rounds = fn(jnp.asarray(senders), jnp.asarray(receivers), jnp.asarray(edge_valid),
                      n, None if node_valid is None else jnp.asarray(node_valid),
                      return_num_rounds=True)
  return np.asarray(labels), int(rounds)


@pytest.mark.parametrize("seed, n, e", [(0, 300, 150), (1, 300, 400), (2, 1000, 2000)])
def test_random_graphs_match_scipy(seed, n, e):
  rng = np.random.default_rng(seed)
  senders, receivers = rng.integers(0, n, e), rng.integers(0, n, e)
  edge_valid = rng.random(e) < 0.9
  node_valid = rng.random(n) < 0.95
  labels, _ = run(senders, receivers, edge_valid, n, node_valid)
  np.testing.assert_array_equal(labels, scipy_labels(senders, receivers, edge_valid, n,
                                                     node_valid))


@pytest.mark.parametrize("order", ["forward", "reversed", "shuffled"])
def test_long_chain_converges_in_few_rounds(order):
  n = 10_000
  ids = {"forward": np.arange(n), "reversed": np.arange(n)[::-1],
         "shuffled": np.random.default_rng(0).permutation(n)}[order]
  senders, receivers = ids[:-1], ids[1:]
  labels, rounds = run(senders, receivers, np.ones(n - 1, bool), n)
  np.testing.assert_array_equal(labels, 0)
  # Label propagation would need ~n rounds; hooking + full pointer jumping needs O(log n).
  assert rounds <= 2 * int(np.log2(n)), rounds


def test_empty_graphs():
  labels, rounds = run(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool), 5)
  np.testing.assert_array_equal(labels, np.arange(5))
  assert rounds == 1
  labels, _ = run(np.array([0, 1]), np.array([1, 2]), np.zeros(2, bool), 3)
  np.testing.assert_array_equal(labels, np.arange(3))
  labels, _ = run(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, bool), 0)
  assert labels.shape == (0,)


def test_all_nodes_invalid_and_out_of_range_edges_ignored():
  labels, _ = run(np.array([0, 1]), np.array([1, 2]), np.ones(2, bool), 3, np.zeros(3, bool))
  np.testing.assert_array_equal(labels, -1)
  labels, _ = run(np.array([0, -1, 3]), np.array([-1, 2, 7]), np.ones(3, bool), 4)
  np.testing.assert_array_equal(labels, np.arange(4))


def test_components_from_knn_matches_scipy_and_vmaps():
  rng = np.random.default_rng(4)
  n, k = 200, 3
  index = rng.integers(-1, n, (2, n, k)).astype(np.int32)
  node_valid = rng.random((2, n)) < 0.9
  labels = jax.vmap(cc.components_from_knn)(jnp.asarray(index), jnp.asarray(node_valid))
  for b in range(2):
    senders = np.repeat(np.arange(n), k)
    receivers = index[b].reshape(-1)
    ok = receivers >= 0
    np.testing.assert_array_equal(
        labels[b], scipy_labels(senders[ok], receivers[ok], np.ones(ok.sum(), bool), n,
                                node_valid[b]))


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="one shape"):
    cc.connected_components(jnp.zeros(3, jnp.int32), jnp.zeros(2, jnp.int32),
                            jnp.ones(3, bool), 4)
