"""PTv3 transformer block: xCPE, serialized patch attention, MLP (ptv3_ssl_spec.md §3.3-3.4).

All modules take batched per-scene-padded arrays: x [B, N, C] with the stage's structure
(neighbour table, serialization order and inverse, validity) computed once per stage.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kernels import patch_attention as patch_attention_lib
from pointins_jax.model import layer_norm as layer_norm_lib
from pointins_jax.model import sparse_conv

LAYER_NORM_EPS = 1e-5  # PyTorch's LayerNorm default, used by every PTv3 block
DENSE_INIT = nn.initializers.truncated_normal(0.02)  # Pointcept m2 init for Linear / SubMConv


def gelu(x):
  """Exact (erf) GELU as PyTorch's default; Flax's default is the tanh approximation."""
  return nn.gelu(x, approximate=False)


def gather_points(x, index):
  """x [B, N, ...] gathered along the point axis by index i32 [B, M] -> [B, M, ...]."""
  return jax.vmap(lambda xs, i: jnp.take(xs, i, axis=0))(x, index)


class DropPath(nn.Module):
  """Stochastic depth per point (timm's DropPath on Pointcept's [N, C] layout).

  Each point's residual branch is dropped with probability `rate` and kept ones are scaled by
  1 / (1 - rate); uses the 'dropout' rng stream when `train`. A point's draw depends only on
  its scene row and its slot, not on the stage capacity (one key per row, and threefry's
  partitionable bits are prefix-stable), so data-following capacities change no result.
  """

  rate: float

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    key = self.make_rng("dropout")
    if x.ndim == 3:  # [B, N, C]: one key per scene row
      keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(x.shape[0]))
      keep = jax.vmap(lambda k: jax.random.bernoulli(k, keep_prob, x.shape[1:-1] + (1,)))(keys)
    else:
      keep = jax.random.bernoulli(key, keep_prob, x.shape[:-1] + (1,))
    return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


LAST_PATCH_MODES = ("refill", "mask")


def patch_slots(order, valid, patch_len: int, last_patch: str = "refill"):
  """Which serialized point each patch slot reads, and which slots are real keys.

  Slot j of a scene's serialized sequence (padding sorts last, so its c real points hold
  slots 0..c-1) is cut into patches of `patch_len`. When c > L and c % L = r > 0, the last
  patch holds r real points. 'refill' (Pointcept's `get_padding_and_inverse`) fills its
  L - r empty slots with the points L slots earlier, so the last patch attends over the
  last L points of the sequence, exactly as imported Pointcept/Sonata weights expect;
  'mask' leaves them as masked padding. Outputs are read back only at each point's own
  slot (< c), so a refilled duplicate's output is never used.

  Args:
    order: i32 [B, N] serialization order (point ids, padding last); valid: bool [B, N].
    patch_len: L (static); last_patch: 'refill' | 'mask'.
  Returns:
    (rows i32 [B, N] point id per slot, key_valid bool [B, N] slots that are real keys).
  """
  if last_patch not in LAST_PATCH_MODES:
    raise ValueError(f"model.last_patch={last_patch!r}; use one of {LAST_PATCH_MODES}.")
  count = jnp.sum(valid, axis=1, keepdims=True)  # [B, 1]
  slot = jnp.arange(order.shape[1], dtype=jnp.int32)[None, :]
  key_valid = slot < count
  if last_patch == "mask":
    return order, key_valid
  remainder = count % patch_len
  refill = (count > patch_len) & (remainder > 0) & (slot >= count) & (
      slot < count - remainder + patch_len)
  rows = jnp.take_along_axis(order, jnp.where(refill, slot - patch_len, slot), axis=1)
  return rows, key_valid | refill


class SerializedAttention(nn.Module):
  """Multi-head attention inside patches of `patch_len` consecutive points of one order.

  Patches are rows of the per-scene serialized order reshaped to [N / L, L], so they never
  span two scenes; padding points sort last and are masked out as keys. An incomplete
  last patch is refilled with the previous patch's points as Pointcept does (§3.4,
  `patch_slots`), or masked with last_patch='mask'.
  """

  num_heads: int
  patch_len: int
  impl: str = "auto"
  dtype: Any = jnp.float32
  last_patch: str = "refill"

  @nn.compact
  def __call__(self, x, order, inverse, valid):
    """x [B, N, C]; order, inverse i32 [B, N]; valid bool [B, N] -> [B, N, C]."""
    batch, n, channels = x.shape
    heads, length = self.num_heads, self.patch_len
    head_dim = channels // heads
    patches = batch * (n // length)
    qkv = nn.Dense(3 * channels, dtype=self.dtype, kernel_init=DENSE_INIT, name="qkv")(x)
    # Pointcept splits the 3C outputs as [3, H, D].
    rows, key_valid = patch_slots(order, valid, length, self.last_patch)
    qkv = gather_points(qkv, rows).reshape(patches, length, 3, heads, head_dim)
    q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # each [P, H, L, D]
    key_valid = key_valid.reshape(patches, length)
    out = patch_attention_lib.patch_attention(q, k, v, key_valid, scale=head_dim ** -0.5,
                                              impl=self.impl)
    out = jnp.transpose(out, (0, 2, 1, 3)).reshape(batch, n, channels)
    out = gather_points(out, inverse)
    return nn.Dense(channels, dtype=self.dtype, kernel_init=DENSE_INIT, name="proj")(out)


class Block(nn.Module):
  """Pre-norm PTv3 block: x += CPE(x); x += DropPath(Attn(LN(x))); x += DropPath(MLP(LN(x)))."""

  channels: int
  num_heads: int
  patch_len: int
  mlp_ratio: int = 4
  drop_path: float = 0.0
  attention_impl: str = "auto"
  dtype: Any = jnp.float32
  last_patch: str = "refill"

  @nn.compact
  def __call__(self, x, stage, *, train: bool, conv_input=None):
    """x f32 [B, N, C]; `stage` holds 'neighbors' [B, N, 27], 'order'/'inverse' [B, N] for this
    block's curve and 'valid' [B, N]. `conv_input` replaces x as the CPE conv's input (m1's
    first decoder block, §3.6). Returns [B, N, C]."""
    dense = lambda f, name: nn.Dense(f, dtype=self.dtype, kernel_init=DENSE_INIT, name=name)
    layer_norm = lambda name: layer_norm_lib.LayerNorm(LAYER_NORM_EPS, name=name)
    cpe = sparse_conv.SubMConv3d(self.channels, 3, name="cpe_conv")(
        x if conv_input is None else conv_input, stage["neighbors"])
    x = x + layer_norm("cpe_norm")(dense(self.channels, "cpe_linear")(cpe))

    attn = SerializedAttention(self.num_heads, self.patch_len, self.attention_impl, self.dtype,
                               self.last_patch, name="attn")(layer_norm("norm1")(x), stage["order"],
                                            stage["inverse"], stage["valid"])
    x = x + DropPath(self.drop_path, name="drop_path_attn")(attn, train)

    hidden = gelu(dense(self.channels * self.mlp_ratio, "fc1")(layer_norm("norm2")(x)))
    x = x + DropPath(self.drop_path, name="drop_path_mlp")(dense(self.channels, "fc2")(hidden),
                                                          train)
    return x.astype(jnp.float32)
