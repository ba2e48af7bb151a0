"""PTv3 step time: forward and forward+backward of the tiny and base encoders, same process.

  python -m benchmarks.bench_model                    # tiny and base at 20k and 80k points
  python -m benchmarks.bench_model --quick            # 4k and 8k points, 2 repeats
  python -m benchmarks.bench_model --skip-base-80k-backward   # CPU: the slowest cell

One scene per step (B = 1), ~97% real points on the floor and walls of a room at 2 cm cells.
Points/s counts real points. The baseline column is the tiny model at the same size. The
attention table times `patch_attention` (impl 'auto') at the base model's per-stage shapes
[P, H, L, D] and divides its GFLOP/s (4*P*H*L*L*D forward) by a plain jnp matmul's.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from kernels import patch_attention as pa
from pointins_jax.model import configs
from pointins_jax.model import ptv3
from benchmarks.timing import median_seconds

_GRID_SIZE = 0.02  # metres


def room_scene(n_points: int, in_channels: int, seed: int = 0):
  """One padded scene: ~97% of n_points real points, one per cell on three room faces."""
  rng = np.random.default_rng(seed)
  n_real = int(n_points * 0.97)
  side = np.sqrt(n_real / 3.0) * _GRID_SIZE * 1.3
  u, v = rng.random((2, 4 * n_real)) * side
  face = rng.integers(0, 3, 4 * n_real)[:, None]
  zero = np.zeros_like(u)
  xyz = np.where(face == 0, np.stack([u, v, zero], 1),
                 np.where(face == 1, np.stack([u, zero, v], 1), np.stack([zero, u, v], 1)))
  _, first = np.unique(np.floor(xyz / _GRID_SIZE).astype(np.int32), axis=0, return_index=True)
  xyz = xyz[rng.permutation(first)[:n_real]].astype(np.float32)
  pad = n_points - len(xyz)
  coord = np.concatenate([xyz, np.zeros((pad, 3), np.float32)])[None]
  grid = np.floor(coord / _GRID_SIZE).astype(np.int32)
  feat = np.concatenate([coord, rng.random((1, n_points, in_channels - 3))], -1)
  valid = (np.arange(n_points) < len(xyz))[None]
  return coord, feat.astype(np.float32), grid, valid


def time_model(variant: str, n_points: int, repeats: int, backward: bool):
  """Median seconds of the forward (eval) and forward+backward (train) steps."""
  config = configs.model_config(variant)
  model = ptv3.PointTransformerV3(config)
  coord, feat, grid, valid = map(jnp.asarray, room_scene(n_points, config.in_channels))
  rngs = {"dropout": jax.random.key(1), "order": jax.random.key(2)}
  # Inputs are jit arguments, not closed-over constants: XLA would constant-fold the sorts.
  inputs = (coord, feat, grid, valid)
  params = jax.jit(lambda *x: model.init(jax.random.key(0), *x, train=False))(*inputs)["params"]
  forward = jax.jit(lambda p, x: model.apply({"params": p}, *x, train=False, rngs=rngs)[0])

  def loss(p, x):
    return jnp.mean(model.apply({"params": p}, *x, train=True, rngs=rngs)[0] ** 2)

  grad = jax.jit(jax.grad(loss))
  fwd = median_seconds(lambda: forward(params, inputs), repeats)
  bwd = median_seconds(lambda: grad(params, inputs), repeats) if backward else float("nan")
  return fwd, bwd, int(valid.sum())


def matmul_gflops(repeats: int) -> float:
  n = 1024
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return 2 * n**3 / median_seconds(lambda: matmul(a, a), repeats) / 1e9


def attention_rows(n_points: int, repeats: int, peak: float):
  config = configs.model_config("base")
  rows = []
  for s, capacity in enumerate(configs.stage_capacities(config, n_points)):
    length = configs.patch_length(capacity, config.enc_patch_size[s])
    shape = (capacity // length, config.enc_num_head[s], length, 16)
    q, k, v = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(s), 3))
    key_valid = jnp.ones(shape[:1] + shape[2:3], bool)
    fn = jax.jit(lambda q, k, v, m: pa.patch_attention(q, k, v, m))
    seconds = median_seconds(lambda: fn(q, k, v, key_valid), repeats)
    gflops = 4 * np.prod(shape) * length / seconds / 1e9
    rows.append((s, shape, seconds, gflops, gflops / peak))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="4k and 8k points, 2 repeats")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-base-80k-backward", action="store_true",
                      help="skip base forward+backward at the largest size (slow on CPU)")
  args = parser.parse_args()
  repeats = 2 if args.quick else args.repeats
  sizes = (4096, 8192) if args.quick else (20480, 81920)
  peak = matmul_gflops(repeats)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); B=1; median of "
        f"{repeats}; f32 matmul 1024^3: {peak:.0f} GFLOP/s")
  print("| model | N | real pts | fwd ms | fwd pts/s | fwd vs tiny | fwd+bwd ms | "
        "fwd+bwd pts/s | fwd+bwd vs tiny |")
  print("|---|---|---|---|---|---|---|---|---|")
  for n_points in sizes:
    baseline = None
    for variant in ("tiny", "base"):
      backward = not (args.skip_base_80k_backward and variant == "base" and n_points == sizes[-1])
      fwd, bwd, real = time_model(variant, n_points, repeats, backward)
      baseline = baseline or (fwd, bwd)
      print(f"| {variant} | {n_points} | {real} | {fwd * 1e3:.0f} | {real / fwd:,.0f} | "
            f"{baseline[0] / fwd:.2f}x | {bwd * 1e3:.0f} | {real / bwd:,.0f} | "
            f"{baseline[1] / bwd:.2f}x |", flush=True)
  print(f"\nattention (impl 'auto') at the base model's stage shapes, N={sizes[0]}:")
  print("| stage | [P, H, L, D] | fwd ms | GFLOP/s | fraction of matmul |")
  print("|---|---|---|---|---|")
  for s, shape, seconds, gflops, fraction in attention_rows(sizes[0], repeats, peak):
    print(f"| {s} | {list(shape)} | {seconds * 1e3:.2f} | {gflops:.1f} | {fraction:.2f} |",
          flush=True)


if __name__ == "__main__":
  main()
