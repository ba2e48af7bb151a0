"""Submanifold sparse 3D convolution over grid neighbours, inside jit.

A neighbour table gives, for every point and every one of the K^3 kernel offsets, the
index of a point occupying the offset cell (or -1). It is built once per stage and shared
by every conv of that stage: from a dense box of cells (one gather per kernel offset) when
the scenes' occupied boxes are small enough, else by sorting the cells lexicographically
(exact 48-bit keys as two int32 halves) and a vectorised binary search per (dx, dy)
column of the kernel.
When several points share a cell (views are not re-voxelised after augmentation), the
neighbour is the first of them in coordinate order, so the result does not depend on the
input order. The convolution gathers the neighbour rows of a group of kernel offsets and
multiplies them by the stacked weights in one GEMM per group; outputs exist only at input
sites (submanifold).
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


def _lex_halves(x, y, z):
  """(hi, lo) int32 halves of the 48-bit key x:y:z (16 bits each), ordered as (x, y, z)."""
  return (x << 8) | (y >> 8), ((y & 0xFF) << 16) | z


def neighbor_table(grid, valid, coord, kernel_size: int, by_coord=None):
  """Neighbour indices of one scene.

  Cells are sorted lexicographically by (x, y, z) and de-duplicated (each occupied cell
  keeps its first point in coordinate order, so the table does not depend on the input
  order). In that order one z-column of cells is contiguous, so the K^3 offsets need only
  K^2 binary searches, one per (dx, dy) column, each followed by a window of K unique
  cells that holds every (x+dx, y+dy, z+dz) that exists: K times fewer searches than
  looking every offset up.

  Args:
    grid: i32 [N, 3] cells (>= 0, < 2^16); valid: bool [N]; coord: f32 [N, 3] (tie-break).
    kernel_size: K (3 for CPE, 5 for the m1 stem).
    by_coord: i32 [N] `serialization.coordinate_order(coord)` when already computed (any
      permutation when every cell holds one point).
  Returns:
    i32 [N, K^3] in `kernel_offsets` order: index of the neighbour point in each offset
    cell, -1 if none (and -1 for every entry of an invalid point).
  """
  n = grid.shape[0]
  r = kernel_size // 2
  hi, lo = _lex_halves(grid[:, 0], grid[:, 1], grid[:, 2])
  hi = jnp.where(valid, hi, serialization.PAD_HI)
  if by_coord is None:
    by_coord = serialization.coordinate_order(coord)
  # Stable on points in coordinate order = one sort on (cell, x, y, z, index).
  order = by_coord[serialization.code_order(hi[by_coord], lo[by_coord], valid[by_coord])]
  s_hi, s_lo = hi[order], lo[order]
  first = jnp.concatenate([jnp.ones((1,), bool),
                           (s_hi[1:] != s_hi[:-1]) | (s_lo[1:] != s_lo[:-1])])
  first &= s_hi != serialization.PAD_HI
  # Unique cells, compacted in sorted order; padding keys sort last.
  slot = jnp.where(first, jnp.cumsum(first, dtype=jnp.int32) - 1, n)
  u_hi = jnp.full((n,), serialization.PAD_HI, jnp.int32).at[slot].set(s_hi, mode="drop")
  u_lo = jnp.zeros((n,), jnp.int32).at[slot].set(s_lo, mode="drop")
  u_point = jnp.full((n,), -1, jnp.int32).at[slot].set(order, mode="drop")

  steps = jnp.arange(-r, r + 1, dtype=jnp.int32)
  cx = grid[:, 0, None, None] + steps[None, :, None]  # [N, K, 1]
  cy = grid[:, 1, None, None] + steps[None, None, :]  # [N, 1, K]
  cx, cy = jnp.broadcast_arrays(cx, cy)  # [N, K, K]: columns, x slowest
  cx, cy = cx.reshape(n, -1), cy.reshape(n, -1)  # [N, K^2]
  z = grid[:, 2, None]
  in_column = (cx >= 0) & (cx <= _MAX_CELL) & (cy >= 0) & (cy <= _MAX_CELL)
  cx, cy = jnp.clip(cx, 0, _MAX_CELL), jnp.clip(cy, 0, _MAX_CELL)
  q_hi, q_lo = _lex_halves(cx, cy, jnp.broadcast_to(jnp.maximum(z - r, 0), cx.shape))
  start = _search_sorted(u_hi, u_lo, q_hi, q_lo)  # [N, K^2]
  window = jnp.minimum(start[..., None] + jnp.arange(kernel_size), n - 1)  # [N, K^2, W]
  w_hi, w_lo = u_hi[window], u_lo[window]
  tz = z[:, :, None] + steps[None, None, :]  # [N, 1, K] target z per offset
  t_hi, t_lo = _lex_halves(cx[..., None], cy[..., None], jnp.clip(tz, 0, _MAX_CELL))
  match = ((w_hi[:, :, None, :] == t_hi[..., None]) & (w_lo[:, :, None, :] == t_lo[..., None]))
  found = jnp.any(match, axis=-1)  # [N, K^2, K]
  hit = jnp.take_along_axis(window, jnp.argmax(match, axis=-1), axis=-1)  # [N, K^2, K]
  found &= in_column[..., None] & (tz >= 0) & (tz <= _MAX_CELL) & valid[:, None, None]
  table = jnp.where(found, u_point[hit], -1)
  return table.reshape(n, kernel_size ** 3).astype(jnp.int32)


# Cells per point slot of the dense lookup box (`neighbor_tables`): a box of at most
# 64 * N int32 cells (20 MiB at N = 80k) holds a 2 cm indoor room crop at stage 0 and
# every pooled stage; a scene whose occupied box is larger falls back to the search.
DENSE_CELLS_PER_POINT = 64


def _occupied_box(grid, valid):
  """(origin i32 [3], extent i32 [3]) of the valid points' cells (extent 1 if none)."""
  origin = jnp.min(jnp.where(valid[:, None], grid, _MAX_CELL), axis=0)
  top = jnp.max(jnp.where(valid[:, None], grid, 0), axis=0)
  origin = jnp.minimum(origin, top)  # no valid point: origin 0, extent 1
  return origin, top - origin + 1


