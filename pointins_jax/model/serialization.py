"""Space-filling-curve serialization of grid cells (PTv3 §2 of ptv3_ssl_spec.md).

Codes are exact for grids of up to 2^16 cells per axis (3 x 16 = 48 bits). x64 is off in
JAX by default, so a code is carried as two int32 halves: `hi` = bits 24..47 and
`lo` = bits 0..23 (each < 2^24), compared lexicographically. Within every 3-bit group
x is the most significant bit (z-order: x bit i -> code bit 3i+2, y -> 3i+1, z -> 3i).
The Hilbert curve is Skilling's transpose algorithm on the integer coordinates,
followed by Gray-to-binary decoding of the interleaved bits, exactly as Pointcept's
`hilbert.encode` does bit by bit. Unlike z-order, the Hilbert code depends on the depth
(the number of bits per axis); Pointcept uses `depth = bit_length(max grid + 1)` over the
whole batch at every stage (`batch_depth`), so a scene's Hilbert order depends on the
largest scene it is batched with; `serialize` takes that depth, or the scene's own.

Orders: 'z' (x, y, z), 'z-trans' (y, x, z), 'hilbert', 'hilbert-trans'.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16
PAD_HI = 1 << 30  # larger than any real `hi` (< 2^24): padding sorts last


def _spread3(v):
  """Spreads the low 8 bits of v so bit i lands at bit 3i (int32)."""
  v = v & 0xFF
  v = (v | (v << 16)) & 0x030000FF
  v = (v | (v << 8)) & 0x0300F00F
  v = (v | (v << 4)) & 0x030C30C3
  v = (v | (v << 2)) & 0x09249249
  return v


def _interleave24(x, y, z):
  """24-bit Morton code of three 8-bit values, x most significant in each group."""
  return (_spread3(x) << 2) | (_spread3(y) << 1) | _spread3(z)


def morton_halves(x, y, z):
  """(hi, lo) of the 48-bit Morton code of 16-bit coordinates."""
  hi = _interleave24(x >> 8, y >> 8, z >> 8)
  lo = _interleave24(x & 0xFF, y & 0xFF, z & 0xFF)
  return hi, lo


def _gray_to_binary24(g):
  g = g ^ (g >> 1)
  g = g ^ (g >> 2)
  g = g ^ (g >> 4)
  g = g ^ (g >> 8)
  g = g ^ (g >> 16)
  return g & 0xFFFFFF


def hilbert_halves(x, y, z, depth):
  """(hi, lo) of the 3*depth-bit Hilbert code (depth may be a traced scalar <= 16)."""

  def step(j, axes):
    axes = list(axes)
    bit = depth - 1 - j  # bit position handled at step j (MSB first)
    q = jnp.left_shift(jnp.int32(1), jnp.maximum(bit, 0))
    # Mask of the bits below `bit`; empty for the last step and for steps past the depth.
    p = jnp.where(bit > 0, q - 1, 0)
    for d in range(3):
      m = (axes[d] & q) != 0
      inverted = axes[0] ^ p
      t = (axes[0] ^ axes[d]) & p
      swapped0, swapped_d = axes[0] ^ t, axes[d] ^ t
      if d == 0:
        axes[0] = jnp.where(m, inverted, axes[0])
      else:
        axes[d] = jnp.where(m, axes[d], swapped_d)
        axes[0] = jnp.where(m, inverted, swapped0)
    return tuple(axes)

  # A loop rather than 16 unrolled steps keeps the compiled program small.
  axes = jax.lax.fori_loop(0, MAX_DEPTH, step, (x, y, z))
  gray_hi, gray_lo = morton_halves(*axes)
  hi = _gray_to_binary24(gray_hi)
  # Prefix XOR continues from the hi half into the lo half: carry hi's last bit.
  carry = -(hi & 1) & 0xFFFFFF
  lo = _gray_to_binary24(gray_lo) ^ carry
  return hi, lo


def encode(grid, order: str, depth=MAX_DEPTH):
  """Curve code halves of grid cells.

  Args:
    grid: i32 [N, 3] non-negative cells (< 2^16).
    order: one of ORDERS.
    depth: bits per axis for the Hilbert curve (ignored by z-order, which is
      depth-independent).
  Returns:
    (hi, lo) i32 [N] each.
  """
  x, y, z = grid[:, 0], grid[:, 1], grid[:, 2]
  if order.endswith("-trans"):
    x, y = y, x
  if order.startswith("z"):
    return morton_halves(x, y, z)
  if order.startswith("hilbert"):
    return hilbert_halves(x, y, z, jnp.asarray(depth, jnp.int32))
  raise ValueError(f"unknown serialization order {order!r}; use one of {ORDERS}")


def _bit_length(x):
  """Bits of non-negative x (int32 or uint32; 0 for 0)."""
  return (32 - jax.lax.clz(x)).astype(jnp.int32)


def scene_depth(grid, valid):
  """Pointcept's depth: bit_length(max valid grid coordinate + 1), at least 1."""
  m = jnp.max(jnp.where(valid[:, None], grid, 0)) + 1
  return jnp.maximum(_bit_length(m.astype(jnp.int32)), 1)


