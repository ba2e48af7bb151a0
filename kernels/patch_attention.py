"""Serialized patch attention: Pallas flash-attention kernel, jnp reference, dispatch.

(Pallas kernel under construction: the dispatch currently routes every impl to XLA.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def patch_attention_reference(q, k, v, key_valid, scale=None):
  """Plain softmax attention inside each patch.

  Args:
    q, k, v: [P, H, L, D] queries/keys/values (P patches, H heads, L points per patch).
    key_valid: bool [P, L]; invalid keys get zero weight. A query whose patch has no
      valid key returns zeros.
    scale: logit scale, default D ** -0.5.
  Returns:
    [P, H, L, D] in q.dtype (f32 accumulation).
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  logits = jnp.einsum("phqd,phkd->phqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
  mask = key_valid[:, None, None, :]
  logits = jnp.where(mask, logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.where(mask, jnp.exp(logits - m), 0.0)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  out = jnp.einsum("phqk,phkd->phqd", p, v.astype(jnp.float32)) / jnp.maximum(denom, 1e-30)
  return out.astype(q.dtype)


def patch_attention(q, k, v, key_valid, *, scale=None, impl="auto", interpret=False):
  """Attention within patches; see `patch_attention_reference` for shapes."""
  del impl, interpret
  return patch_attention_reference(q, k, v, key_valid, scale)
