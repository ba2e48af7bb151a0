"""Compiled Pallas patch_attention on a GPU vs the reference: values and gradients.

Run on a GPU machine with `JAX_PLATFORMS=cuda python -m pytest -m gpu
tests/test_patch_attention_gpu.py` (conftest defaults JAX_PLATFORMS to cpu). Shapes are small
production-like ones: [4 patches, 4 heads, L, 16] with L = 1024 (production) and L = 160
(padded inside to 192 = 3 blocks of 64: a non-power-of-two padded length).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import dispatch
from kernels import patch_attention as pa

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not dispatch.on_gpu(),
                       reason="needs a GPU backend (run with JAX_PLATFORMS=cuda)"),
]

# The kernel's f32 dots may run as TF32 on the tensor cores, hence 2e-3 rather than 1e-5.
_TOL = {jnp.float32: dict(atol=2e-3, rtol=2e-3), jnp.bfloat16: dict(atol=2e-2, rtol=2e-2)}
_GRAD_TOL = {jnp.float32: dict(atol=5e-3, rtol=5e-3), jnp.bfloat16: dict(atol=6e-2, rtol=6e-2)}


def _inputs(patch_len, dtype):
  """[4, 4, L, 16] inputs; patch 0 full, 1 and 2 partly padded, 3 all padding."""
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (4, 4, patch_len, 16)).astype(dtype) for key in keys[:3])
  num_valid = np.array([patch_len, patch_len // 2, 17, 0])
  return q, k, v, jnp.asarray(np.arange(patch_len)[None, :] < num_valid[:, None])


def _grads(attention, q, k, v, key_valid):
  weights = jax.random.normal(jax.random.key(7), q.shape)
  return jax.grad(
      lambda q, k, v: jnp.sum(weights * attention(q, k, v, key_valid).astype(jnp.float32)),
      argnums=(0, 1, 2))(q, k, v)


def _pallas(q, k, v, key_valid):
  return pa.patch_attention(q, k, v, key_valid, impl="pallas")


def _reference(q, k, v, key_valid):
  with jax.default_matmul_precision("highest"):
    return pa.patch_attention_reference(q, k, v, key_valid)


def _assert_close(actual, expected, tol):
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                             **tol)


def test_auto_resolves_to_pallas():
  assert dispatch.resolve_impl("auto") == "pallas"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("patch_len", [1024, 160])
def test_compiled_kernel_matches_reference(dtype, patch_len):
  q, k, v, key_valid = _inputs(patch_len, dtype)
  out = jax.jit(_pallas)(q, k, v, key_valid)
  _assert_close(out, _reference(q, k, v, key_valid), _TOL[dtype])
  np.testing.assert_array_equal(np.asarray(out[3], np.float32), 0.0)
  grads = jax.jit(lambda *a: _grads(_pallas, *a))(q, k, v, key_valid)
  for grad, expected in zip(grads, _grads(_reference, q, k, v, key_valid)):
    assert np.isfinite(np.asarray(grad, np.float32)).all()
    _assert_close(grad, expected, _GRAD_TOL[dtype])
    np.testing.assert_array_equal(np.asarray(grad[3], np.float32), 0.0)