def batch_depth(grid, valid):
  """Pointcept's batch-wide depth, one per row: scene_depth over every scene of grid
  i32 [B, N, 3] / valid bool [B, N] -> i32 [B] (all equal)."""
  depth = jnp.max(jax.vmap(scene_depth)(grid, valid))
  return jnp.full(grid.shape[:1], depth, jnp.int32)


def _digit_bits(n: int) -> tuple[int, int]:
  """(position bits b, digit bits w = 32 - b) of a radix pass over n points."""
  b = max(1, (n - 1).bit_length())
  if b > 31:
    raise ValueError(f"radix sorts take at most 2^31 points, got {n}")
  return b, 32 - b


def _radix_passes(order, digit, passes):
  """Stable LSD radix passes refining `order` (i32 [N]): pass p sorts the points, in
  their current order, by `digit(p)` (uint32 [N] by point, < 2^w of `_digit_bits`).

  XLA:CPU sorts one 32-bit operand with a plain `std::sort`, but a multi-operand sort
  through a generated comparator about 4x slower (80k points: 5.6 ms against 24 ms for
  (hi, lo, index)). So each pass sorts single words `digit << b | position`: unique by
  position, which makes the pass stable and its result unique.
  """
  n = order.shape[0]
  b, _ = _digit_bits(n)
  position = jnp.arange(n, dtype=jnp.uint32)

  def one_pass(p, order):
    words = jax.lax.sort(jax.lax.shift_left(digit(p)[order], jnp.uint32(b)) | position)
    return order[(words & jnp.uint32((1 << b) - 1)).astype(jnp.int32)]

  return jax.lax.fori_loop(0, passes, one_pass, order)


