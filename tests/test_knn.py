"""kNN: reference, XLA path and Pallas kernel (interpret mode) against scipy's cKDTree.

Shapes are small (Q, M <= 600, deliberately not multiples of the tiles) so the Pallas
interpreter stays fast; production is SCR's ~10k-100k centroids per scene with k = 150
(indoor) / 20 (outdoor) and max_distance 1.2 m / 1 m.
"""
import functools

import jax
import numpy as np
import pytest

from kernels import knn as knn_lib
from tests import knn_checks

# Every implementation, the Pallas one through its interpreter.
IMPLS = {
    "reference": dict(impl="reference"),
    "xla": dict(impl="xla"),
    "host": dict(impl="host"),
    "pallas": dict(impl="pallas", interpret=True),
}


def _room(num_points, seed, offset=0.0):
  """f32 [N, 3] points uniform in a 3 x 3 x 1.5 m box (plus `offset` metres)."""
  rng = np.random.default_rng(seed)
  return (rng.uniform(0, 1, (num_points, 3)) * [3.0, 3.0, 1.5] + offset).astype(np.float32)


def _masked_case(num_queries=203, num_keys=517, num_segments=3, seed=0):
  """Random clouds with ~15% invalid rows and a few segments."""
  rng = np.random.default_rng(seed + 100)
  return dict(
      queries=_room(num_queries, seed), keys=_room(num_keys, seed + 1),
      query_valid=rng.random(num_queries) > 0.15, key_valid=rng.random(num_keys) > 0.15,
      query_segment=rng.integers(0, num_segments, num_queries).astype(np.int32),
      key_segment=rng.integers(0, num_segments, num_keys).astype(np.int32))


def _run(case, k, max_distance=None, **impl):
  return knn_lib.knn(case["queries"], case["keys"], k, max_distance=max_distance,
                     query_valid=case.get("query_valid"), key_valid=case.get("key_valid"),
                     query_segment=case.get("query_segment"),
                     key_segment=case.get("key_segment"), **impl)


def _check(case, k, max_distance, result):
  expected = knn_checks.ckdtree_knn(case["queries"], case["keys"], k, max_distance=max_distance,
                                    **{name: case.get(name) for name in knn_checks.MASKS})
  knn_checks.assert_matches_ckdtree(result, expected, case["queries"], case["keys"],
                                    max_distance=max_distance,
                                    **{name: case.get(name) for name in knn_checks.MASKS})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k, max_distance", [(1, None), (20, None), (20, 0.5), (150, 1.2)])
def test_masks_segments_and_threshold_match_ckdtree(impl, k, max_distance):
  case = _masked_case()
  _check(case, k, max_distance, _run(case, k, max_distance, **IMPLS[impl]))


