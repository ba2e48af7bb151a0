"""Independent kNN expectations from `scipy.spatial.cKDTree` and tie-aware comparisons.

Shared by tests/test_knn.py (CPU) and tests/test_knn_gpu.py (compiled kernel).
"""
import numpy as np
from scipy.spatial import cKDTree

MASKS = ("query_valid", "key_valid", "query_segment", "key_segment")
# Squared-distance tolerance: our f32 direct differences vs cKDTree's f64 on f32 inputs.
DIST2_TOL = dict(rtol=1e-5, atol=1e-5)


def ckdtree_knn(queries, keys, k, query_valid=None, key_valid=None, query_segment=None,
                key_segment=None, max_distance=None):
  """(index i64 [Q, k + 1], dist2 f64 [Q, k + 1]) per segment among valid keys; -1 / inf missing.

  One extra column tells ties at the k-th distance apart from clear cuts. The bound is
  `distance_upper_bound`, which cKDTree applies strictly (like our contract).
  """
  queries, keys = np.asarray(queries, np.float64), np.asarray(keys, np.float64)
  q_n, m_n = len(queries), len(keys)
  query_valid = np.ones(q_n, bool) if query_valid is None else np.asarray(query_valid)
  key_valid = np.ones(m_n, bool) if key_valid is None else np.asarray(key_valid)
  query_segment = np.zeros(q_n, int) if query_segment is None else np.asarray(query_segment)
  key_segment = np.zeros(m_n, int) if key_segment is None else np.asarray(key_segment)
  index = np.full((q_n, k + 1), -1, np.int64)
  dist2 = np.full((q_n, k + 1), np.inf)
  bound = np.inf if max_distance is None else max_distance
  for segment in np.unique(query_segment[query_valid]):
    rows = np.flatnonzero(query_valid & (query_segment == segment))
    members = np.flatnonzero(key_valid & (key_segment == segment))
    if len(members) == 0:
      continue
    dist, local = cKDTree(keys[members]).query(queries[rows], k + 1, distance_upper_bound=bound)
    found = np.isfinite(dist)
    index[rows] = np.where(found, members[np.minimum(local, len(members) - 1)], -1)
    dist2[rows] = np.where(found, dist ** 2, np.inf)
  return index, dist2


def assert_matches_ckdtree(result, expected, queries, keys, query_valid=None, key_valid=None,
                           query_segment=None, key_segment=None, max_distance=None):
  """Checks our (index, dist2) against `ckdtree_knn`'s k + 1 columns.

  Distances must match everywhere (same missing slots). Every returned index must be a
  distinct qualifying key whose recomputed distance is its dist2. Index sets must equal
  cKDTree's in rows where the k-th and (k + 1)-th distances differ (no tie at the cut).
  """
  index, dist2 = (np.asarray(a) for a in result)
  expected_index, expected_dist2 = expected
  q_n, k = index.shape
  assert index.dtype == np.int32 and dist2.dtype == np.float32
  np.testing.assert_array_equal(np.isinf(dist2), np.isinf(expected_dist2[:, :k]))
  np.testing.assert_array_equal(index < 0, np.isinf(dist2))
  found = index >= 0
  np.testing.assert_allclose(np.where(found, dist2, 0), np.where(found, expected_dist2[:, :k], 0),
                             **DIST2_TOL)
  assert np.all(dist2[:, 1:] >= dist2[:, :-1]), "not sorted ascending"

  queries, keys = np.asarray(queries, np.float64), np.asarray(keys, np.float64)
  rows, cols = np.nonzero(found)
  hit = index[rows, cols]
  recomputed = np.sum((queries[rows] - keys[hit]) ** 2, axis=1)
  np.testing.assert_allclose(dist2[rows, cols], recomputed, **DIST2_TOL)
  if key_valid is not None:
    assert np.asarray(key_valid)[hit].all(), "invalid key returned"
  if query_valid is not None:
    assert not found[~np.asarray(query_valid)].any(), "invalid query has neighbours"
  if query_segment is not None:
    np.testing.assert_array_equal(np.asarray(query_segment)[rows], np.asarray(key_segment)[hit])
  if max_distance is not None:
    assert (dist2[found] < np.float32(max_distance) ** 2).all()

  clear_cut = ~np.isclose(expected_dist2[:, k - 1], expected_dist2[:, k], **DIST2_TOL)
  clear_cut |= np.isinf(expected_dist2[:, k - 1])
  for row in range(q_n):
    ours = index[row][found[row]]
    assert len(np.unique(ours)) == len(ours), f"row {row}: repeated neighbour"
    if clear_cut[row]:
      theirs = expected_index[row, :k]
      assert set(ours.tolist()) == set(theirs[theirs >= 0].tolist()), f"row {row}: index set"