def _sortable_bits(x):
  """uint32 [N] ordered as the f32 values x (finite), -0.0 equal to 0.0 as `lax.sort` has it."""
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def coordinate_order(coord):
  """i32 [N]: the points ordered by coordinates (x, y, z), ties by index.

  The tie-break between points of one cell. Sorting by it first and then stably by a cell
  key gives the same order as one sort on (key, x, y, z, index), and one coordinate sort
  per stage plus a code sort per curve cost about half of a 5-key sort per curve on the
  CPU (docs/performance.md). Radix passes (`_radix_passes`) over each axis's
  order-preserving bits, minus their minimum so that only the bits that vary are sorted:
  about 2 passes per axis for a room in metres.
  """
  n = coord.shape[0]
  _, w = _digit_bits(n)
  bits, passes = [], []
  for axis in (2, 1, 0):  # least significant key first
    b = _sortable_bits(coord[:, axis])
    bits.append(b - jnp.min(b))
    passes.append((_bit_length(jnp.max(bits[-1])) + w - 1) // w)
  # One loop over every axis's passes (fewer compiled loops than one per axis).
  z_end, y_end = passes[0], passes[0] + passes[1]

  def digit(p):
    word = jnp.where(p < z_end, bits[0], jnp.where(p < y_end, bits[1], bits[2]))
    shift = jnp.where(p < z_end, p, jnp.where(p < y_end, p - z_end, p - y_end)) * w
    return jax.lax.shift_right_logical(word, shift.astype(jnp.uint32)) & jnp.uint32(
        (1 << w) - 1)

  return _radix_passes(jnp.arange(n, dtype=jnp.int32), digit, y_end + passes[2])


def code_order(hi, lo, valid):
  """Stable order of 48-bit codes: i32 [N], sorting (hi, lo) ascending with every padding
  point after the valid ones and ties kept in index order.

  Radix passes (`_radix_passes`) over the code's digits, only as many as the largest valid
  code needs (the stage-0 codes of an 80k-point room need 2, its pooled stages 1-2):
  2.5-5x faster than `lax.sort` on (hi, lo, index) (docs/performance.md).

  Args:
    hi, lo: i32 [N] code halves, each in [0, 2^24) for valid points; valid: bool [N].
  """
  n = hi.shape[0]
  _, w = _digit_bits(n)
  top_hi = jnp.max(jnp.where(valid, hi, 0))
  top_lo = jnp.max(jnp.where(valid, lo, 0))
  key_bits = jnp.where(top_hi > 0, 24 + _bit_length(top_hi), _bit_length(top_lo))
  # Padding takes the key 2^key_bits, above every valid code and needing one bit more.
  pad_hi = jnp.where(key_bits >= 24, jnp.left_shift(1, jnp.maximum(key_bits - 24, 0)), 0)
  pad_lo = jnp.where(key_bits < 24, jnp.left_shift(1, jnp.minimum(key_bits, 23)), 0)
  hi = jnp.where(valid, hi, pad_hi).astype(jnp.uint32)
  lo = jnp.where(valid, lo, pad_lo).astype(jnp.uint32)

  def digit(p):  # bits [p w, p w + w) of hi * 2^24 + lo
    shift = (p * w).astype(jnp.uint32)
    low = jnp.where(shift < 24, jax.lax.shift_right_logical(lo, shift), 0)
    high = jnp.where(shift <= 24, jax.lax.shift_left(hi, 24 - jnp.minimum(shift, 24)),
                     jax.lax.shift_right_logical(hi, shift - 24))
    return (low | high) & jnp.uint32((1 << w) - 1)

  passes = (key_bits + w) // w  # ceil((key_bits + 1) / w)
  return _radix_passes(jnp.arange(n, dtype=jnp.int32), digit, passes)


def sort_by_code(hi, lo, valid, by_coord=None):
  """Serialization orders of K curves: by code, padding last, ties broken by `by_coord`.

  Breaking ties between points of one cell by their coordinates (not their index)
  makes the order, and so the network, equivariant to permutations of the input. The K
  curves sort together (one radix loop, `code_order` vmapped), which compiles fewer
  kernels than a loop per curve.

  Args:
    hi, lo: i32 [K, N] code halves; valid: bool [N].
    by_coord: i32 [N] `coordinate_order` of the points, or None when every valid point
      has its own cell (pooled stages), where codes never tie.
  Returns (order i32 [K, N], inverse i32 [K, N]) with inverse[c, order[c, i]] = i.
  """
  n = hi.shape[-1]
  by_curve = jax.vmap(code_order, in_axes=(0, 0, None))
  if by_coord is None:
    order = by_curve(hi, lo, valid)
  else:  # stable: equal codes keep the coordinate order
    order = by_coord[by_curve(hi[:, by_coord], lo[:, by_coord], valid[by_coord])]
  iota = jnp.arange(n, dtype=jnp.int32)
  inverse = jax.vmap(lambda o: jnp.zeros((n,), jnp.int32).at[o].set(iota))(order)
  return order, inverse


def serialize(grid, valid, coord, orders=ORDERS, depth=None, unique_cells: bool = False,
              by_coord=None):
  """Orders and inverses for every curve: i32 [len(orders), N] each.

  depth: Hilbert bits per axis (traced scalar), default the scene's own `scene_depth`.
  unique_cells: every valid point has its own cell, so codes alone order the points.
  by_coord: the points' `coordinate_order` when already computed (shared with the
    stage's neighbour table); ignored with unique_cells.
  """
  depth = scene_depth(grid, valid) if depth is None else depth
  if unique_cells:
    by_coord = None
  elif by_coord is None:
    by_coord = coordinate_order(coord)
  codes = [encode(grid, o, depth) for o in orders]
  return sort_by_code(jnp.stack([hi for hi, _ in codes]), jnp.stack([lo for _, lo in codes]),
                      valid, by_coord)