def _fits_dense_box(grid, valid, size: int):
  """Whether the occupied box has at most `size` cells. Exact in int32 by floor division
  (a b c <= S iff c <= (S // a) // b), where the product of three 16-bit extents would
  overflow."""
  extent = _occupied_box(grid, valid)[1]
  return extent[2] <= (size // extent[0]) // extent[1]


def _dense_neighbor_table(grid, valid, by_coord, kernel_size: int, size: int):
  """`neighbor_table` through a dense box of cells: each cell holds the coordinate rank of
  its first point (scatter-min), and every kernel offset is one gather of the box.
  Requires `_fits_dense_box(grid, valid, size)`."""
  n = grid.shape[0]
  origin, extent = _occupied_box(grid, valid)
  local = grid - origin

  def cell_index(c):  # [..., 3] local cells -> flat box index
    return (c[..., 0] * extent[1] + c[..., 1]) * extent[2] + c[..., 2]

  rank = jnp.zeros((n,), jnp.int32).at[by_coord].set(jnp.arange(n, dtype=jnp.int32))
  box = jnp.full((size,), n, jnp.int32).at[jnp.where(valid, cell_index(local), size)].min(
      rank, mode="drop")
  target = local[:, None, :] + jnp.asarray(kernel_offsets(kernel_size))[None]  # [N, K^3, 3]
  inside = jnp.all((target >= 0) & (target < extent), axis=-1) & valid[:, None]
  first = box[jnp.where(inside, cell_index(target), 0)]  # rank of the cell's first point
  return jnp.where(inside & (first < n), by_coord[jnp.minimum(first, n - 1)], -1)


def neighbor_tables(grid, valid, coord, kernel_size: int, by_coord=None,
                    dense_cells_per_point: int = DENSE_CELLS_PER_POINT):
  """`neighbor_table` of every scene of a batch: i32 [B, N, K^3], the same tables.

  When every scene's occupied box has at most DENSE_CELLS_PER_POINT * N cells, the tables
  come from a dense box per scene (`_dense_neighbor_table`: K^3 gathers per point), else
  from the sorted-cell search. On the protocol room at 20k-80k points the box built the
  3^3 table 7.6-8.6x and the 5^3 table 4.3-4.6x faster than the search
  (benchmarks/bench_structure_ops.py, docs/performance.md). One choice
  for the whole batch keeps the branch a real `lax.cond` (a per-scene predicate under
  vmap would run both).

  Args:
    grid: i32 [B, N, 3] cells (>= 0, < 2^16); valid: bool [B, N]; coord: f32 [B, N, 3].
    by_coord: i32 [B, N] `serialization.coordinate_order` per scene (any permutation when
      every cell holds one point), computed when None.
    dense_cells_per_point: the dense box's budget (0: always search).
  """
  if by_coord is None:
    by_coord = jax.vmap(serialization.coordinate_order)(coord)
  size = max(1, dense_cells_per_point * grid.shape[1])  # both branches are traced
  fits = jnp.all(jax.vmap(lambda g, v: _fits_dense_box(g, v, size))(grid, valid))
  dense = jax.vmap(lambda g, v, p: _dense_neighbor_table(g, v, p, kernel_size, size))
  search = jax.vmap(lambda g, v, c, p: neighbor_table(g, v, c, kernel_size, p))
  return jax.lax.cond(fits, lambda: dense(grid, valid, by_coord),
                      lambda: search(grid, valid, coord, by_coord))


# Bytes of gathered neighbour rows one conv step may hold ([N, G, C_in] per scene). Blocks
# of a few MiB stay in cache: at 20k-80k points 8 MiB steps ran the conv's gradient
# 1.2-1.4x faster than 32 MiB ones, and at 80k x 16 channels the forward took 14.6 ms with
# G = 1 or 3 and 24.6 ms with G = 9 (docs/performance.md).
GATHER_BUDGET_BYTES = 8 << 20
# Smallest GEMM depth G * C_in of a forward step: the 5^3 stem's 6 input channels one
# offset at a time ran 2x slower than 5 offsets (depth 30) per step.
MIN_FORWARD_DEPTH = 16


def offsets_per_step(num_points: int, num_offsets: int, in_channels: int,
                     itemsize: int = 4, backward: bool = False) -> int:
  """Kernel offsets G gathered per GEMM step.

  The largest proper divisor of K3 whose [N, G, C_in] block fits `GATHER_BUDGET_BYTES`,
  but at least the smallest divisor giving a GEMM depth of `MIN_FORWARD_DEPTH` (forward)
  or K3's smallest divisor above 1 (backward: one offset per step scatter-adds K3 times).
  A proper divisor keeps the scan at two or more steps: XLA inlines a one-step loop and
  then fuses the features' producer (a norm and GELU, say) into the gather, recomputing
  it for each of the K3 reads of every row (3-4x slower convs in the tiny model).
  """
  divisors = [g for g in range(1, num_offsets) if num_offsets % g == 0] or [1]
  if backward:
    floor = divisors[min(1, len(divisors) - 1)]
  else:
    floor = next((g for g in divisors if g * in_channels >= MIN_FORWARD_DEPTH), divisors[-1])
  fits = GATHER_BUDGET_BYTES // max(1, num_points * in_channels * itemsize)
  return max(g for g in divisors if g <= max(fits, floor))


def _gather_rows(features, index):
  """features [N, C] at index [N, G] -> [N, G, C]; zero rows where index < 0."""
  return jnp.where((index >= 0)[..., None], features[jnp.maximum(index, 0)], 0.0)


def _grouped(neighbors, kernel, group):
  """neighbors [N, K3] -> [K3/G, N, G]; kernel [K3, C_in, C_out] -> [K3/G, G*C_in, C_out]."""
  n, k3 = neighbors.shape
  index = neighbors.reshape(n, k3 // group, group).transpose(1, 0, 2)
  weight = kernel.reshape(k3 // group, group * kernel.shape[1], kernel.shape[2])
  return index, weight


def _sparse_conv(features, neighbors, kernel):
  n, c_in = features.shape
  group = offsets_per_step(n, neighbors.shape[1], c_in, features.dtype.itemsize)
  index, weight = _grouped(neighbors, kernel.astype(features.dtype), group)

  def step(acc, block):
    index_g, weight_g = block
    return acc + _gather_rows(features, index_g).reshape(n, -1) @ weight_g, None

  init = jnp.zeros((n, kernel.shape[-1]), features.dtype)
  return jax.lax.scan(step, init, (index, weight))[0]


def _sparse_conv_fwd(features, neighbors, kernel):
  return _sparse_conv(features, neighbors, kernel), (features, neighbors, kernel)


def _sparse_conv_bwd(residuals, grad):
  """Recomputes each group's gathered rows instead of saving them (that would hold the
  [N, K3, C_in] block per conv until the backward pass): dW_g = rows_g^T grad, and
  d features = scatter-add of grad W_g^T onto the neighbours."""
  features, neighbors, kernel = residuals
  n, c_in = features.shape
  group = offsets_per_step(n, neighbors.shape[1], c_in, features.dtype.itemsize,
                           backward=True)
  index, weight = _grouped(neighbors, kernel.astype(features.dtype), group)
  grad = grad.astype(features.dtype)

  def step(d_features, block):
    index_g, weight_g = block
    d_weight = _gather_rows(features, index_g).reshape(n, -1).T @ grad  # [G*C_in, C_out]
    d_rows = (grad @ weight_g.T).reshape(n, group, c_in)
    d_rows = jnp.where((index_g >= 0)[..., None], d_rows, 0.0)
    d_features = d_features.at[jnp.maximum(index_g, 0)].add(d_rows)
    return d_features, d_weight

  d_features, d_weight = jax.lax.scan(step, jnp.zeros_like(features), (index, weight))
  d_kernel = d_weight.reshape(kernel.shape).astype(kernel.dtype)
  return d_features, None, d_kernel


@jax.custom_vjp
def sparse_conv(features, neighbors, kernel):
  """out[i] = sum_k features[neighbors[i, k]] @ kernel[k] (missing neighbours add 0).

  The K3 kernel offsets run in groups of G (`offsets_per_step`): each group gathers its
  neighbour rows [N, G, C_in] and multiplies them by the stacked [G*C_in, C_out] weights
  in one GEMM, accumulated over a `lax.scan` of K3/G steps. One GEMM over many offsets
  beats one small GEMM per offset (G = 1) on the CPU, while the budget bounds the
  transient block. The VJP recomputes the gathered rows rather than saving them.
  docs/performance.md has the measurements.

  Args:
    features: [N, C_in]; neighbors: i32 [N, K3]; kernel: [K3, C_in, C_out].
  Returns:
    [N, C_out] in features' dtype.
  """
  return _sparse_conv(features, neighbors, kernel)


sparse_conv.defvjp(_sparse_conv_fwd, _sparse_conv_bwd)


def batched_sparse_conv(features, neighbors, kernel):
  """`sparse_conv` of every scene: features [B, N, C_in], neighbors i32 [B, N, K3] ->
  [B, N, C_out].

  On one device the B scenes run as one scene of B*N rows (each scene's neighbour indices
  offset by b*N): the gathers and scatter-adds of a vmapped conv carry a batch axis that
  XLA:CPU handles 1.1-1.4x slower, B = 1 included (docs/performance.md). With several
  devices the batch axis stays, so that a data-parallel sharding of it can partition the
  gathers.
  """
  b, n = features.shape[:2]
  if b > 1 and jax.device_count() > 1:
    return jax.vmap(sparse_conv, in_axes=(0, 0, None))(features, neighbors, kernel)
  offset = (jnp.arange(b, dtype=jnp.int32) * n)[:, None, None]
  rows = jnp.where(neighbors >= 0, neighbors + offset, -1).reshape(b * n, -1)
  out = sparse_conv(features.reshape(b * n, -1), rows, kernel)
  return out.reshape(b, n, -1)


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
    y = sparse_conv(x, neighbors, kernel) if x.ndim == 2 else batched_sparse_conv(
        x, neighbors, kernel)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y
