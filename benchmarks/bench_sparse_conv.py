"""Submanifold sparse conv formulations on a real neighbour table, same process.

  python -m benchmarks.bench_sparse_conv              # 20k-point protocol room, C = 16, 32, 64
  python -m benchmarks.bench_sparse_conv --points 80000 --repeats 3

Times forward and forward+backward (gradients of features and kernel) of
`sparse_conv.sparse_conv` (missing neighbours read a zero row) against the masked-select
baseline it replaced (gather with clamped ids, then a select over [N, 27, C]). Both compute
the same numbers; the table prints the max difference too.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import protocol_scene
from benchmarks.timing import median_seconds
from pointins_jax.model import sparse_conv


def masked_select_conv(features, neighbors, kernel):
  """The previous formulation: clamp, gather, select zeros where the neighbour is missing."""
  gathered = jnp.where((neighbors >= 0)[..., None], features[jnp.maximum(neighbors, 0)], 0.0)
  return jnp.einsum("nkc,kcd->nd", gathered, kernel)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--points", type=int, default=20000)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  scene = protocol_scene.protocol_room(args.points, seed=0)
  grid, coord = jnp.asarray(scene["grid"]), jnp.asarray(scene["coord"])
  valid = jnp.ones(grid.shape[0], bool)
  neighbors = jax.jit(sparse_conv.neighbor_table, static_argnums=3)(grid, valid, coord, 3)
  occupied = float(jnp.mean(neighbors >= 0))
  print(f"device: {jax.devices()[0].device_kind}; N={args.points}, K=27 ({occupied:.0%} of "
        f"neighbour slots occupied); median of {args.repeats}")
  print("| C | formulation | fwd ms | fwd+bwd ms | fwd+bwd vs baseline | max |diff| |")
  print("|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for channels in (16, 32, 64):
    x = jnp.asarray(rng.standard_normal((grid.shape[0], channels)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((27, channels, channels)) * 0.1, jnp.float32)
    results = {}
    for name, fn in (("masked select (baseline)", masked_select_conv),
                     ("zero row (ours)", sparse_conv.sparse_conv)):
      fwd = jax.jit(fn)
      grad = jax.jit(jax.grad(lambda x, w, f=fn: jnp.sum(f(x, neighbors, w) ** 2), (0, 1)))
      results[name] = (median_seconds(lambda: fwd(x, neighbors, w), args.repeats),
                       median_seconds(lambda: grad(x, w), args.repeats),
                       np.asarray(fwd(x, neighbors, w)))
    base = results["masked select (baseline)"]
    for name, (f, b, out) in results.items():
      print(f"| {channels} | {name} | {f * 1e3:.1f} | {b * 1e3:.1f} | {base[1] / b:.2f}x | "
            f"{np.abs(out - base[2]).max():.1e} |", flush=True)


if __name__ == "__main__":
  main()
