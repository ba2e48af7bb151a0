"""patch_attention: Pallas kernels (interpret mode), XLA path and reference agree.

Production shape: [P = B*N/1024, H = 2..32, L = 1024, D = 16]; here P=3, H=2, L=40..200, D=16
with 16/32 blocks so the Pallas interpreter stays fast and ragged last tiles occur.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import dispatch
from kernels import patch_attention as pa

_HEADS, _DIM = 2, 16
_SMALL_BLOCKS = pa.BlockSizes(block_q=16, block_k=32, block_q_bwd=32, block_k_bwd=16)
_TOL = {jnp.float32: dict(atol=1e-5, rtol=1e-5), jnp.bfloat16: dict(atol=2e-2, rtol=2e-2)}
# bf16 gradients go through bf16 P and dS tiles (as in FlashAttention), so they are looser.
_GRAD_TOL = {jnp.float32: dict(atol=1e-5, rtol=1e-4), jnp.bfloat16: dict(atol=6e-2, rtol=6e-2)}


def _inputs(patch_len, dtype, seed=0, heads=_HEADS):
  """q, k, v [3, H, L, D] and key_valid: patch 0 full, patch 1 partly, patch 2 all padding."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(key, (3, heads, patch_len, _DIM)).astype(dtype) for key in keys)
  num_valid = np.array([patch_len, patch_len * 2 // 3, 0])
  key_valid = jnp.asarray(np.arange(patch_len)[None, :] < num_valid[:, None])
  return q, k, v, key_valid


def _pallas(q, k, v, key_valid):
  scale = q.shape[-1] ** -0.5
  return pa.flash_patch_attention(q, k, v, key_valid, scale=scale, block_sizes=_SMALL_BLOCKS,
                                  interpret=True)


def _impl(name):
  if name == "pallas":
    return _pallas
  return lambda q, k, v, key_valid: pa.patch_attention(q, k, v, key_valid, impl=name)


def _grads(attention, q, k, v, key_valid):
  """Gradients of a fixed random linear functional of the output w.r.t. q, k, v."""
  weights = jax.random.normal(jax.random.key(7), q.shape)

  def functional(q, k, v):
    return jnp.sum(weights * attention(q, k, v, key_valid).astype(jnp.float32))

  return jax.grad(functional, argnums=(0, 1, 2))(q, k, v)


def _assert_close(actual, expected, tol):
  np.testing.assert_allclose(np.asarray(actual, np.float32), np.asarray(expected, np.float32),
                             **tol)


def test_reference_matches_float64_numpy():
  q, k, v, key_valid = _inputs(24, jnp.float32)
  q64, k64, v64 = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("phqd,phkd->phqk", q64, k64) / np.sqrt(_DIM)
  expected = np.zeros_like(q64)
  for patch in range(2):  # Patch 2 has no valid key: its output stays 0.
    cols = np.asarray(key_valid[patch])
    weights = np.exp(logits[patch][..., cols])
    weights /= weights.sum(-1, keepdims=True)
    expected[patch] = weights @ v64[patch][:, cols]
  _assert_close(pa.patch_attention_reference(q, k, v, key_valid), expected, _TOL[jnp.float32])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("impl", ["pallas", "xla"])
@pytest.mark.parametrize("patch_len", [40, 64])
def test_forward_matches_reference(impl, dtype, patch_len):
  q, k, v, key_valid = _inputs(patch_len, dtype)
  out = _impl(impl)(q, k, v, key_valid)
  assert out.dtype == dtype and out.shape == q.shape
  _assert_close(out, pa.patch_attention_reference(q, k, v, key_valid), _TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_gradients_match_reference(impl, dtype):
  # L = 40 is a multiple of no block size: ragged last tiles in every kernel.
  q, k, v, key_valid = _inputs(40, dtype, seed=1)
  grads = _grads(_impl(impl), q, k, v, key_valid)
  expected = _grads(pa.patch_attention_reference, q, k, v, key_valid)
  for grad, grad_expected in zip(grads, expected):
    assert grad.dtype == dtype
    _assert_close(grad, grad_expected, _GRAD_TOL[dtype])


@pytest.mark.parametrize("impl", ["pallas", "xla", "reference"])
def test_padding_gets_no_weight_and_no_gradient(impl):
  q, k, v, key_valid = _inputs(40, jnp.float32, seed=2)
  attention = _impl(impl)
  # Padded keys/values are irrelevant: scribbling on them changes nothing.
  noise = 1e3 * jnp.where(key_valid[:, None, :, None], 0.0, 1.0)
  out = attention(q, k, v, key_valid)
  np.testing.assert_array_equal(np.asarray(attention(q, k + noise, v + noise, key_valid)),
                                np.asarray(out))
  # The all-padding patch outputs exact zeros and gets exact zero, finite gradients.
  np.testing.assert_array_equal(np.asarray(out[2]), 0.0)
  dq, dk, dv = _grads(attention, q, k, v, key_valid)
  for grad in (dq, dk, dv):
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(np.asarray(grad[2]), 0.0)
  # Padded keys of the partial patch get no gradient either.
  padded = ~np.asarray(key_valid[1])
  np.testing.assert_array_equal(np.asarray(dk[1][:, padded]), 0.0)
  np.testing.assert_array_equal(np.asarray(dv[1][:, padded]), 0.0)


def _assert_xla_split_matches_reference(monkeypatch, block_bytes, heads, expected_group,
                                        seed):
  """With 128-query chunks and `block_bytes` per loop step, the XLA path on 3 patches of
  200 points splits them into groups of `expected_group` and matches the reference's
  values and gradients. 200 queries = one full chunk plus a ragged one (dK/dV summed
  over both)."""
  monkeypatch.setattr(pa, "_XLA_QUERY_CHUNK", 128)
  monkeypatch.setattr(pa, "_XLA_BLOCK_BYTES", block_bytes)
  pa.patch_attention.clear_cache()  # the split is read at trace time; same shapes as before
  assert pa.xla_work_split(3, heads, 200) == (expected_group, 128)
  q, k, v, key_valid = _inputs(200, jnp.float32, seed=seed, heads=heads)
  xla = _impl("xla")
  _assert_close(xla(q, k, v, key_valid), pa.patch_attention_reference(q, k, v, key_valid),
                _TOL[jnp.float32])
  for grad, expected in zip(_grads(xla, q, k, v, key_valid),
                            _grads(pa.patch_attention_reference, q, k, v, key_valid)):
    _assert_close(grad, expected, _GRAD_TOL[jnp.float32])


@pytest.mark.parametrize("block_bytes, group", [(8 << 20, 3), (2 * 2 * 128 * 200 * 4, 2)])
def test_xla_path_with_ragged_query_chunk_and_patch_groups(monkeypatch, block_bytes, group):
  # The small block budget makes groups of 2 patches: 2 loop steps, one dummy patch.
  _assert_xla_split_matches_reference(monkeypatch, block_bytes, _HEADS, group, seed=3)


@pytest.mark.parametrize("block_bytes, group", [(1 * 128 * 200 * 4, 1),
                                                (2 * 128 * 200 * 4, 2),
                                                (3 * 128 * 200 * 4, 3)])
def test_xla_path_single_head_runs_patch_pairs_as_heads(monkeypatch, block_bytes, group):
  # One head: pairs of patches become the two heads of one (an odd group gains a dummy
  # patch; a group of one stays as it is). Patches 1 and 2 differ in their key masks, so a
  # pair that mixed up masks or outputs would not match the reference.
  _assert_xla_split_matches_reference(monkeypatch, block_bytes, 1, group, seed=5)


@pytest.mark.parametrize("shape, expected", [
    ((313, 1, 256), (32, 256)),   # 8 MiB / (1 * 256 * 256 * 4 B) = 32 patches per step
    ((313, 2, 256), (16, 256)),
    ((33, 2, 256), (11, 256)),    # at most 16 per step -> 3 steps, balanced: 11 each, no dummy
    ((20, 4, 1024), (2, 256)),    # 4 * 256 * 1024 * 4 B = 4 MiB per patch
    ((20, 16, 1024), (1, 256)),   # a patch's chunk alone is over the budget
    ((1, 2, 64), (1, 64)),        # short patches: one chunk of the whole patch
])
def test_xla_work_split(shape, expected):
  assert pa.xla_work_split(*shape) == expected


def test_custom_scale_and_default_blocks():
  q, k, v, key_valid = _inputs(40, jnp.float32, seed=4)
  out = pa.patch_attention(q, k, v, key_valid, scale=0.5, impl="pallas", interpret=True)
  _assert_close(out, pa.patch_attention_reference(q, k, v, key_valid, 0.5), _TOL[jnp.float32])


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_vmap_and_jit(impl):
  q, k, v, key_valid = _inputs(32, jnp.float32, seed=5)
  stacked = [jnp.stack([x, x[::-1]]) for x in (q, k, v, key_valid)]
  out = jax.jit(jax.vmap(_impl(impl)))(*stacked)
  _assert_close(out[0], pa.patch_attention_reference(q, k, v, key_valid), _TOL[jnp.float32])
  _assert_close(out[1], pa.patch_attention_reference(q[::-1], k[::-1], v[::-1], key_valid[::-1]),
                _TOL[jnp.float32])


def test_pallas_is_deterministic():
  q, k, v, key_valid = _inputs(40, jnp.float32, seed=6)
  np.testing.assert_array_equal(np.asarray(_pallas(q, k, v, key_valid)),
                                np.asarray(_pallas(q, k, v, key_valid)))


def test_auto_resolves_to_xla_on_cpu():
  assert jax.default_backend() == "cpu"
  assert not dispatch.on_gpu()
  assert dispatch.resolve_impl("auto") == "xla"
  for name in ("pallas", "xla", "reference"):
    assert dispatch.resolve_impl(name) == name
  q, k, v, key_valid = _inputs(40, jnp.float32)
  np.testing.assert_array_equal(np.asarray(pa.patch_attention(q, k, v, key_valid)),
                                np.asarray(pa.patch_attention(q, k, v, key_valid, impl="xla")))


def test_unknown_impl_raises():
  with pytest.raises(ValueError, match="impl='triton' is not one of"):
    dispatch.resolve_impl("triton")


@pytest.mark.parametrize("change, match", [
    (lambda q, k, v, m: (q[0], k[0], v[0], m), "q must be"),
    (lambda q, k, v, m: (q, k[:, :, :-1], v, m), "shapes must match"),
    (lambda q, k, v, m: (q.astype(jnp.float16), k.astype(jnp.float16), v.astype(jnp.float16), m),
     "float32/bfloat16"),
    (lambda q, k, v, m: (q, k.astype(jnp.bfloat16), v, m), "share one dtype"),
    (lambda q, k, v, m: (q, k, v, m.astype(jnp.int32)), "key_valid must be bool"),
    (lambda q, k, v, m: (q, k, v, m[:, :-1]), "key_valid must be bool"),
])
def test_bad_inputs_raise(change, match):
  args = change(*_inputs(24, jnp.float32))
  with pytest.raises(ValueError, match=match):
    pa.patch_attention(*args)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_bad_scale_raises(scale):
  with pytest.raises(ValueError, match="scale must be"):
    pa.patch_attention(*_inputs(24, jnp.float32), scale=scale)


@pytest.mark.parametrize("size", [8, 48])
def test_block_sizes_must_be_powers_of_two_from_16(size):
  with pytest.raises(ValueError, match="block_q"):
    pa.BlockSizes(block_q=size)


def test_block_sizes_fit_short_patches():
  fitted = pa.BlockSizes(block_q=128, block_k=64).fit(40)
  assert (fitted.block_q, fitted.block_k, fitted.largest) == (64, 64, 64)