@pytest.mark.parametrize("impl", IMPLS)
def test_plain_cloud_matches_ckdtree_and_includes_self(impl):
  # Ragged: 601 points is no multiple of any tile (64/16 queries, 64/32 keys).
  points = _room(601, seed=3)
  case = dict(queries=points, keys=points)
  index, dist2 = _run(case, 16, **IMPLS[impl])
  _check(case, 16, None, (index, dist2))
  # Self is its own nearest neighbour at distance 0 (distinct random points).
  np.testing.assert_array_equal(np.asarray(index[:, 0]), np.arange(601))
  np.testing.assert_array_equal(np.asarray(dist2[:, 0]), 0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_k_larger_than_qualifying_keys_pads(impl):
  case = _masked_case(num_queries=37, num_keys=25, num_segments=2, seed=4)
  index, dist2 = _run(case, 40, **IMPLS[impl])
  _check(case, 40, None, (index, dist2))
  per_segment = [np.sum(case["key_valid"] & (case["key_segment"] == s)) for s in range(2)]
  found = np.sum(np.asarray(index) >= 0, axis=1)
  expected = np.where(case["query_valid"], np.take(per_segment, case["query_segment"]), 0)
  np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_valid_keys_gives_all_missing(impl):
  case = dict(queries=_room(20, 5), keys=_room(30, 6), key_valid=np.zeros(30, bool))
  index, dist2 = _run(case, 4, **IMPLS[impl])
  np.testing.assert_array_equal(np.asarray(index), -1)
  np.testing.assert_array_equal(np.asarray(dist2), np.inf)


@pytest.mark.parametrize("impl", IMPLS)
def test_ties_on_integer_grid(impl):
  # A 7 x 7 x 7 integer lattice: many keys at exactly equal distances, also at the k-th
  # distance and at the bound (2.0 is a lattice distance, excluded by the strict `<`).
  axis = np.arange(7, dtype=np.float32)
  lattice = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
  queries = lattice[::5]
  for k, max_distance in ((10, None), (33, 2.0)):
    case = dict(queries=queries, keys=lattice)
    index, dist2 = _run(case, k, max_distance, **IMPLS[impl])
    _check(case, k, max_distance, (index, dist2))
    # Lower-index-first tie rule of the reference and the kernel, checked by brute force.
    if impl not in ("xla", "host"):
      d2 = np.sum((queries[:, None] - lattice[None]) ** 2, -1)
      d2 = np.where(d2 < (max_distance or np.inf) ** 2, d2, np.inf)
      expected = np.lexsort((np.broadcast_to(np.arange(len(lattice)), d2.shape), d2))[:, :k]
      np.testing.assert_array_equal(np.asarray(index), np.where(
          np.isfinite(np.take_along_axis(d2, expected, 1)), expected, -1))


def test_implementations_agree_bitwise():
  """Same f32 formula everywhere: identical outputs (random data has no ties)."""
  case = _masked_case(num_queries=300, num_keys=450, seed=7)
  for k, max_distance in ((20, None), (150, 1.2)):
    expected = _run(case, k, max_distance, **IMPLS["reference"])
    for impl in ("xla", "host", "pallas"):
      for got, want in zip(_run(case, k, max_distance, **IMPLS[impl]), expected):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=impl)


@pytest.mark.parametrize("impl", ["xla", "host", "pallas"])
def test_far_from_origin_keeps_precision(impl):
  # 1 km from the origin |q|^2 + |k|^2 - 2q.k would lose ~0.1 m^2 in f32; differences do not.
  case = _masked_case(num_queries=64, num_keys=200, seed=8)
  case = dict(case, queries=case["queries"] + np.float32(1000.0),
              keys=case["keys"] + np.float32(1000.0))
  _check(case, 8, None, _run(case, 8, **IMPLS[impl]))


def test_xla_path_prunes_many_blocks_exactly():
  # 3000 points in 2 tight clusters: ~94 key blocks of 32, most pruned by box distance.
  rng = np.random.default_rng(9)
  centres = np.array([[0, 0, 0], [5, 5, 1]], np.float32)
  points = (centres[rng.integers(0, 2, 3000)] + rng.normal(0, 0.4, (3000, 3))).astype(np.float32)
  segment = rng.integers(0, 4, 3000).astype(np.int32)
  case = dict(queries=points, keys=points, query_segment=segment, key_segment=segment)
  for k, max_distance in ((20, None), (150, 1.2)):
    _check(case, k, max_distance, _run(case, k, max_distance, impl="xla"))


@pytest.mark.parametrize("impl", IMPLS)
def test_vmap_over_scenes_matches_per_scene(impl):
  scenes = [_masked_case(num_queries=50, num_keys=70, seed=seed) for seed in (10, 11)]
  batch = {name: np.stack([scene[name] for scene in scenes]) for name in scenes[0]}
  run = functools.partial(knn_lib.knn, k=6, max_distance=0.8, **IMPLS[impl])
  batched = jax.jit(jax.vmap(lambda q, x, qv, kv, qs, ks: run(
      q, x, query_valid=qv, key_valid=kv, query_segment=qs, key_segment=ks)))(
          *(batch[name] for name in ("queries", "keys") + knn_checks.MASKS))
  for b, scene in enumerate(scenes):
    single = _run(scene, 6, 0.8, **IMPLS[impl])
    for got, want in zip(batched, single):
      np.testing.assert_array_equal(np.asarray(got[b]), np.asarray(want))


