"""The knn Pallas kernel lowers to Triton for CUDA on this CPU-only machine.

Lowering (not compiling) catches kernels that Triton would reject on the GPU; it needs the
`jax_cuda12_plugin` (see docs: jax_stack_and_style.md A.8). Shapes are small but ragged;
production is ~10k-100k points with k = 150 (indoor) / 20 (outdoor).
"""
import re

import jax
import jax.numpy as jnp
import pytest

from kernels import knn as knn_lib

pytest.importorskip("jax_cuda12_plugin",
                    reason="lowering Pallas for CUDA needs jax-cuda12-plugin (test extra)")

_TRITON_CALL = "__gpu$xla.gpu.triton"


@pytest.mark.parametrize("k, max_distance", [(1, None), (20, 1.0), (150, 1.2)])
def test_knn_lowers_to_triton(k, max_distance):
  num_queries, num_keys = 1000, 777  # ragged: no multiples of the tiles

  def run(queries, keys, query_valid, key_valid, query_segment, key_segment):
    return knn_lib.knn(queries, keys, k, query_valid=query_valid, key_valid=key_valid,
                       query_segment=query_segment, key_segment=key_segment,
                       max_distance=max_distance, impl="pallas")

  shapes = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in (
      ((num_queries, 3), jnp.float32), ((num_keys, 3), jnp.float32),
      ((num_queries,), jnp.bool_), ((num_keys,), jnp.bool_),
      ((num_queries,), jnp.int32), ((num_keys,), jnp.int32))]
  text = jax.jit(run).trace(*shapes).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count(_TRITON_CALL) == 1
  assert re.findall(r'name = "([^"]*)"', text) == ["knn"]
