"""The patch_attention Pallas kernels lower to Triton for CUDA on this CPU-only machine.

Lowering (not compiling) catches kernels that Triton would reject on the GPU; it needs the
`jax_cuda12_plugin` (see docs: jax_stack_and_style.md A.8). Shapes are tiny; production is
[P, H, 1024, 16].
"""
import re

import jax
import jax.numpy as jnp
import pytest

from kernels import patch_attention as pa

pytest.importorskip("jax_cuda12_plugin",
                    reason="lowering Pallas for CUDA needs jax-cuda12-plugin (test extra)")

_TRITON_CALL = "__gpu$xla.gpu.triton"


def _lowered_text(fn, patch_len, dtype):
  """StableHLO text of `fn(q, k, v, key_valid)` lowered for CUDA."""
  qkv = jax.ShapeDtypeStruct((2, 2, patch_len, 16), dtype)
  key_valid = jax.ShapeDtypeStruct((2, patch_len), jnp.bool_)
  traced = jax.jit(fn).trace(qkv, qkv, qkv, key_valid)
  return traced.lower(lowering_platforms=("cuda",)).as_text()


def _attention(q, k, v, key_valid):
  return pa.patch_attention(q, k, v, key_valid, impl="pallas")


def _attention_grads(q, k, v, key_valid):
  def loss(q, k, v):
    return jnp.sum(_attention(q, k, v, key_valid).astype(jnp.float32))
  return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _kernel_names(text):
  return set(re.findall(r"patch_attention_(?:forward|dkdv|dq)", text))


# 1024 is the production patch; 160 pads to a non-power-of-two length of whole blocks.
@pytest.mark.parametrize("patch_len", [1024, 160])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_lowers_to_triton(patch_len, dtype):
  text = _lowered_text(_attention, patch_len, dtype)
  assert text.count(_TRITON_CALL) == 1
  assert _kernel_names(text) == {"patch_attention_forward"}


@pytest.mark.parametrize("patch_len", [1024, 160])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_backward_lowers_to_triton(patch_len, dtype):
  text = _lowered_text(_attention_grads, patch_len, dtype)
  # Forward (for the residuals), dK/dV and dQ.
  assert text.count(_TRITON_CALL) == 3
  assert _kernel_names(text) == {"patch_attention_forward", "patch_attention_dkdv",
                                 "patch_attention_dq"}
