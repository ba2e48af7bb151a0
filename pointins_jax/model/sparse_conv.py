"""Submanifold sparse 3D convolution over grid neighbours, inside jit.

A neighbour table gives, for every point and every one of the K^3 kernel offsets, the
index of a point occupying the offset cell (or -1). It is built by sorting the points by
their cell's Morton code and a vectorised binary search of each shifted cell's code
(exact 48-bit codes as two int32 halves), once per stage, and shared by every conv of
that stage. When several points share a cell (views are not re-voxelised after
augmentation), the neighbour is the first of them in code-then-coordinate order, so the
result does not depend on the input order. The convolution is then a gather and one
einsum over [K^3, C_in, C_out] weights; outputs exist only at input sites (submanifold).
"""
from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pointins_jax.model import serialization

_MAX_CELL = (1 << 16) - 1


def kernel_offsets(kernel_size: int) -> np.ndarray:
  """i32 [K^3, 3] offsets, x slowest then y then z (spconv's (kx, ky, kz) weight order)."""
  r = kernel_size // 2
  rng = range(-r, r + 1)
  return np.array(list(itertools.product(rng, rng, rng)), np.int32)


def _lex_less(a_hi, a_lo, b_hi, b_lo):
  return (a_hi < b_hi) | ((a_hi == b_hi) & (a_lo < b_lo))


def _search_sorted(keys_hi, keys_lo, q_hi, q_lo):
  """First index i with keys[i] >= q (lexicographic (hi, lo)); keys sorted ascending."""
  n = keys_hi.shape[0]

  def step(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    midc = jnp.minimum(mid, n - 1)
    less = _lex_less(keys_hi[midc], keys_lo[midc], q_hi, q_lo) & (mid < n)
    go = lo < hi
    return jnp.where(go & less, mid + 1, lo), jnp.where(go & ~less, mid, hi)

  bounds = (jnp.zeros(q_hi.shape, jnp.int32), jnp.full(q_hi.shape, n, jnp.int32))
  return jax.lax.fori_loop(0, int(np.ceil(np.log2(n + 1))) + 1, step, bounds)[0]


def neighbor_table(grid, valid, coord, kernel_size: int):
  """Neighbour indices of one scene.

  Args:
    grid: i32 [N, 3] cells (>= 0, < 2^16); valid: bool [N]; coord: f32 [N, 3] (tie-break).
    kernel_size: K (3 for CPE, 5 for the m1 stem).
  Returns:
    i32 [N, K^3]: index of the neighbour point in each offset cell, -1 if none (and -1
    for every entry of an invalid point).
  """
  hi, lo = serialization.morton_halves(grid[:, 0], grid[:, 1], grid[:, 2])
  order, _ = serialization.sort_by_code(hi, lo, valid, coord)
  keys_hi = jnp.where(valid, hi, serialization.PAD_HI)[order]
  keys_lo = lo[order]
  offsets = jnp.asarray(kernel_offsets(kernel_size))  # [K3, 3]
  cells = grid[:, None, :] + offsets[None, :, :]  # [N, K3, 3]
  inside = jnp.all((cells >= 0) & (cells <= _MAX_CELL), axis=-1)
  cells = jnp.clip(cells, 0, _MAX_CELL)
  q_hi, q_lo = serialization.morton_halves(cells[..., 0], cells[..., 1], cells[..., 2])
  pos = _search_sorted(keys_hi, keys_lo, q_hi, q_lo)
  posc = jnp.minimum(pos, keys_hi.shape[0] - 1)
  found = (pos < keys_hi.shape[0]) & (keys_hi[posc] == q_hi) & (keys_lo[posc] == q_lo)
  found &= inside & valid[:, None]
  return jnp.where(found, order[posc], -1).astype(jnp.int32)


def sparse_conv(features, neighbors, kernel):
  """out[i] = sum_k features[neighbors[i, k]] @ kernel[k] (missing neighbours add 0).

  Missing neighbours (-1) read an appended zero row instead of being masked with a select
  over the gathered [N, K3, C_in] block: the select and its backward cost as much as the
  gather itself on a CPU (benchmarks/bench_sparse_conv.py).

  Args:
    features: [N, C_in]; neighbors: i32 [N, K3]; kernel: [K3, C_in, C_out].
  """
  n = features.shape[0]
  padded = jnp.concatenate([features, jnp.zeros((1,) + features.shape[1:], features.dtype)])
  gathered = padded[jnp.where(neighbors >= 0, neighbors, n)]
  return jnp.einsum("nkc,kcd->nd", gathered, kernel.astype(features.dtype))


class SubMConv3d(nn.Module):
  """Submanifold sparse conv on one scene given its neighbour table.

  Weight layout [K^3, C_in, C_out], offsets in `kernel_offsets` order. Inputs are
  x [N, C_in] with neighbors [N, K^3], or batched [B, N, C_in] with [B, N, K^3].
  """

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.truncated_normal(0.02)

  @nn.compact
  def __call__(self, x, neighbors):
    k3 = self.kernel_size ** 3
    kernel = self.param("kernel", self.kernel_init, (k3, x.shape[-1], self.features))
    conv = sparse_conv if x.ndim == 2 else jax.vmap(sparse_conv, in_axes=(0, 0, None))
    y = conv(x, neighbors, kernel)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y
