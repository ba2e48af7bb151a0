"""Serialized patch attention: Pallas flash-attention kernel, XLA path, jnp reference, dispatch.

PTv3 attends within patches of L consecutive points of a serialization order, so attention is
dense over `[P, H, L, D]` (P patches, H heads, L points per patch, D = 16 head dims) with a
key-padding mask for patches of clouds smaller than L. The Pallas kernel follows
`jax.experimental.pallas.ops.gpu.attention` (FlashAttention-2, Triton lowering): the grid covers
(patch * head, query block), keys are streamed block by block with an online softmax in f32, and
reverse mode runs its own dK/dV and dQ kernels through `jax.custom_vjp`.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
import jax.numpy as jnp
import numpy as np

from kernels import dispatch

# Finite stand-in for -inf on masked logits: keeps `m_prev - m_next` finite in the online
# softmax when a whole key block (or patch) is padding. Masked probabilities are zeroed
# explicitly, so the value never reaches the output.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_LOG2_E = math.log2(math.e)
# Triton's `dot` needs every operand dimension >= 16.
_MIN_BLOCK = 16
_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
# The XLA path's work split (`xla_work_split`): queries per chunk, and the bytes of one loop
# step's [G, H, C, L] logits. At [313, 1-2, 256, 16] and [20, 2-4, 1024, 16] on the 2-core
# CPU, 4-8 MiB steps (patch groups) ran forward+backward 1.2-1.8x faster than one chunk of
# 128 queries of every patch per step (whose 40-80 MiB blocks leave the cache), and 16 MiB
# steps 1.2-2x slower again (benchmarks/bench_attention.py).
_XLA_QUERY_CHUNK = 256
_XLA_BLOCK_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class BlockSizes:
  """Tile sizes of the Pallas kernels (powers of two >= 16; clipped to the patch length).

  Defaults are the fastest of `python -m benchmarks.bench_attention --sweep-blocks` on an H100
  at [80, 32, 1024, 16] bf16 (fwd 2.5 ms, fwd+bwd 7.9 ms; 32-blocks backward: 11.2 ms).

  Attributes:
    block_q: queries per program of the forward kernel.
    block_k: keys per inner-loop step of the forward kernel.
    block_q_bwd: queries per program of the dQ kernel and per loop step of the dK/dV kernel.
    block_k_bwd: keys per program of the dK/dV kernel and per loop step of the dQ kernel.
    num_warps: Triton warps per program.
    num_stages: Triton software-pipelining stages.
  """
  block_q: int = 64
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
      size = getattr(self, name)
      if size < _MIN_BLOCK or size & (size - 1):
        raise ValueError(f"BlockSizes.{name}={size} must be a power of two >= {_MIN_BLOCK}.")

  def fit(self, patch_len: int) -> BlockSizes:
    """Clips every block to the smallest power of two >= max(patch_len, 16)."""
    cap = max(_MIN_BLOCK, pl.next_power_of_2(patch_len))
    return dataclasses.replace(
        self, block_q=min(self.block_q, cap), block_k=min(self.block_k, cap),
        block_q_bwd=min(self.block_q_bwd, cap), block_k_bwd=min(self.block_k_bwd, cap))

  @property
  def largest(self) -> int:
    return max(self.block_q, self.block_k, self.block_q_bwd, self.block_k_bwd)


def _compiler_params(blocks: BlockSizes):
  # Explicit Triton params: without them jax 0.10.2 lowers pallas_call to Mosaic GPU.
  return pltriton.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


def _scaled_logits(q, k, key_valid, scale):
  """[bq, D] x [bk, D] -> [bq, bk] f32 logits in log2 units; masked keys at _MASK_VALUE."""
  # exp2 is Triton's native exponential: e^x = 2^(x log2 e).
  s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * (scale * _LOG2_E)
  return jnp.where(key_valid[None, :], s, _MASK_VALUE)


def _forward_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, *, scale, block_k):
  """One (patch * head, query block) program: FlashAttention-2 forward (its algorithm 1).

  Refs: q [bq, D], k/v [Lp, D], valid i32 [Lp], o [bq, D], lse f32 [bq] (log2 units).
  """
  q = q_ref[...]
  block_q, head_dim = q.shape

  def body(step, carry):
    acc, m_prev, l_prev = carry
    keys = pl.ds(step * block_k, block_k)
    key_valid = valid_ref[keys] != 0
    s = _scaled_logits(q, k_ref[keys, :], key_valid, scale)
    m_next = jnp.maximum(m_prev, jnp.max(s, axis=-1))
    correction = jnp.exp2(m_prev - m_next)
    # The select (not just the mask value) zeroes a fully padded patch, whose max is the
    # mask value itself.
    p = jnp.where(key_valid[None, :], jnp.exp2(s - m_next[:, None]), 0.0)
    l_next = correction * l_prev + jnp.sum(p, axis=-1)
    v = v_ref[keys, :]
    acc = correction[:, None] * acc + jnp.dot(
        p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return acc, m_next, l_next

  init = (jnp.zeros((block_q, head_dim), jnp.float32),
          jnp.full((block_q,), _MASK_VALUE, jnp.float32),
          jnp.zeros((block_q,), jnp.float32))
  acc, m, l = lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  # l == 0 only for queries of a fully padded patch: their output is zero.
  l = jnp.where(l > 0.0, l, 1.0)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _dkdv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                 scale, block_q):
  """One (patch * head, key block) program: dK, dV summed over query blocks.

  Refs: q/do [Lp, D], k/v/dk/dv [bk, D], valid i32 [bk], lse/delta f32 [Lp].
  """
  k = k_ref[...]
  v = v_ref[...]
  key_valid = valid_ref[...] != 0

  def body(step, carry):
    dk, dv = carry
    queries = pl.ds(step * block_q, block_q)
    q = q_ref[queries, :]
    do = do_ref[queries, :]
    s = _scaled_logits(q, k, key_valid, scale)
    p = jnp.where(key_valid[None, :], jnp.exp2(s - lse_ref[queries][:, None]), 0.0)
    dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
    dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta_ref[queries][:, None])
    dk = dk + jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, body, (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dq_ref, *, scale,
               block_k):
  """One (patch * head, query block) program: dQ summed over key blocks.

  Refs: q/do/dq [bq, D], k/v [Lp, D], valid i32 [Lp], lse/delta f32 [bq].
  """
  q = q_ref[...]
  do = do_ref[...]
  lse = lse_ref[...]
  delta = delta_ref[...]

  def body(step, dq):
    keys = pl.ds(step * block_k, block_k)
    key_valid = valid_ref[keys] != 0
    k = k_ref[keys, :]
    s = _scaled_logits(q, k, key_valid, scale)
    p = jnp.where(key_valid[None, :], jnp.exp2(s - lse[:, None]), 0.0)
    dp = jnp.dot(do, v_ref[keys, :].T, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[:, None])
    return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32)

  dq = lax.fori_loop(0, k_ref.shape[0] // block_k, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _block_specs(head_dim, rows_per_block):
  """Per-program BlockSpecs on a grid (patch * head, block): [PH, Lp, D] and [PH, Lp] rows."""
  return (pl.BlockSpec((None, rows_per_block, head_dim), lambda ph, i: (ph, i, 0)),
          pl.BlockSpec((None, rows_per_block), lambda ph, i: (ph, i)))


def _whole_patch_specs(num_heads, seq_len, head_dim):
  """Whole-patch BlockSpecs: [PH, Lp, D] rows, [PH, Lp] f32 rows, key mask i32 [P, Lp]."""
  return (pl.BlockSpec((None, seq_len, head_dim), lambda ph, i: (ph, 0, 0)),
          pl.BlockSpec((None, seq_len), lambda ph, i: (ph, 0)),
          pl.BlockSpec((None, seq_len), lambda ph, i: (ph // num_heads, 0)))


def _flash_forward_call(q, k, v, valid, num_heads, scale, blocks, interpret):
  """Runs the forward kernel on padded [PH, Lp, D] inputs; returns (out, lse f32 [PH, Lp])."""
  num_rows, seq_len, head_dim = q.shape
  q_spec, lse_spec = _block_specs(head_dim, blocks.block_q)
  kv_spec, _, valid_spec = _whole_patch_specs(num_heads, seq_len, head_dim)
  return pl.pallas_call(
      functools.partial(_forward_kernel, scale=scale, block_k=blocks.block_k),
      grid=(num_rows, seq_len // blocks.block_q),
      in_specs=[q_spec, kv_spec, kv_spec, valid_spec],
      out_specs=[q_spec, lse_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((num_rows, seq_len), jnp.float32)],
      compiler_params=_compiler_params(blocks),
      interpret=interpret,
      name="patch_attention_forward",
  )(q, k, v, valid)


def _flash_backward_calls(q, k, v, valid, do, lse, delta, num_heads, scale, blocks, interpret):
  """Runs the dK/dV and dQ kernels on padded [PH, Lp, D] inputs; returns (dq, dk, dv)."""
  num_rows, seq_len, head_dim = q.shape
  full_spec, full_row_spec, full_valid_spec = _whole_patch_specs(num_heads, seq_len, head_dim)
  inputs = (q, k, v, valid, do, lse, delta)

  k_spec, _ = _block_specs(head_dim, blocks.block_k_bwd)
  k_valid_spec = pl.BlockSpec((None, blocks.block_k_bwd), lambda ph, i: (ph // num_heads, i))
  dk, dv = pl.pallas_call(
      functools.partial(_dkdv_kernel, scale=scale, block_q=blocks.block_q_bwd),
      grid=(num_rows, seq_len // blocks.block_k_bwd),
      in_specs=[full_spec, k_spec, k_spec, k_valid_spec, full_spec, full_row_spec,
                full_row_spec],
      out_specs=[k_spec, k_spec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_compiler_params(blocks),
      interpret=interpret,
      name="patch_attention_dkdv",
  )(*inputs)

  q_spec, q_row_spec = _block_specs(head_dim, blocks.block_q_bwd)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale, block_k=blocks.block_k_bwd),
      grid=(num_rows, seq_len // blocks.block_q_bwd),
      in_specs=[q_spec, full_spec, full_spec, full_valid_spec, q_spec, q_row_spec, q_row_spec],
      out_specs=q_spec,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_compiler_params(blocks),
      interpret=interpret,
      name="patch_attention_dq",
  )(*inputs)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, valid, num_heads, scale, blocks, interpret):
  """Flash attention on padded inputs q/k/v [PH, Lp, D], valid i32 [P, Lp]."""
  return _flash_forward_call(q, k, v, valid, num_heads, scale, blocks, interpret)[0]


def _flash_fwd(q, k, v, valid, num_heads, scale, blocks, interpret):
  out, lse = _flash_forward_call(q, k, v, valid, num_heads, scale, blocks, interpret)
  return out, (q, k, v, valid, out, lse)


def _flash_bwd(num_heads, scale, blocks, interpret, residuals, do):
  q, k, v, valid, out, lse = residuals
  # FlashAttention-2 backward preprocessing: delta_i = dO_i . O_i. XLA fuses this elementwise
  # product and row sum at memory bandwidth, so it needs no kernel of its own.
  delta = jnp.sum(do.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  dq, dk, dv = _flash_backward_calls(q, k, v, valid, do, lse, delta, num_heads, scale, blocks,
                                     interpret)
  return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_patch_attention(q, k, v, key_valid, *, scale, block_sizes=BlockSizes(),
                          interpret=False):
  """Pallas (Triton) flash attention within patches; differentiable in q, k, v.

  Args:
    q, k, v: [P, H, L, D] f32 or bf16 (one dtype); any L (padded here to whole blocks).
    key_valid: bool [P, L].
    scale: logit scale (Python float).
    block_sizes: kernel tiles, clipped to the patch length.
    interpret: run the kernel bodies with the Pallas interpreter (CPU tests).
  Returns:
    [P, H, L, D] in q.dtype.
  """
  num_patches, num_heads, patch_len, head_dim = q.shape
  blocks = block_sizes.fit(patch_len)
  # A ragged last tile is padded with invalid keys (and dummy queries sliced off below).
  padded_len = -(-patch_len // blocks.largest) * blocks.largest
  pad = padded_len - patch_len

  def rows(x):  # [P, H, L, D] -> [P * H, Lp, D]; the merge of P and H is free.
    x = jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
    return x.reshape(num_patches * num_heads, padded_len, head_dim)

  # The mask travels as i32 (a plain 32-bit Triton load) rather than as a bool ref.
  valid = jnp.pad(key_valid, ((0, 0), (0, pad))).astype(jnp.int32)
  out = _flash(rows(q), rows(k), rows(v), valid, num_heads, float(scale), blocks, interpret)
  return out.reshape(num_patches, num_heads, padded_len, head_dim)[:, :, :patch_len]


def _chunk_logits(q, k, key_valid, scale):
  """f32 q [G, H, C, D] (a chunk of queries) against all keys, key_valid [G, H, L] ->
  masked logits [G, H, C, L]."""
  logits = jnp.einsum("phqd,phkd->phqk", q, k) * scale
  return jnp.where(key_valid[:, :, None, :], logits, _MASK_VALUE)


def _chunk_forward(q, k, v, key_valid, scale):
  """One query chunk of a patch group: (out [G, H, C, D], logsumexp [G, H, C])."""
  logits = _chunk_logits(q, k, key_valid, scale)
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - m)
  l = jnp.sum(p, axis=-1, keepdims=True)
  # Normalising after the second matmul divides [C, D] instead of [C, L] values.
  return jnp.einsum("phqk,phkd->phqd", p, v) / l, (m + jnp.log(l))[..., 0]


def _chunk_backward(q, k, v, key_valid, o, lse, do, scale):
  """FlashAttention-2's backward for one query chunk: (dq [G, H, C, D], dk, dv [G, H, L, D]).

  Key-major: P^T and dS^T are built as [G, H, L, C], so dV = P^T dO and dK = dS^T Q
  contract their operands' minor axes. XLA:CPU runs a matmul that contracts the major axis
  of its left operand (P's query axis) outside its fast dot library, and the two of them
  were half of the attention backward; key-major, the backward of one chunk ran 1.2-1.4x
  faster from [16, 2, 256, 256, 16] to [2, 4, 256, 1024, 16] (docs/performance.md).
  dQ = dS K needs dS query-major: its transpose is copied out once (an optimization
  barrier, or XLA folds the transpose back into a slow dot), 1.05-1.28x faster forward +
  backward at the protocol's stage-0 shapes than contracting dS^T's key axis in place.
  """
  valid = key_valid[..., None]  # [G, H, L, 1]
  p_t = jnp.where(valid, jnp.exp(jnp.einsum("phkd,phqd->phkq", k, q) * scale
                                 - lse[:, :, None, :]), 0.0)
  dv = jnp.einsum("phkq,phqd->phkd", p_t, do)
  dp_t = jnp.einsum("phkd,phqd->phkq", v, do)
  ds_t = p_t * (dp_t - jnp.sum(do * o, axis=-1)[:, :, None, :]) * scale
  ds = jax.lax.optimization_barrier(jnp.swapaxes(ds_t, 2, 3))
  dq = jnp.einsum("phqk,phkd->phqd", ds, k)
  return dq, jnp.einsum("phkq,phqd->phkd", ds_t, q), dv


def _query_chunks(x, chunk):
  """[G, H, Lq, ...] -> [Lq / chunk, G, H, chunk, ...] (the loop axis first)."""
  shape = x.shape
  x = x.reshape(shape[:2] + (shape[2] // chunk, chunk) + shape[3:])
  return jnp.moveaxis(x, 2, 0)


def _merge_query_chunks(x):
  """Inverse of `_query_chunks`."""
  x = jnp.moveaxis(x, 0, 2)
  return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])


def _group_forward(q, k, v, key_valid, scale, chunk):
  """One patch group (q [G, H, Lq, D], k/v [G, H, L, D]): (out [G, H, Lq, D], lse [G, H, Lq])."""
  if q.shape[2] == chunk:
    return _chunk_forward(q, k, v, key_valid, scale)
  out, lse = lax.map(lambda qc: _chunk_forward(qc, k, v, key_valid, scale),
                     _query_chunks(q, chunk))
  return _merge_query_chunks(out), _merge_query_chunks(lse)


def _group_backward(q, k, v, key_valid, o, lse, do, scale, chunk):
  """One patch group's (dq, dk, dv); dK and dV accumulate over its query chunks."""
  if q.shape[2] == chunk:
    return _chunk_backward(q, k, v, key_valid, o, lse, do, scale)

  def step(carry, xs):
    dq, dk, dv = _chunk_backward(xs[0], k, v, key_valid, xs[1], xs[2], xs[3], scale)
    return (carry[0] + dk, carry[1] + dv), dq

  chunks = tuple(_query_chunks(x, chunk) for x in (q, o, lse, do))
  (dk, dv), dq = lax.scan(step, (jnp.zeros_like(k), jnp.zeros_like(v)), chunks)
  return _merge_query_chunks(dq), dk, dv


def _map_groups(fn, *xs):
  """`fn` over the leading patch-group axis; no loop for a single group."""
  if xs[0].shape[0] == 1:
    return jax.tree.map(lambda y: y[None], fn(*(x[0] for x in xs)))
  return lax.map(lambda args: fn(*args), xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _xla_attention(q, k, v, key_valid, scale, chunk):
  return _xla_attention_fwd(q, k, v, key_valid, scale, chunk)[0]


def _xla_attention_fwd(q, k, v, key_valid, scale, chunk):
  """q [n, G, H, Lq, D], k/v [n, G, H, L, D], key_valid [n, G, H, L]: n groups of G patches."""
  out, lse = _map_groups(lambda *a: _group_forward(*a, scale, chunk), q, k, v, key_valid)
  return out, (q, k, v, key_valid, out, lse)


def _xla_attention_bwd(scale, chunk, residuals, d_out):
  """FlashAttention-2's backward in XLA: per query chunk, recompute P from the saved
  logsumexp, then dV += P^T dO, dS = P (dO V^T - rowsum(dO O)), dQ = dS K, dK += dS^T Q.
  Only O and the logsumexp are kept from the forward pass, never the [C, L] probabilities
  of every chunk, and no softmax is differentiated op by op."""
  q, k, v, key_valid, out, lse = residuals
  dq, dk, dv = _map_groups(lambda *a: _group_backward(*a, scale, chunk),
                           q, k, v, key_valid, out, lse, d_out)
  return dq, dk, dv, None


_xla_attention.defvjp(_xla_attention_fwd, _xla_attention_bwd)


def xla_work_split(num_patches: int, num_heads: int, patch_len: int) -> tuple[int, int]:
  """(patches per loop step G, queries per chunk C) of the XLA path.

  One step's [G, H, C, L] logit block is about `_XLA_BLOCK_BYTES` (so it and its
  probabilities stay in cache); the G are balanced so that padding the patch axis to a
  multiple of G adds fewer patches than there are steps.
  """
  chunk = min(_XLA_QUERY_CHUNK, patch_len)
  block = num_heads * chunk * patch_len * 4
  most = max(1, min(num_patches, _XLA_BLOCK_BYTES // block))
  steps = -(-num_patches // most)
  return -(-num_patches // steps), chunk


def patch_attention_xla(q, k, v, key_valid, scale):
  """Fastest exact XLA formulation (the CPU path); same contract as the reference.

  A loop over groups of G patches, each attending in chunks of C queries, so that every
  step's [G, H, C, L] logits stay cache-resident (`xla_work_split`); reverse mode is
  FlashAttention-2's backward (`_xla_attention_bwd`) rather than autodiff of the softmax.
  Looping over whole patches rather than over query chunks of every patch at once also
  means a patch's dK and dV are summed inside its own step (benchmarks/bench_attention).
  """
  num_patches, num_heads, patch_len, head_dim = q.shape
  dtype = q.dtype
  group, chunk = xla_work_split(num_patches, num_heads, patch_len)
  if jax.device_count() > 1:
    # The patch axis is sharded over the devices in data-parallel steps; a loop over
    # groups of it would make GSPMD gather every patch to every device. One group keeps
    # each loop step (a chunk of queries of every patch) sharded.
    group = num_patches
  # With one head XLA drops the degenerate head axis, and the backward's matmuls then ran
  # about 3x slower ([32, 1, 256, 256, 16]: 28 ms, as [16, 2, ...]: 9 ms). Patches are
  # independent, so single-head attention runs pairs of patches as the two heads of one.
  fold = 2 if num_heads == 1 and group > 1 else 1
  group = -(-group // fold) * fold
  num_groups = -(-num_patches // group)
  query_len = -(-patch_len // chunk) * chunk  # dummy queries fill a ragged last chunk
  patch_pad = num_groups * group - num_patches  # dummy patches (no valid key) fill the last group
  head_valid = jnp.broadcast_to(key_valid[:, None, :], (num_patches, num_heads, patch_len))

  def grouped(x, length_pad=0):  # [P, H, L, ...] -> [n, G / fold, H * fold, L (+ pad), ...]
    pad = ((0, patch_pad), (0, 0), (0, length_pad)) + ((0, 0),) * (x.ndim - 3)
    x = jnp.pad(x.astype(jnp.float32) if x.ndim == 4 else x, pad)
    return x.reshape((num_groups, group // fold, num_heads * fold) + x.shape[2:])

  out = _xla_attention(grouped(q, query_len - patch_len), grouped(k), grouped(v),
                       grouped(head_valid), float(scale), chunk)
  out = out.reshape((num_groups * group, num_heads) + out.shape[3:])[:num_patches, :, :patch_len]
  # A fully padded patch softmaxes uniformly over its mask values; its output is defined as 0.
  has_key = jnp.any(key_valid, axis=-1)[:, None, None, None]
  return jnp.where(has_key, out, 0.0).astype(dtype)


def _check_inputs(q, k, v, key_valid, scale):
  if q.ndim != 4:
    raise ValueError(f"patch_attention: q must be [P, H, L, D], got shape {q.shape}.")
  if k.shape != q.shape or v.shape != q.shape:
    raise ValueError(f"patch_attention: q, k, v shapes must match, got {q.shape}, {k.shape}, "
                     f"{v.shape}.")
  if jnp.dtype(q.dtype) not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
    raise ValueError(f"patch_attention: q, k, v must share one dtype of float32/bfloat16, got "
                     f"{q.dtype}, {k.dtype}, {v.dtype}; cast them first.")
  num_patches, _, patch_len, _ = q.shape
  if key_valid.shape != (num_patches, patch_len) or key_valid.dtype != jnp.bool_:
    raise ValueError(f"patch_attention: key_valid must be bool [P, L] = {(num_patches, patch_len)}"
                     f", got {key_valid.dtype} {key_valid.shape}.")
  if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
    raise ValueError(f"patch_attention: scale must be a positive finite Python float, got "
                     f"{scale!r}.")


@functools.partial(jax.jit, static_argnames=("scale", "impl", "interpret"))
def patch_attention(q, k, v, key_valid, *, scale=None, impl="auto", interpret=False):
  """Softmax attention within each patch, with a key-padding mask.

  Args:
    q, k, v: [P, H, L, D] (P patches, H heads, L points per patch, D head dims), f32 or bf16.
    key_valid: bool [P, L]; invalid keys get zero weight. Queries of a patch without any
      valid key return zeros (and zero gradients).
    scale: logit scale (static), default D ** -0.5.
    impl: "auto" (Pallas on a GPU, XLA elsewhere), "pallas", "xla" or "reference".
    interpret: with impl="pallas", run the kernels in the Pallas interpreter (CPU tests).
  Returns:
    [P, H, L, D] in q.dtype; f32 accumulation throughout.
  """
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  _check_inputs(q, k, v, key_valid, scale)
  impl = dispatch.resolve_impl(impl)
  if impl == "pallas":
    return flash_patch_attention(q, k, v, key_valid, scale=scale, interpret=interpret)
  if impl == "xla":
    return patch_attention_xla(q, k, v, key_valid, scale)
  return patch_attention_reference(q, k, v, key_valid, scale)


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
