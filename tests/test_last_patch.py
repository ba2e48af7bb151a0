"""The incomplete last attention patch, against a numpy port of Pointcept's padding.

Pointcept's `SerializedAttention.get_padding_and_inverse` (ptv3_ssl_spec.md §3.4) fills the
empty slots of a cloud's last patch with the slots one patch earlier and reads outputs back
at each point's own slot. `reference_attention` below re-implements that index arithmetic
in numpy, independently of `blocks.patch_slots`, and computes plain softmax attention.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.model import blocks


def pointcept_pad_unpad(counts, k):
  """Pointcept's (pad, unpad) index arrays for clouds of `counts` points, patch size k."""
  counts = np.asarray(counts)
  padded = np.where(counts > k, -(-counts // k) * k, counts)
  off = np.concatenate([[0], np.cumsum(counts)])
  offp = np.concatenate([[0], np.cumsum(padded)])
  pad, unpad = np.arange(offp[-1]), np.arange(off[-1])
  for i in range(len(counts)):
    unpad[off[i]:off[i + 1]] += offp[i] - off[i]
    if counts[i] != padded[i]:
      r = counts[i] % k
      pad[offp[i + 1] - k + r:offp[i + 1]] = pad[offp[i + 1] - 2 * k + r:offp[i + 1] - k]
    pad[offp[i]:offp[i + 1]] -= offp[i] - off[i]
  return pad, unpad


def reference_attention(qkv_sorted, counts, k, heads):
  """qkv of the concatenated serialized clouds [sum(counts), 3C] -> attention output [.., C]."""
  pad, unpad = pointcept_pad_unpad(counts, k)
  c = qkv_sorted.shape[1] // 3
  d = c // heads
  x = qkv_sorted[pad].reshape(-1, k, 3, heads, d).transpose(2, 0, 3, 1, 4)
  q, key, v = x[0], x[1], x[2]
  logits = q @ key.transpose(0, 1, 3, 2) * d ** -0.5
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = (p @ v).transpose(0, 2, 1, 3).reshape(-1, c)
  return out[unpad]


@pytest.mark.parametrize("counts", [(45, 32), (40, 21), (64, 17)])
def test_refill_matches_pointcept(counts):
  """Clouds of 45 and 32 points, patch 16 (45 = 2 * 16 + 13: refilled; 32: whole patches)."""
  k, heads, channels, n = 16, 2, 8, 64
  if min(counts) <= k:  # Pointcept would shrink the patch to the smallest cloud
    k = 8
  rng = np.random.default_rng(0)
  batch = len(counts)
  x = rng.standard_normal((batch, n, channels)).astype(np.float32)
  valid = np.arange(n)[None, :] < np.asarray(counts)[:, None]
  # A random serialization order per cloud, padding last.
  order = np.stack([np.concatenate([rng.permutation(c), np.arange(c, n)]) for c in counts])
  inverse = np.argsort(order, axis=1)
  module = blocks.SerializedAttention(heads, k, impl="xla", last_patch="refill")
  params = module.init(jax.random.key(0), x, order, inverse, valid)
  out = np.asarray(module.apply(params, x, order, inverse, valid))

  w = params["params"]
  qkv = x @ np.asarray(w["qkv"]["kernel"]) + np.asarray(w["qkv"]["bias"])
  sorted_qkv = np.concatenate([qkv[b, order[b, :c]] for b, c in enumerate(counts)])
  attended = reference_attention(sorted_qkv, counts, k, heads)
  proj = attended @ np.asarray(w["proj"]["kernel"]) + np.asarray(w["proj"]["bias"])
  start = 0
  for b, c in enumerate(counts):
    expected = np.empty((c, channels), np.float32)
    expected[order[b, :c]] = proj[start:start + c]  # back from serialized to point order
    start += c
    np.testing.assert_allclose(out[b, :c], expected, rtol=1e-5, atol=1e-5)

  masked = blocks.SerializedAttention(heads, k, impl="xla", last_patch="mask")
  out_masked = np.asarray(masked.apply(params, x, order, inverse, valid))
  refilled = [b for b, c in enumerate(counts) if c > k and c % k]
  whole = [b for b, c in enumerate(counts) if not (c > k and c % k)]
  for b in whole:  # nothing to refill: both modes agree
    np.testing.assert_allclose(out_masked[b, :counts[b]], out[b, :counts[b]], rtol=1e-6)
  for b in refilled:  # the last patch's points see other keys under 'mask'
    c = counts[b]
    last = order[b, c - c % k:c]
    scale = np.abs(out[b, last]).max()
    assert np.abs(out_masked[b, last] - out[b, last]).max() > 0.05 * scale
    first = order[b, :c - c % k]
    np.testing.assert_allclose(out_masked[b, first], out[b, first], rtol=1e-6)


def test_patch_slots_rejects_unknown_mode():
  with pytest.raises(ValueError, match="last_patch"):
    blocks.patch_slots(jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), bool), 4, "wrap")
