"""patch_attention speed: reference vs XLA path vs Pallas kernel, same process.

  python -m benchmarks.bench_attention                 # production-like sizes
  python -m benchmarks.bench_attention --quick         # fewer, smaller sizes (< 1 min)
  python -m benchmarks.bench_attention --sweep-blocks  # GPU: also time Pallas block sizes
  python -m benchmarks.bench_attention --sweep-split   # CPU: the XLA path's work split

Shapes are [P patches, H heads, L = 1024, D = 16] (PTv3 patch attention). Random inputs with
~10% padded keys per patch. Model FLOPs: forward 4*P*H*L*L*D (two matmuls); forward+backward
3x that (backward: dV, dP, dQ, dK; recomputation not counted). "% mm" divides achieved
GFLOP/s by a plain jnp matmul's GFLOP/s in the same dtype, measured in this process.
Pallas runs only on a GPU (interpret mode is a correctness tool, not a speed path).

`--sweep-split` times the XLA path's loop (`patch_attention.xla_work_split`) at the
protocol's stage-0 shapes, forward+backward, interleaved: "every patch, 128 queries" is
the split used before 2026-12-05 (one loop step = 128 queries of all patches at once),
the others loop over groups of patches with blocks of about the given size.

`--base-tree DIR` times this tree's XLA path against `patch_attention_xla` of another
checkout (e.g. a git worktree of an older commit) at the same shapes, forward+backward,
interleaved in one process, gradients checked equal first.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from kernels import dispatch
from kernels import patch_attention as pa
from benchmarks.timing import interleaved_median_seconds
from benchmarks.timing import median_seconds

_PATCH_LEN, _HEAD_DIM = 1024, 16
_SIZES = {  # (gpu, quick) -> [(P, H)]
    (False, False): [(16, 4), (16, 8)],
    (False, True): [(4, 4)],
    (True, False): [(16, 4), (64, 8), (80, 32)],
    (True, True): [(16, 4), (80, 8)],
}
_SWEEP = [pa.BlockSizes(bq, bk, bq_bwd, bk_bwd, num_warps=warps)
          for bq, bk in ((64, 64), (128, 64), (128, 128))
          for bq_bwd, bk_bwd in ((32, 32), (64, 64), (64, 128), (128, 64))
          for warps in (4, 8)]


def matmul_gflops(dtype, repeats: int) -> float:
  """GFLOP/s of a square jnp matmul (4096 on a GPU, 1024 on a CPU)."""
  n = 4096 if dispatch.on_gpu() else 1024
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  return 2 * n**3 / median_seconds(lambda: matmul(a, a), repeats) / 1e9


def make_inputs(num_patches, num_heads, dtype):
  keys = jax.random.split(jax.random.key(1), 4)
  shape = (num_patches, num_heads, _PATCH_LEN, _HEAD_DIM)
  q, k, v = (jax.random.normal(key, shape, dtype) for key in keys[:3])
  num_valid = jax.random.randint(keys[3], (num_patches, 1), _PATCH_LEN * 8 // 10, _PATCH_LEN + 1)
  return q, k, v, jnp.arange(_PATCH_LEN)[None, :] < num_valid


def time_attention(attention, inputs, repeats):
  """Median seconds of the forward and of forward+backward (grads of q, k, v)."""
  q, k, v, key_valid = inputs
  forward = jax.jit(lambda q, k, v: attention(q, k, v, key_valid))
  grads = jax.jit(jax.grad(
      lambda q, k, v: jnp.sum(attention(q, k, v, key_valid).astype(jnp.float32)),
      argnums=(0, 1, 2)))
  return (median_seconds(lambda: forward(q, k, v), repeats),
          median_seconds(lambda: grads(q, k, v), repeats))


# [P, H, L] of the protocol's attention at stage 0: tiny at 80k (encoder and decoder) and
# the 46M model at 20k (encoder and decoder); D = 16.
_SPLIT_SHAPES = [(313, 1, 256), (313, 2, 256), (20, 2, 1024), (20, 4, 1024)]
# (label, block bytes, query chunk); None bytes = every patch in one step.
_SPLITS = [("every patch, 128 queries (before)", None, 128), ("2 MiB", 2 << 20, 256),
           ("8 MiB (default)", 8 << 20, 256), ("32 MiB", 32 << 20, 256)]


def split_rows(repeats):
  """(shape label, [fwd+bwd seconds per `_SPLITS` entry]) with equal gradients checked."""
  rows = []
  saved = pa._XLA_BLOCK_BYTES, pa._XLA_QUERY_CHUNK  # pylint: disable=protected-access
  for num_patches, num_heads, patch_len in _SPLIT_SHAPES:
    keys = jax.random.split(jax.random.key(2), 4)
    shape = (num_patches, num_heads, patch_len, _HEAD_DIM)
    q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
    key_valid = jax.random.uniform(keys[3], (num_patches, patch_len)) < 0.9
    fns, grads = [], []
    for _, block_bytes, chunk in _SPLITS:
      pa._XLA_BLOCK_BYTES = block_bytes or (1 << 62)  # pylint: disable=protected-access
      pa._XLA_QUERY_CHUNK = chunk  # pylint: disable=protected-access
      fn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(pa.patch_attention_xla(
          q, k, v, key_valid, _HEAD_DIM**-0.5))), argnums=(0, 1, 2)))
      grads.append(fn(q, k, v))  # traced now, under this split
      fns.append(lambda fn=fn: fn(q, k, v))
    pa._XLA_BLOCK_BYTES, pa._XLA_QUERY_CHUNK = saved  # pylint: disable=protected-access
    for got in grads[1:]:
      for a, b in zip(got, grads[0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    rows.append((f"{num_patches} x {num_heads} x {patch_len}",
                 interleaved_median_seconds(fns, repeats, settle_s=0.2)))
  return rows


def base_tree_rows(base_tree: str, repeats: int):
  """(shape label, [before s, now s]): `base_tree`'s XLA path against this tree's."""
  from benchmarks import ab_step  # pylint: disable=import-outside-toplevel
  before = ab_step.base_module(base_tree, "kernels.patch_attention")
  rows = []
  for num_patches, num_heads, patch_len in _SPLIT_SHAPES:
    keys = jax.random.split(jax.random.key(2), 4)
    shape = (num_patches, num_heads, patch_len, _HEAD_DIM)
    q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
    key_valid = jax.random.uniform(keys[3], (num_patches, patch_len)) < 0.9
    fns = [jax.jit(jax.grad(lambda q, k, v, m=module: jnp.sum(jnp.sin(m.patch_attention_xla(
        q, k, v, key_valid, _HEAD_DIM**-0.5))), argnums=(0, 1, 2))) for module in (before, pa)]
    for a, b in zip(fns[0](q, k, v), fns[1](q, k, v)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    rows.append((f"{num_patches} x {num_heads} x {patch_len}", interleaved_median_seconds(
        [lambda fn=fn: fn(q, k, v) for fn in fns], repeats, settle_s=0.2)))
  return rows


def impls():
  named = {name: (lambda q, k, v, m, name=name: pa.patch_attention(q, k, v, m, impl=name))
           for name in ("reference", "xla")}
  if dispatch.on_gpu():
    named["pallas"] = lambda q, k, v, m: pa.patch_attention(q, k, v, m, impl="pallas")
  return named


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer, smaller sizes; 3 repeats")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--sweep-split", action="store_true",
                      help="CPU: time the XLA path's work splits at the protocol's shapes")
  parser.add_argument("--sweep-blocks", action="store_true",
                      help="GPU only: time Pallas BlockSizes candidates at the largest size")
  parser.add_argument("--base-tree", default="",
                      help="CPU: time the XLA path against this checkout's")
  args = parser.parse_args()
  gpu = dispatch.on_gpu()
  repeats = 3 if args.quick else args.repeats
  if args.base_tree:
    print(f"XLA path, forward+backward ms, medians of {repeats}, interleaved")
    print(f"| P x H x L | {args.base_tree} | this tree | before / now |\n|---|---|---|---|")
    for label, (before, now) in base_tree_rows(args.base_tree, repeats):
      print(f"| {label} | {before * 1e3:.1f} | {now * 1e3:.1f} | {before / now:.2f}x |",
            flush=True)
    return
  if args.sweep_split:
    print(f"XLA path, forward+backward ms, medians of {repeats}, interleaved")
    print("| P x H x L | " + " | ".join(label for label, _, _ in _SPLITS) + " | before / default |")
    print("|---|" + "---|" * (len(_SPLITS) + 1))
    for label, seconds in split_rows(repeats):
      print(f"| {label} | " + " | ".join(f"{t * 1e3:.1f}" for t in seconds)
            + f" | {seconds[0] / seconds[2]:.2f}x |", flush=True)
    return
  dtypes = (jnp.float32, jnp.bfloat16) if gpu else (jnp.float32,)
  peak = {dtype: matmul_gflops(dtype, repeats) for dtype in dtypes}

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); L={_PATCH_LEN}, "
        f"D={_HEAD_DIM}, median of {repeats}; matmul peak: "
        + ", ".join(f"{jnp.dtype(d).name} {g:.0f} GFLOP/s" for d, g in peak.items()))
  print("| dtype | P x H | impl | fwd ms | fwd GFLOP/s | fwd % mm | fwd vs ref "
        "| fwd+bwd ms | fwd+bwd GFLOP/s | fwd+bwd % mm | fwd+bwd vs ref |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for dtype in dtypes:
    for num_patches, num_heads in _SIZES[(gpu, args.quick)]:
      inputs = make_inputs(num_patches, num_heads, dtype)
      flops = 4 * num_patches * num_heads * _PATCH_LEN**2 * _HEAD_DIM
      baseline = None
      for name, attention in impls().items():
        fwd_s, grad_s = time_attention(attention, inputs, repeats)
        baseline = baseline or (fwd_s, grad_s)
        cells = []
        for seconds, work, base in ((fwd_s, flops, baseline[0]), (grad_s, 3 * flops, baseline[1])):
          gflops = work / seconds / 1e9
          cells += [f"{seconds * 1e3:.2f}", f"{gflops:.0f}", f"{100 * gflops / peak[dtype]:.1f}",
                    f"{base / seconds:.2f}x"]
        print(f"| {jnp.dtype(dtype).name} | {num_patches} x {num_heads} | {name} | "
              + " | ".join(cells) + " |", flush=True)

  if args.sweep_blocks and gpu:
    num_patches, num_heads = _SIZES[(gpu, args.quick)][-1]
    print(f"\nPallas block sizes at P x H = {num_patches} x {num_heads}, bfloat16:")
    print("| block_q | block_k | block_q_bwd | block_k_bwd | warps | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|")
    inputs = make_inputs(num_patches, num_heads, jnp.bfloat16)
    for blocks in _SWEEP:
      attention = lambda q, k, v, m, b=blocks: pa.flash_patch_attention(
          q, k, v, m, scale=_HEAD_DIM**-0.5, block_sizes=b)
      fwd_s, grad_s = time_attention(attention, inputs, repeats)
      print(f"| {blocks.block_q} | {blocks.block_k} | {blocks.block_q_bwd} | "
            f"{blocks.block_k_bwd} | {blocks.num_warps} | {fwd_s * 1e3:.3f} | "
            f"{grad_s * 1e3:.3f} |", flush=True)


if __name__ == "__main__":
  main()
