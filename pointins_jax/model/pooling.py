"""Stride-2 grid pooling and unpooling with static capacities (ptv3_ssl_spec.md §3.5-3.6).

A coarse point is an occupied parent cell `grid >> 1` of one scene. Parents are sorted by
their Morton code (unique keys, so the coarse order does not depend on the input order);
`cluster[i]` maps fine point i to its parent, and equals the stage capacity for padding and
for the parents past the capacity (dropped by the segment reductions; flagged as overflow).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pointins_jax.model import batch_norm
from pointins_jax.model import blocks
from pointins_jax.model import layer_norm
from pointins_jax.model import serialization

BATCH_NORM_EPS = 1e-3  # Pointcept m1 BatchNorm1d(eps=1e-3, momentum=0.01)
BATCH_NORM_MOMENTUM = 0.99  # Flax's momentum = 1 - PyTorch's


def grid_pool(grid, valid, coord, capacity: int):
  """Parent cells of one scene.

  Args:
    grid: i32 [N, 3] cells; valid: bool [N]; coord: f32 [N, 3] metres.
    capacity: static number of coarse slots.
  Returns:
    dict with 'cluster' i32 [N] (parent slot, `capacity` for padding / overflow),
    'grid' i32 [capacity, 3] parent cells, 'coord' f32 [capacity, 3] member means,
    'valid' bool [capacity], 'count' i32 number of parents (may exceed capacity) and
    'overflow' bool.
  """
  n = grid.shape[0]
  parent = grid >> 1
  hi, lo = serialization.morton_halves(parent[:, 0], parent[:, 1], parent[:, 2])
  hi = jnp.where(valid, hi, serialization.PAD_HI)
  order = serialization.code_order(hi, lo, valid)
  hi_sorted, lo_sorted = hi[order], lo[order]
  new_key = jnp.concatenate([jnp.ones((1,), bool), (hi_sorted[1:] != hi_sorted[:-1])
                             | (lo_sorted[1:] != lo_sorted[:-1])])
  new_key &= hi_sorted != serialization.PAD_HI
  slot_sorted = jnp.cumsum(new_key, dtype=jnp.int32) - 1
  slot_sorted = jnp.where((slot_sorted < capacity) & valid[order], slot_sorted, capacity)
  cluster = jnp.zeros((n,), jnp.int32).at[order].set(slot_sorted)
  count = jnp.sum(new_key, dtype=jnp.int32)
  members = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), cluster, capacity)
  coarse_coord = jax.ops.segment_sum(coord, cluster, capacity) / jnp.maximum(members, 1)[:, None]
  coarse_grid = jax.ops.segment_max(parent, cluster, capacity)
  coarse_valid = jnp.arange(capacity) < count
  return {"cluster": cluster, "grid": jnp.where(coarse_valid[:, None], coarse_grid, 0),
          "coord": coarse_coord, "valid": coarse_valid, "count": count,
          "overflow": count > capacity}


class MaskedNorm(nn.Module):
  """LayerNorm (m2) or BatchNorm with padding excluded from the statistics (m1)."""

  kind: str  # 'layer' | 'batch'

  @nn.compact
  def __call__(self, x, valid, train: bool):
    if self.kind == "layer":
      return layer_norm.LayerNorm(blocks.LAYER_NORM_EPS, name="norm")(x)
    if self.kind == "batch":
      return batch_norm.BatchNorm(BATCH_NORM_MOMENTUM, BATCH_NORM_EPS, name="norm")(
          x, valid, use_running_average=not train)
    raise ValueError(f"model.norm={self.kind!r}; use 'layer' or 'batch'.")


class GridPooling(nn.Module):
  """feat = GELU(Norm(segment_max(Dense(feat)))) over the members of each parent cell."""

  channels: int
  norm: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, coarse, *, train: bool):
    """x [B, N, C_in]; `coarse` from `grid_pool` (batched). Returns [B, capacity, C_out]."""
    capacity = coarse["valid"].shape[1]
    y = nn.Dense(self.channels, dtype=self.dtype, kernel_init=blocks.DENSE_INIT, name="proj")(x)
    y = jax.vmap(lambda f, c: jax.ops.segment_max(f, c, capacity))(y, coarse["cluster"])
    y = jnp.where(coarse["valid"][..., None], y, 0.0)  # empty slots hold -inf
    y = blocks.gelu(MaskedNorm(self.norm, name="norm")(y, coarse["valid"], train))
    return jnp.where(coarse["valid"][..., None], y, 0.0).astype(jnp.float32)


def upcast(coarse_feat, cluster):
  """Coarse features [B, M, C] read back at fine points via cluster i32 [B, N] -> [B, N, C]
  (zeros where cluster == M: padding or overflowed points)."""
  capacity = coarse_feat.shape[1]
  out = blocks.gather_points(coarse_feat, jnp.minimum(cluster, capacity - 1))
  return jnp.where((cluster < capacity)[..., None], out, 0.0)


class Unpooling(nn.Module):
  """parent = GELU(Norm(Dense(skip))) + GELU(Norm(Dense(coarse)))[cluster] (§3.6)."""

  channels: int
  norm: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, coarse_feat, coarse_valid, skip, valid, cluster, *, train: bool):
    """Returns (parent features [B, N, C_out], projected skip [B, N, C_out])."""
    def project(x, mask, name):
      y = nn.Dense(self.channels, dtype=self.dtype, kernel_init=blocks.DENSE_INIT, name=name)(x)
      y = blocks.gelu(MaskedNorm(self.norm, name=f"{name}_norm")(y, mask, train))
      return jnp.where(mask[..., None], y, 0.0).astype(jnp.float32)

    skip = project(skip, valid, "proj_skip")
    return skip + upcast(project(coarse_feat, coarse_valid, "proj"), cluster), skip