@pytest.mark.parametrize("impl", ["xla", "host"])
def test_deterministic(impl):
  case = _masked_case(seed=12)
  first, second = _run(case, 12, impl=impl), _run(case, 12, impl=impl)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_auto_on_cpu_is_host_for_large_clouds_and_xla_for_small_ones():
  assert knn_lib.resolve_impl("auto", knn_lib.HOST_MIN_QUERIES) == "host"
  assert knn_lib.resolve_impl("auto") == "host"
  assert knn_lib.resolve_impl("auto", knn_lib.HOST_MIN_QUERIES - 1) == "xla"
  assert knn_lib.resolve_impl("xla", 10**6) == "xla"
  assert knn_lib.resolve_impl("host", 1) == "host"
  case = _masked_case(num_queries=40, num_keys=60, seed=13)
  for got, want in zip(_run(case, 5), _run(case, 5, impl="xla")):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_host_path_reranks_near_ties_by_f32_contract():
  # Keys a few f32 ulps apart in distance, more of them than k: the float64 tree and the f32
  # contract may order them differently; the host path must give the reference's answer.
  rng = np.random.default_rng(15)
  direction = rng.normal(size=(40, 3))
  direction /= np.linalg.norm(direction, axis=1, keepdims=True)
  keys = (np.float32(100.0) + direction * np.float32(0.7)).astype(np.float32)
  queries = np.full((1, 3), 100.0, np.float32)
  case = dict(queries=queries, keys=keys)
  for k in (3, 10):
    for got, want in zip(_run(case, k, impl="host"), _run(case, k, impl="reference")):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_host_path_inside_jit_equals_reference():
  case = _masked_case(num_queries=120, num_keys=160, seed=16)
  fn = jax.jit(lambda q, x: knn_lib.knn(q, x, 9, max_distance=0.7, impl="host"))
  for got, want in zip(fn(case["queries"], case["keys"]),
                       _run(dict(queries=case["queries"], keys=case["keys"]), 9, 0.7,
                            impl="reference")):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_invalid_rows_may_hold_nan():
  case = _masked_case(num_queries=40, num_keys=60, seed=14)
  case["queries"][~case["query_valid"]] = np.nan
  case["keys"][~case["key_valid"]] = np.inf
  for impl in IMPLS.values():
    _check(case, 5, None, _run(case, 5, **impl))


@pytest.mark.parametrize("kwargs, message", [
    (dict(queries=np.zeros((4, 2), np.float32)), "queries must be \\[N, 3\\]"),
    (dict(keys=np.zeros((4, 3), np.int32)), "keys must be floating point"),
    (dict(k=0), "k must be a positive"),
    (dict(max_distance=-1.0), "max_distance must be a positive"),
    (dict(query_segment=np.zeros(5, np.int32)), "both query_segment and key_segment"),
    (dict(query_valid=np.ones(4, bool)), "query_valid must be bool \\[5\\]"),
    (dict(key_valid=np.ones(6, np.int32)), "key_valid must be bool \\[6\\]"),
    (dict(query_segment=np.zeros(5, np.float32), key_segment=np.zeros(6, np.float32)),
     "query_segment must be integer"),
    (dict(impl="cuda"), "impl='cuda' is not one of"),
])
def test_bad_arguments_raise(kwargs, message):
  args = dict(queries=np.zeros((5, 3), np.float32), keys=np.zeros((6, 3), np.float32), k=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    knn_lib.knn(args.pop("queries"), args.pop("keys"), args.pop("k"), **args)


def test_non_finite_valid_coordinates_raise():
  keys = np.zeros((6, 3), np.float32)
  keys[4, 1] = np.nan
  with pytest.raises(ValueError, match=r"keys has non-finite coordinates at valid rows \[4\]"):
    knn_lib.knn(np.zeros((5, 3), np.float32), keys, 2)
  queries = np.zeros((5, 3), np.float32)
  queries[2] = np.inf
  with pytest.raises(ValueError, match=r"queries has non-finite .* rows \[2\]"):
    knn_lib.knn(queries, np.zeros((6, 3), np.float32), 2)


def test_host_path_in_small_chunks_equals_reference(monkeypatch):
  # Several KD-tree calls per segment (chunks of 7 queries) must give the same answer.
  monkeypatch.setattr(knn_lib, "_HOST_CHUNK", 7)
  case = _masked_case(num_queries=90, num_keys=130, seed=17)
  for got, want in zip(_run(case, 11, 0.9, impl="host"), _run(case, 11, 0.9, impl="reference")):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
