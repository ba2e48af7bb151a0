"""k nearest neighbours: Pallas (Triton) tiled kernel, exact pruned XLA path, host KD-tree path,
reference, dispatch.

Contract shared by every implementation (bit-identical results in f32):
  * the squared distance is `dx * dx + dy * dy + dz * dz` of direct f32 coordinate differences
    (no `|q|^2 + |k|^2 - 2 q.k` form, whose cancellation loses precision far from the origin);
  * key j qualifies for query i when both are valid, their segments are equal (when segments
    are given) and `dist2 < max_distance ** 2` in f32 (strict, like scipy's
    `cKDTree.query(distance_upper_bound=...)`);
  * a query is its own neighbour at distance 0 when it is also a key (e.g. `knn(x, x, k)`);
  * the neighbours are sorted by ascending dist2 and their distances are exact; index sets are
    the same in every implementation unless several keys tie at the k-th distance (then any of
    them may fill the last slots). The reference and the Pallas kernel keep the k smallest
    (dist2, key index) pairs, i.e. the lower index wins ties; the XLA path resolves ties by
    its spatial visiting order, the host path by index among its KD-tree's candidates (both
    deterministic);
  * missing neighbours (fewer than k qualify; every slot of an invalid query) are index -1 and
    dist2 +inf.
The op is not differentiable: indices are integers and dist2 carries no gradient; gather the
neighbour coordinates and recompute distances where a gradient is needed.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
import jax.numpy as jnp
import numpy as np

from kernels import dispatch

# i32 stand-in for "no key" in the XLA path's running lists: larger than any key index.
_NO_KEY = np.iinfo(np.int32).max
# Points per block of the XLA path, and key blocks merged per loop step: the best of
# (32, 8), (64, 2), (64, 4), (128, 1), (128, 2) at 100k points, k = 20 and 150, on the 2-core
# CPU (k = 150 within 1.2 m: 6.9 s vs 8.7 s for (64, 4), 10.5 s for (128, 2)).
_XLA_BLOCK = 32
_XLA_BLOCKS_PER_STEP = 8
# Spatial sort resolution of the XLA path: 2^10 cells per axis (30-bit Morton codes).
_MORTON_BITS = 10


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  """Tiles of the Pallas kernel.

  Attributes:
    block_q: queries per program (power of two >= 16); None picks 64 for k <= 32, shrinking
      as k grows so the running [block_q, Kp] lists stay in registers.
    block_k: keys per inner-loop step (power of two >= 16).
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining stages.
  """
  block_q: int | None = None
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 1

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      size = getattr(self, name)
      if size is not None and (size < 16 or size & (size - 1)):
        raise ValueError(f"BlockSizes.{name}={size} must be a power of two >= 16.")

  def queries_per_program(self, padded_k: int) -> int:
    return self.block_q or max(16, min(64, 2048 // padded_k))


def _sum_of_squares(dx, dy, dz):
  """dx^2 + dy^2 + dz^2 in this order: every path (and the box bound) shares it bit for bit."""
  return dx * dx + dy * dy + dz * dz


def _squared_distance(q, key):
  """[..., 3] x [..., 3] (broadcast) -> [...] f32 squared distances of direct differences."""
  return _sum_of_squares(*(q[..., axis] - key[..., axis] for axis in range(3)))


def _finish(dist2, index):
  """Marks slots without a qualifying key as (-1, +inf)."""
  found = jnp.isfinite(dist2)
  return jnp.where(found, index, -1).astype(jnp.int32), jnp.where(found, dist2, jnp.inf)


# ----------------------------------------------------------------------------------------------
# Pallas (Triton) kernel.


def _knn_kernel(qx_ref, qy_ref, qz_ref, q_valid_ref, q_segment_ref, kx_ref, ky_ref, kz_ref,
                k_valid_ref, k_segment_ref, dist_ref, index_ref, *, k, block_k, max_dist2):
  """One query tile: streams every key tile and keeps the k smallest (dist2, index) pairs.

  Refs: q* [bq] (coords f32, valid/segment i32), k* [Mp] likewise, outputs [bq, Kp] f32/i32
  holding the k neighbours unsorted in slots < k (slots >= k are -inf fillers).

  The running list is a bounded "replace the worst" set: a tile's candidates are consumed in
  ascending (dist2, index) order and each replaces the list's largest (dist2, index) entry while
  it is smaller. Keys arrive in ascending index order, so "smaller" reduces to a strict
  `dist2 <` against the worst entry (an equal distance from a later tile has a larger index).
  Only top-k-free primitives (min/max reductions, selects) are used: they all lower to Triton.
  """
  qx, qy, qz = qx_ref[...], qy_ref[...], qz_ref[...]
  q_ok = q_valid_ref[...] != 0
  q_segment = q_segment_ref[...]
  block_q, padded_k = dist_ref.shape
  slot = lax.broadcasted_iota(jnp.int32, (block_q, padded_k), 1)
  # Filler slots >= k sit at -inf so the worst (max) entry is always a real slot; empty real
  # slots are +inf with distinct negative ids so exactly one is evicted at a time.
  best_d = jnp.where(slot < k, jnp.inf, -jnp.inf)
  best_i = -1 - slot
  lane = lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)

  def key_tile(tile, carry):
    best_d, best_i = carry
    keys = pl.ds(tile * block_k, block_k)
    dx = qx[:, None] - kx_ref[keys][None, :]
    dy = qy[:, None] - ky_ref[keys][None, :]
    dz = qz[:, None] - kz_ref[keys][None, :]
    dist2 = _sum_of_squares(dx, dy, dz)
    ok = q_ok[:, None] & (k_valid_ref[keys] != 0)[None, :]
    ok &= q_segment[:, None] == k_segment_ref[keys][None, :]
    if max_dist2 is not None:
      ok &= dist2 < max_dist2
    candidates = jnp.where(ok, dist2, jnp.inf)
    column = lane + tile * block_k
    worst = jnp.max(best_d, axis=1)

    def pending(candidates, worst):
      return jnp.max((jnp.min(candidates, axis=1) < worst).astype(jnp.int32)) > 0

    def insert(carry):
      candidates, best_d, best_i, worst, _ = carry
      nearest = jnp.min(candidates, axis=1)
      # Lowest column among equal distances: the lexicographic minimum.
      nearest_i = jnp.min(jnp.where(candidates == nearest[:, None], column, _NO_KEY), axis=1)
      is_worst = best_d == worst[:, None]
      worst_i = jnp.max(jnp.where(is_worst, best_i, -_NO_KEY), axis=1)
      evict = (nearest < worst)[:, None] & is_worst & (best_i == worst_i[:, None])
      best_d = jnp.where(evict, nearest[:, None], best_d)
      best_i = jnp.where(evict, nearest_i[:, None], best_i)
      # Rows that rejected their nearest candidate reject the rest too (worst only shrinks),
      # so consuming it unconditionally is safe.
      candidates = jnp.where(column == nearest_i[:, None], jnp.inf, candidates)
      worst = jnp.max(best_d, axis=1)
      return candidates, best_d, best_i, worst, pending(candidates, worst)

    carry = (candidates, best_d, best_i, worst, pending(candidates, worst))
    _, best_d, best_i, _, _ = lax.while_loop(lambda carry: carry[-1], insert, carry)
    return best_d, best_i

  best_d, best_i = lax.fori_loop(0, kx_ref.shape[0] // block_k, key_tile, (best_d, best_i))
  dist_ref[...] = best_d
  index_ref[...] = best_i


def knn_pallas(queries, keys, k, query_valid, key_valid, query_segment, key_segment,
               max_distance=None, *, block_sizes=BlockSizes(), interpret=False):
  """Tiled brute-force kNN as a Pallas (Triton) kernel; arguments as `knn` (all given)."""
  num_queries, num_keys = queries.shape[0], keys.shape[0]
  padded_k = max(16, pl.next_power_of_2(k))
  block_q = block_sizes.queries_per_program(padded_k)
  block_k = block_sizes.block_k
  q_pad = -num_queries % block_q
  k_pad = -num_keys % block_k
  # Structure-of-arrays rows: Triton blocks must be powers of two, which [*, 3] is not.
  q_rows = [jnp.pad(queries[:, axis], (0, q_pad)) for axis in range(3)]
  k_rows = [jnp.pad(keys[:, axis], (0, k_pad)) for axis in range(3)]
  # Masks travel as i32 (a plain 32-bit Triton load); padded rows are invalid.
  q_rows += [jnp.pad(query_valid, (0, q_pad)).astype(jnp.int32),
             jnp.pad(query_segment, (0, q_pad))]
  k_rows += [jnp.pad(key_valid, (0, k_pad)).astype(jnp.int32), jnp.pad(key_segment, (0, k_pad))]
  padded_q = num_queries + q_pad
  q_spec = pl.BlockSpec((block_q,), lambda i: (i,))
  k_spec = pl.BlockSpec((num_keys + k_pad,), lambda i: (0,))
  out_spec = pl.BlockSpec((block_q, padded_k), lambda i: (i, 0))
  max_dist2 = None if max_distance is None else float(np.float32(max_distance) ** 2)
  dist2, index = pl.pallas_call(
      functools.partial(_knn_kernel, k=k, block_k=block_k, max_dist2=max_dist2),
      grid=(padded_q // block_q,),
      in_specs=[q_spec] * 5 + [k_spec] * 5,
      out_specs=[out_spec, out_spec],
      out_shape=[jax.ShapeDtypeStruct((padded_q, padded_k), jnp.float32),
                 jax.ShapeDtypeStruct((padded_q, padded_k), jnp.int32)],
      # Explicit Triton params: without them jax 0.10.2 lowers pallas_call to Mosaic GPU.
      compiler_params=pltriton.CompilerParams(num_warps=block_sizes.num_warps,
                                              num_stages=block_sizes.num_stages),
      interpret=interpret,
      name="knn",
  )(*q_rows, *k_rows)
  # Sort the unsorted lists by (dist2, index); the -inf fillers come first and are dropped.
  dist2, index = lax.sort((dist2[:num_queries], index[:num_queries]), dimension=1, num_keys=2)
  return _finish(dist2[:, padded_k - k:], index[:, padded_k - k:])


# ----------------------------------------------------------------------------------------------
# XLA path: brute force over spatially sorted blocks, pruned by bounding boxes.


def _spatial_order(points, valid, segment, lower, cell):
  """Permutation sorting points by (invalid last, segment, Morton code): i32 [N]."""
  cells = jnp.clip(((points - lower) / cell).astype(jnp.int32), 0, (1 << _MORTON_BITS) - 1)
  code = jnp.zeros(points.shape[0], jnp.int32)
  for bit in range(_MORTON_BITS):
    for axis in range(3):
      code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + 2 - axis)
  return jnp.lexsort((code, segment, ~valid)).astype(jnp.int32)


def _blocks(points, valid, segment, order, block):
  """Sorted, padded blocks and their bounds.

  Returns dict of: points [B, block, 3], valid [B, block], segment [B, block], index [B, block]
  (original index, _NO_KEY on padding), lower/upper [B, 3] (bounding box of valid points;
  +inf/-inf when a block has none), segment_lo/segment_hi [B].
  """
  pad = -order.shape[0] % block
  order = jnp.pad(order, (0, pad), constant_values=-1)
  present = order >= 0
  # Padded slots point to row 0 and are masked by `valid`.
  valid = valid[order] & present
  shape = (-1, block)
  points = jnp.where(valid[:, None], points[order], 0.0).reshape(shape + (3,))
  segment = segment[order].reshape(shape)
  valid = valid.reshape(shape)
  big = np.iinfo(np.int32).max
  return dict(
      points=points, valid=valid, segment=segment,
      index=jnp.where(present, order, _NO_KEY).reshape(shape),
      lower=jnp.min(jnp.where(valid[..., None], points, jnp.inf), axis=1),
      upper=jnp.max(jnp.where(valid[..., None], points, -jnp.inf), axis=1),
      segment_lo=jnp.min(jnp.where(valid, segment, big), axis=1),
      segment_hi=jnp.max(jnp.where(valid, segment, -big), axis=1))


def _query_block_knn(qb, kb, k, max_dist2, blocks_per_step):
  """kNN of one query block over the key blocks, nearest boxes first.

  Box distances are lower bounds of every point distance in f32 too (rounding is monotone and
  both sum dx^2 + dy^2 + dz^2 in the same order), so once the next box is farther than every
  query's current k-th distance no later key can enter (the `top_k` merge keeps earlier entries
  on ties, so a box at exactly that distance cannot change the result either).
  """
  gap = jnp.maximum(jnp.maximum(kb["lower"] - qb["upper"], qb["lower"] - kb["upper"]), 0.0)
  box_dist2 = _sum_of_squares(gap[:, 0], gap[:, 1], gap[:, 2])
  reachable = (kb["segment_lo"] <= qb["segment_hi"]) & (qb["segment_lo"] <= kb["segment_hi"])
  if max_dist2 is not None:
    reachable &= box_dist2 < max_dist2
  # Empty blocks have an empty segment range, so they are unreachable too.
  box_dist2 = jnp.where(reachable, box_dist2, jnp.inf)
  visit = jnp.argsort(box_dist2)
  # Whole steps of `blocks_per_step` blocks, plus an unreachable sentinel ending the loop.
  pad = -visit.shape[0] % blocks_per_step
  visit_dist2 = jnp.pad(box_dist2[visit], (0, pad + 1), constant_values=jnp.inf)
  visit = jnp.pad(visit, (0, pad))
  block_q = qb["points"].shape[0]

  def bound(best_d):
    """Largest k-th distance over valid queries (inf while some list is not full)."""
    return jnp.max(jnp.where(qb["valid"], best_d[:, -1], -jnp.inf))

  def cond(carry):
    step, best_d, _ = carry
    return visit_dist2[step * blocks_per_step] < bound(best_d)

  def body(carry):
    step, best_d, best_i = carry
    chosen = lax.dynamic_slice_in_dim(visit, step * blocks_per_step, blocks_per_step)
    chosen_ok = lax.dynamic_slice_in_dim(visit_dist2, step * blocks_per_step,
                                         blocks_per_step) < jnp.inf
    keys = kb["points"][chosen].reshape(-1, 3)
    dist2 = _squared_distance(qb["points"][:, None, :], keys[None, :, :])
    ok = qb["valid"][:, None] & (kb["valid"][chosen] & chosen_ok[:, None]).reshape(1, -1)
    ok &= qb["segment"][:, None] == kb["segment"][chosen].reshape(1, -1)
    if max_dist2 is not None:
      ok &= dist2 < max_dist2
    dist2 = jnp.where(ok, dist2, jnp.inf)
    index = jnp.broadcast_to(kb["index"][chosen].reshape(1, -1), dist2.shape)
    # `top_k` is ~10x faster than a two-key (dist2, index) sort on the CPU; it breaks ties by
    # position, hence the looser tie contract of this path.
    neg_d, position = lax.top_k(-jnp.concatenate([best_d, dist2], 1), k)
    best_i = jnp.take_along_axis(jnp.concatenate([best_i, index], 1), position, axis=1)
    return step + 1, -neg_d, best_i

  init = (jnp.int32(0), jnp.full((block_q, k), jnp.inf, jnp.float32),
          jnp.full((block_q, k), _NO_KEY, jnp.int32))
  _, best_d, best_i = lax.while_loop(cond, body, init)
  return best_d, best_i


def knn_xla(queries, keys, k, query_valid, key_valid, query_segment, key_segment,
            max_distance=None, *, block=_XLA_BLOCK, blocks_per_step=_XLA_BLOCKS_PER_STEP):
  """Exact kNN without an [Q, M] matrix: memory O((Q + M) + block * (k + block)).

  Queries and keys are sorted by (segment, Morton code) into blocks of `block` points; each
  query block scans key blocks in order of bounding-box distance and stops once no remaining
  box can hold a closer key (worst case: brute force). Arguments as `knn` (all given).
  """
  max_dist2 = None if max_distance is None else np.float32(max_distance) ** 2
  queries = jnp.where(query_valid[:, None], queries, 0.0)
  keys = jnp.where(key_valid[:, None], keys, 0.0)
  # One frame for both sorts so nearby queries and keys share Morton prefixes.
  lower = jnp.minimum(jnp.min(jnp.where(key_valid[:, None], keys, jnp.inf), 0),
                      jnp.min(jnp.where(query_valid[:, None], queries, jnp.inf), 0))
  upper = jnp.maximum(jnp.max(jnp.where(key_valid[:, None], keys, -jnp.inf), 0),
                      jnp.max(jnp.where(query_valid[:, None], queries, -jnp.inf), 0))
  lower = jnp.where(jnp.isfinite(lower), lower, 0.0)
  cell = jnp.maximum(jnp.max(upper - lower), 1e-6) / (1 << _MORTON_BITS)
  cell = jnp.where(jnp.isfinite(cell), cell, 1.0)
  q_order = _spatial_order(queries, query_valid, query_segment, lower, cell)
  k_order = _spatial_order(keys, key_valid, key_segment, lower, cell)
  qb = _blocks(queries, query_valid, query_segment, q_order, block)
  kb = _blocks(keys, key_valid, key_segment, k_order, block)
  num_blocks = kb["points"].shape[0]
  blocks_per_step = min(blocks_per_step, num_blocks)
  query_blocks = {name: qb[name] for name in ("points", "valid", "segment", "lower", "upper",
                                              "segment_lo", "segment_hi")}
  best_d, best_i = lax.map(
      lambda q_block: _query_block_knn(q_block, kb, k, max_dist2, blocks_per_step),
      query_blocks)
  # Back to the caller's query order; padded query rows are dropped.
  num_queries = queries.shape[0]
  rows = qb["index"].reshape(-1)
  dist2 = jnp.full((num_queries, k), jnp.inf).at[rows].set(best_d.reshape(-1, k), mode="drop")
  index = jnp.zeros((num_queries, k), jnp.int32).at[rows].set(best_i.reshape(-1, k), mode="drop")
  return _finish(dist2, index)


# ----------------------------------------------------------------------------------------------
# Host path (CPU): scipy's KD-tree through a callback, re-ranked by the f32 contract.

# Candidates asked of the KD-tree beyond k. It ranks by float64 distances, which may order keys
# whose f32 dist2 tie or differ by an ulp otherwise; re-ranking k + slack candidates by the f32
# (dist2, index) pair gives the reference's answer unless more than `slack` keys sit within f32
# rounding of the k-th distance (exact ties are allowed to differ by the contract anyway).
_HOST_SLACK = 2
# The KD-tree's distance bound is widened by this factor so that no key whose f32 dist2 passes
# the strict f32 test is cut by float64 rounding; the f32 test is applied afterwards.
_HOST_BOUND_MARGIN = 1.0 + 1e-5
# Queries per KD-tree call.
_HOST_CHUNK = 32768
# "auto" takes the host path on a CPU from this many queries per call (`resolve_impl`). At
# 10k points the XLA search took 2.4-3.6x cKDTree's time, the host path about 1x.
HOST_MIN_QUERIES = 8192


def _host_candidates(queries, keys, query_valid, key_valid, query_segment, key_segment, *,
                     count, max_distance):
  """numpy, first half of `knn_host`: i32 [Q, count] candidate key ids, `_NO_KEY` where none.

  One `cKDTree` per segment over its valid keys, queried by that segment's valid queries on
  every core; each row ascends by the tree's float64 distance.
  """
  from scipy.spatial import cKDTree  # pylint: disable=import-outside-toplevel
  queries, keys = np.asarray(queries), np.asarray(keys)
  query_valid, key_valid = np.asarray(query_valid), np.asarray(key_valid)
  query_segment, key_segment = np.asarray(query_segment), np.asarray(key_segment)
  bound = np.inf if max_distance is None else max_distance * _HOST_BOUND_MARGIN
  candidate = np.full((queries.shape[0], count), _NO_KEY, np.int32)
  key_ids = np.flatnonzero(key_valid)
  key_ids = key_ids[np.argsort(key_segment[key_ids], kind="stable")]
  query_ids = np.flatnonzero(query_valid)
  query_ids = query_ids[np.argsort(query_segment[query_ids], kind="stable")]
  key_groups = dict(zip(*_runs(key_segment[key_ids])))
  for segment, (start, stop) in zip(*_runs(query_segment[query_ids])):
    if segment not in key_groups:
      continue
    members = key_ids[slice(*key_groups[segment])]
    tree, width = cKDTree(keys[members]), min(count, members.size)
    # The tree marks a missing neighbour with members.size: one lookup maps it to _NO_KEY.
    lookup = np.append(members, _NO_KEY).astype(np.int32)
    # Chunks of queries keep the tree's float64/int64 outputs small and their memory reused.
    for chunk in range(start, stop, _HOST_CHUNK):
      rows = query_ids[chunk:min(chunk + _HOST_CHUNK, stop)]
      _, nearest = tree.query(queries[rows], k=width, distance_upper_bound=bound, workers=-1)
      candidate[rows, :width] = lookup[nearest.reshape(rows.size, width)]
  return candidate


def _runs(sorted_values):
  """(values, [(start, stop)]) of the equal runs of a sorted 1-D array."""
  values, starts = np.unique(sorted_values, return_index=True)
  stops = np.append(starts[1:], sorted_values.size)
  return values.tolist(), list(zip(starts.tolist(), stops.tolist()))


def _host_rank(candidate, dist2, *, k):
  """numpy, second half of `knn_host`: the k best candidates by (f32 dist2, index).

  Rows arrive in the tree's float64 order, which is already the f32 order except near ties,
  so only the rows out of order are sorted (a full two-key sort costs more than the search).
  Returns (index i32 [Q, k], dist2 f32 [Q, k]), -1 / +inf where fewer than k qualify.
  """
  candidate, dist2 = np.asarray(candidate), np.asarray(dist2)
  kept = min(k, candidate.shape[1])
  index = np.full((candidate.shape[0], k), -1, np.int32)
  best = np.full((candidate.shape[0], k), np.inf, np.float32)
  index[:, :kept], best[:, :kept] = candidate[:, :kept], dist2[:, :kept]
  # Cheap screen first: a row can be out of order only where dist2 does not increase (equal
  # +inf tails included); the exact (dist2, index) test runs on those rows alone.
  rows = np.flatnonzero(np.any(dist2[:, 1:] <= dist2[:, :-1], axis=1))
  d, c = dist2[rows], candidate[rows]
  unordered = (d[:, 1:] < d[:, :-1]) | ((d[:, 1:] == d[:, :-1]) & (c[:, 1:] < c[:, :-1]))
  rows, d, c = (x[np.any(unordered, axis=1)] for x in (rows, d, c))
  if rows.size:
    order = np.lexsort((c, d), axis=-1)[:, :kept]
    index[rows, :kept] = np.take_along_axis(c, order, 1)
    best[rows, :kept] = np.take_along_axis(d, order, 1)
  index[~np.isfinite(best)] = -1
  return index, best


def knn_host(queries, keys, k, query_valid, key_valid, query_segment, key_segment,
             max_distance=None):
  """Exact kNN on the host: scipy's `cKDTree` (C++, every core) through `jax.pure_callback`.

  The fastest exact path on a CPU (`benchmarks/bench_knn.py`). The tree proposes k + slack
  candidates per query; their dist2 are computed here by XLA with the contract's formula
  (numpy's would differ in the last bit wherever XLA contracts to fused multiply-adds), and
  a second callback ranks them by (dist2, index). Ties at the k-th distance: the lower index
  among the tree's candidates. Under vmap the callbacks run once per scene. Arguments as
  `knn` (all given).
  """
  num_queries, count = queries.shape[0], min(k + _HOST_SLACK, keys.shape[0])
  candidate = jax.pure_callback(
      functools.partial(_host_candidates, count=count, max_distance=max_distance),
      jax.ShapeDtypeStruct((num_queries, count), jnp.int32),
      queries, keys, query_valid, key_valid, query_segment, key_segment,
      vmap_method="sequential")
  found = candidate != _NO_KEY
  dist2 = _squared_distance(queries[:, None, :], keys[jnp.where(found, candidate, 0)])
  if max_distance is not None:
    found &= dist2 < np.float32(max_distance) ** 2
  shapes = (jax.ShapeDtypeStruct((num_queries, k), jnp.int32),
            jax.ShapeDtypeStruct((num_queries, k), jnp.float32))
  return jax.pure_callback(functools.partial(_host_rank, k=k), shapes,
                           jnp.where(found, candidate, _NO_KEY),
                           jnp.where(found, dist2, jnp.inf), vmap_method="sequential")


# ----------------------------------------------------------------------------------------------
# Public op and reference.


def _is_concrete(x):
  return not isinstance(x, jax.core.Tracer)


def _check_inputs(queries, keys, k, query_valid, key_valid, query_segment, key_segment,
                  max_distance):
  """Validates shapes/dtypes (always) and finiteness of valid coordinates (eager inputs)."""
  for name, points in (("queries", queries), ("keys", keys)):
    if points.ndim != 2 or points.shape[1] != 3:
      raise ValueError(f"knn: {name} must be [N, 3] coordinates, got shape {points.shape}.")
    if not jnp.issubdtype(points.dtype, jnp.floating):
      raise ValueError(f"knn: {name} must be floating point, got {points.dtype}.")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"knn: k must be a positive Python int, got {k!r}.")
  if max_distance is not None and not (np.isfinite(max_distance) and max_distance > 0):
    raise ValueError(f"knn: max_distance must be a positive finite float or None, got "
                     f"{max_distance!r}.")
  if (query_segment is None) != (key_segment is None):
    raise ValueError("knn: pass both query_segment and key_segment, or neither.")
  for name, mask, n in (("query_valid", query_valid, queries.shape[0]),
                        ("key_valid", key_valid, keys.shape[0])):
    if mask is not None and (mask.shape != (n,) or mask.dtype != jnp.bool_):
      raise ValueError(f"knn: {name} must be bool [{n}], got {mask.dtype} {mask.shape}.")
  for name, segment, n in (("query_segment", query_segment, queries.shape[0]),
                           ("key_segment", key_segment, keys.shape[0])):
    if segment is not None and (segment.shape != (n,) or
                                not jnp.issubdtype(segment.dtype, jnp.integer)):
      raise ValueError(f"knn: {name} must be integer [{n}], got {segment.dtype} "
                       f"{segment.shape}.")
  for name, points, mask in (("queries", queries, query_valid), ("keys", keys, key_valid)):
    if _is_concrete(points) and (mask is None or _is_concrete(mask)):
      finite = np.isfinite(np.asarray(points)).all(axis=1)
      if mask is not None:
        finite |= ~np.asarray(mask)
      if not finite.all():
        raise ValueError(f"knn: {name} has non-finite coordinates at valid rows "
                         f"{np.flatnonzero(~finite)[:5].tolist()}...; fix them or mark them "
                         f"invalid.")


def _defaults(queries, keys, query_valid, key_valid, query_segment, key_segment):
  """Fills omitted masks (all valid) and segments (one segment): every path takes all five."""
  q_n, m_n = queries.shape[0], keys.shape[0]
  query_valid = jnp.ones(q_n, bool) if query_valid is None else query_valid
  key_valid = jnp.ones(m_n, bool) if key_valid is None else key_valid
  query_segment = (jnp.zeros(q_n, jnp.int32) if query_segment is None
                   else query_segment.astype(jnp.int32))
  key_segment = (jnp.zeros(m_n, jnp.int32) if key_segment is None
                 else key_segment.astype(jnp.int32))
  return (queries.astype(jnp.float32), keys.astype(jnp.float32), query_valid, key_valid,
          query_segment, key_segment)


@functools.partial(jax.jit, static_argnames=("k", "max_distance", "impl", "interpret"))
def _knn(queries, keys, query_valid, key_valid, query_segment, key_segment, *, k,
         max_distance, impl, interpret):
  args = (queries, keys, k, query_valid, key_valid, query_segment, key_segment, max_distance)
  if impl == "pallas":
    return knn_pallas(*args, interpret=interpret)
  if impl == "xla":
    return knn_xla(*args)
  if impl == "host":
    return knn_host(*args)
  return knn_reference(*args)


def resolve_impl(impl: str, num_queries: int | None = None) -> str:
  """kNN's `impl` -> "pallas" | "host" | "xla" | "reference".

  "auto": Pallas on a GPU. On a CPU, the host KD-tree (the fastest exact CPU path:
  `benchmarks/bench_knn.py`) for at least `HOST_MIN_QUERIES` queries per call (or an unknown
  count) in a process that sees one device; else the in-graph XLA search:
  * a program holding a host callback is never written to JAX's persistent compilation
    cache, and below that size the two paths cost the same (the demo's PointINS step, 2048-
    point views: 466 vs 480 ms), so small clouds keep their programs cacheable;
  * in a program sharded over several devices a host callback runs on one of them with the
    whole batch gathered to it (and cannot gather across processes).
  """
  resolved = dispatch.resolve_impl(impl, cpu="host", extra=("host",))
  if impl == "auto" and resolved == "host" and (
      jax.device_count() > 1 or (num_queries is not None and num_queries < HOST_MIN_QUERIES)):
    return "xla"
  return resolved


def knn(queries, keys, k, *, query_valid=None, key_valid=None, query_segment=None,
        key_segment=None, max_distance=None, impl="auto", interpret=False):
  """The k nearest keys of every query (see the module docstring for the exact contract).

  Args:
    queries: f32 [Q, 3] metres.
    keys: f32 [M, 3] metres.
    k: neighbours per query (static Python int; may exceed the number of qualifying keys).
    query_valid, key_valid: bool [Q] / [M]; default all valid. Invalid rows may hold anything.
    query_segment, key_segment: int [Q] / [M]; neighbours only within the same segment
      (e.g. scene or cluster id). Both or neither.
    max_distance: static float; only keys with distance < max_distance (strict) qualify.
    impl: "auto" (`resolve_impl`: Pallas on a GPU, mostly "host" on a CPU), "pallas", "xla"
      (in-graph search), "host" (scipy's cKDTree through a callback) or "reference".
    interpret: with impl="pallas", run the kernel in the Pallas interpreter (CPU tests).
  Returns:
    (index i32 [Q, k], dist2 f32 [Q, k]) ascending by dist2; -1 / +inf where fewer
    than k keys qualify. Works under jit and vmap (batched scenes); not differentiable.
  Raises:
    ValueError: bad shapes/dtypes/k/max_distance, or (for concrete inputs) non-finite
      coordinates at valid rows.
  """
  _check_inputs(queries, keys, k, query_valid, key_valid, query_segment, key_segment,
                max_distance)
  impl = resolve_impl(impl, queries.shape[0])
  return _knn(*_defaults(queries, keys, query_valid, key_valid, query_segment, key_segment),
              k=int(k), max_distance=None if max_distance is None else float(max_distance),
              impl=impl, interpret=interpret)


def knn_reference(queries, keys, k, query_valid=None, key_valid=None, query_segment=None,
                  key_segment=None, max_distance=None):
  """Brute force kNN with an [Q, M] distance matrix and `lax.top_k` (ties: lower index first).

  Returns (index i32 [Q, k], dist2 f32 [Q, k]) ascending; -1 / inf where fewer than k
  keys qualify.
  """
  queries, keys, query_valid, key_valid, query_segment, key_segment = _defaults(
      queries, keys, query_valid, key_valid, query_segment, key_segment)
  d2 = _squared_distance(queries[:, None, :], keys[None, :, :])
  ok = query_valid[:, None] & key_valid[None, :]
  ok &= query_segment[:, None] == key_segment[None, :]
  if max_distance is not None:
    ok &= d2 < np.float32(max_distance) ** 2
  d2 = jnp.where(ok, d2, jnp.inf)
  kk = min(k, keys.shape[0])
  neg, idx = lax.top_k(-d2, kk)
  idx, dist2 = _finish(-neg, idx)
  pad = ((0, 0), (0, k - kk))
  return (jnp.pad(idx, pad, constant_values=-1), jnp.pad(dist2, pad, constant_values=jnp.inf))
