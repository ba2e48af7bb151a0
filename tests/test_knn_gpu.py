"""Compiled Pallas knn on a GPU against cKDTree and the reference.

Run on a GPU machine with `JAX_PLATFORMS=cuda python -m pytest -m gpu tests/test_knn_gpu.py`
(conftest defaults JAX_PLATFORMS to cpu). Sizes: 20k points (SCR's lower production range:
~10k-100k centroids per scene, k = 150 indoor / 20 outdoor, max_distance 1.2 m / 1 m).
"""
import numpy as np
import pytest

from kernels import dispatch
from kernels import knn as knn_lib
from tests import knn_checks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not dispatch.on_gpu(),
                       reason="needs a GPU backend (run with JAX_PLATFORMS=cuda)"),
]


def _case(num_points, seed=0):
  rng = np.random.default_rng(seed)
  points = (rng.uniform(0, 1, (num_points, 3)) * [10.0, 10.0, 3.0]).astype(np.float32)
  return dict(queries=points, keys=points, query_valid=rng.random(num_points) > 0.1,
              key_valid=rng.random(num_points) > 0.1,
              query_segment=rng.integers(0, 8, num_points).astype(np.int32),
              key_segment=rng.integers(0, 8, num_points).astype(np.int32))


def _run(case, k, max_distance, impl):
  return knn_lib.knn(case["queries"], case["keys"], k, max_distance=max_distance, impl=impl,
                     **{name: case[name] for name in knn_checks.MASKS})


def test_auto_resolves_to_pallas():
  assert dispatch.resolve_impl("auto") == "pallas"


@pytest.mark.parametrize("k, max_distance", [(20, None), (20, 1.0), (150, 1.2)])
def test_compiled_kernel_matches_ckdtree(k, max_distance):
  case = _case(20_003)  # ragged
  masks = {name: case[name] for name in knn_checks.MASKS}
  expected = knn_checks.ckdtree_knn(case["queries"], case["keys"], k, max_distance=max_distance,
                                    **masks)
  knn_checks.assert_matches_ckdtree(_run(case, k, max_distance, "pallas"), expected,
                                    case["queries"], case["keys"], max_distance=max_distance,
                                    **masks)


@pytest.mark.parametrize("k, max_distance", [(1, None), (20, 1.0), (150, 1.2)])
def test_compiled_kernel_equals_reference(k, max_distance):
  case = _case(3001, seed=1)
  for impl in ("xla", "pallas"):
    for got, want in zip(_run(case, k, max_distance, impl),
                         _run(case, k, max_distance, "reference")):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=impl)
