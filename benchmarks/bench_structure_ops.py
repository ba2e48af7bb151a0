"""Sparse conv, neighbour tables, serialization sorts, LayerNorm and BatchNorm against their
former formulations.

  python -m benchmarks.bench_structure_ops            # demo, 20k and 80k point shapes
  python -m benchmarks.bench_structure_ops --quick    # demo shapes only

Sparse conv (`model.sparse_conv.sparse_conv`): baseline = one GEMM per kernel offset in a
`lax.scan` with autodiff's backward (the formulation before 2026-12-05); ours = offsets in
groups of G per GEMM with a backward that recomputes the gathered rows ("G f / b": the
forward's and the backward's group sizes). Random neighbour
tables (30% of entries present), vmapped over B scenes; "grad" = d/d(features, kernel) of
sum(out^2), forward included. "grad: B*N rows" is `batched_sparse_conv`, the model's conv
since 2026-12-05 (late session): the B scenes as one of B*N rows instead of a vmap.

Neighbour tables (`model.sparse_conv.neighbor_tables`, stage 0 of the protocol room and a
sparse demo-like batch, K = 3 and 5): baseline = the sorted-cell search vmapped over the
scenes; ours = the dense box when the scenes' occupied boxes fit, else the same search
(the sparse batch: its 4 x 2048 points spread over 200^3 cells). Same tables (checked).

Serialization (`model.serialization.serialize`, the four curves of a stage-0 scene with
points sharing cells): the first baseline = one 5-key sort (code halves, x, y, z) per
curve; the second (2026-12-05, until the night session) = one `lax.sort` on coordinates
per stage, then a stable 2-key `lax.sort` per curve; ours = the same two steps as radix
passes of single-operand sorts (`serialization.code_order`). All give the same orders of
the valid points (checked here).

LayerNorm (`model.layer_norm.LayerNorm`): baseline = `flax.linen.LayerNorm` with autodiff's
backward; ours = the closed-form backward; "grad" = d/d(params, x, w) of
sum(tanh(LN(x @ w))), forward included, at the block shapes of the protocol's stages.

BatchNorm (`model.batch_norm.BatchNorm`, m1's stem and (un)pooling norms, training mode,
statistics over the 90% of rows that are real points): baseline = `flax.linen.BatchNorm`
with `mask=` and autodiff's backward; ours = the closed-form backward; same "grad".

Medians in ms, A and B alternated in one process; ratio = baseline / ours (> 1: ours is
faster).
"""
from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import interleaved_median_seconds
from pointins_jax.model import batch_norm
from pointins_jax.model import layer_norm
from pointins_jax.model import serialization
from pointins_jax.model import sparse_conv

# (B scenes, N points, C_in, C_out, K3): the demo's stage 0-2 at 2048-point views, the
# protocol's tiny stage 0 and 46M decoder stage 0 at 20k, tiny stage 0 at 80k, the 5^3 stem.
_CONV_SHAPES = [(4, 2048, 16, 16, 27), (4, 2048, 32, 32, 27), (4, 1024, 64, 64, 27),
                (1, 20480, 16, 16, 27), (1, 20480, 64, 64, 27), (1, 80000, 16, 16, 27),
                (1, 20480, 6, 32, 125), (1, 80000, 6, 16, 125)]
_SORT_SHAPES = [(8, 2048), (1, 20480), (1, 80000)]
# (B, N, C): demo stage 0, tiny stage 0 at 20k and 80k, 46M stage 0 at 20k.
_NORM_SHAPES = [(4, 2048, 32), (1, 20224, 32), (1, 80128, 32), (1, 20224, 64)]


def per_offset_scan_conv(features, neighbors, kernel):
  """The former sparse conv: one [N, C_in] gather and GEMM per offset, autodiff backward."""
  def offset(acc, step):
    index, weight = step
    rows = jnp.where((index >= 0)[:, None], features[jnp.maximum(index, 0)], 0.0)
    return acc + rows @ weight, None

  init = jnp.zeros((features.shape[0], kernel.shape[-1]), features.dtype)
  return jax.lax.scan(offset, init, (neighbors.T, kernel))[0]


def five_key_serialize(grid, valid, coord):
  """The former serialization: one sort on (hi, lo, x, y, z) per curve."""
  depth = serialization.scene_depth(grid, valid)
  iota = jnp.arange(grid.shape[0], dtype=jnp.int32)
  orders = []
  for name in serialization.ORDERS:
    hi, lo = serialization.encode(grid, name, depth)
    hi = jnp.where(valid, hi, serialization.PAD_HI)
    orders.append(jax.lax.sort((hi, lo, coord[:, 0], coord[:, 1], coord[:, 2], iota),
                               num_keys=5)[-1])
  return jnp.stack(orders)


def comparator_serialize(grid, valid, coord):
  """The serialization before radix passes: one `lax.sort` on (x, y, z, index) per stage,
  then a stable `lax.sort` on (hi, lo, point) per curve."""
  depth = serialization.scene_depth(grid, valid)
  iota = jnp.arange(grid.shape[0], dtype=jnp.int32)
  by_coord = jax.lax.sort((coord[:, 0], coord[:, 1], coord[:, 2], iota), num_keys=3,
                          is_stable=True)[-1]
  orders = []
  for name in serialization.ORDERS:
    hi, lo = serialization.encode(grid, name, depth)
    hi = jnp.where(valid, hi, serialization.PAD_HI)
    orders.append(jax.lax.sort((hi[by_coord], lo[by_coord], by_coord), num_keys=2,
                               is_stable=True)[-1])
  return jnp.stack(orders)


def conv_rows(shapes, repeats):
  rng = np.random.default_rng(0)
  rows = []
  for b, n, c_in, c_out, k3 in shapes:
    features = jnp.asarray(rng.normal(size=(b, n, c_in)), jnp.float32)
    present = rng.random((b, n, k3)) < 0.3
    neighbors = jnp.asarray(np.where(present, rng.integers(0, n, (b, n, k3)), -1), jnp.int32)
    kernel = jnp.asarray(rng.normal(size=(k3, c_in, c_out)) / np.sqrt(k3 * c_in), jnp.float32)
    # per-offset scan and grouped conv vmapped over B, then the grouped one on B*N rows
    convs = [jax.vmap(conv, in_axes=(0, 0, None))
             for conv in (per_offset_scan_conv, sparse_conv.sparse_conv)]
    convs.append(sparse_conv.batched_sparse_conv)
    fwd = [jax.jit(lambda f, k, conv=conv: conv(f, neighbors, k)) for conv in convs[:2]]
    grad = [jax.jit(jax.grad(lambda f, k, conv=conv: jnp.sum(conv(f, neighbors, k) ** 2),
                             (0, 1))) for conv in convs]
    want = grad[0](features, kernel)
    for other in grad[1:]:
      for a, c in zip(want, other(features, kernel)):
        np.testing.assert_allclose(c, a, rtol=2e-4, atol=2e-4 * float(jnp.max(jnp.abs(a))))
    times = interleaved_median_seconds(
        [lambda fn=fn: fn(features, kernel) for fn in fwd + grad], repeats, settle_s=0.2)
    groups = [sparse_conv.offsets_per_step(n, k3, c_in, backward=bwd) for bwd in (False, True)]
    rows.append((f"{b} x {n}, {c_in} -> {c_out}, K3 {k3} (G {groups[0]} / {groups[1]})",
                 *times))
  return rows


def neighbor_table_rows(point_counts, repeats):
  """(label, search s, neighbor_tables s) for protocol rooms of `point_counts` points and a
  sparse 4-scene batch, K = 3 and 5."""
  from benchmarks import bench_model, protocol_scene  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  scenes = []
  for n in point_counts:
    room = protocol_scene.load_scene(bench_model.scene_path(n))
    scenes.append((f"protocol room, 1 x {n}", room["grid"][None].astype(np.int32),
                   room["coord"][None].astype(np.float32)))
  grid = rng.integers(0, 200, (4, 2048, 3)).astype(np.int32)
  scenes.append(("sparse, 4 x 2048 (search in both)", grid, grid.astype(np.float32) * 0.02))
  rows = []
  for label, grid, coord in scenes:
    args = (jnp.asarray(grid), jnp.ones(grid.shape[:2], bool), jnp.asarray(coord))
    by_coord = jax.vmap(serialization.coordinate_order)(args[2])
    for k in (3, 5):
      fns = [jax.jit(jax.vmap(lambda g, v, c, p, k=k: sparse_conv.neighbor_table(g, v, c, k, p))),
             jax.jit(lambda g, v, c, p, k=k: sparse_conv.neighbor_tables(g, v, c, k, p))]
      np.testing.assert_array_equal(fns[0](*args, by_coord), fns[1](*args, by_coord))
      times = interleaved_median_seconds([lambda fn=fn: fn(*args, by_coord) for fn in fns],
                                         repeats, settle_s=0.2)
      rows.append((f"{label}, K {k}", *times))
  return rows


def sort_rows(shapes, repeats):
  rng = np.random.default_rng(1)
  rows = []
  for b, n in shapes:
    grid = rng.integers(0, 200, (b, n, 3)).astype(np.int32)  # ~1% of points share a cell
    coord = (grid + rng.random(grid.shape)).astype(np.float32) * 0.02
    valid = rng.random((b, n)) < 0.97
    args = (jnp.asarray(grid), jnp.asarray(valid), jnp.asarray(coord))
    fns = [jax.jit(jax.vmap(five_key_serialize)), jax.jit(jax.vmap(comparator_serialize)),
           jax.jit(jax.vmap(lambda g, v, c: serialization.serialize(g, v, c)[0]))]
    n_valid = valid.sum(axis=1)  # the padding's order among itself is arbitrary
    for fn in fns[1:]:
      for row, want, got in zip(n_valid, fns[0](*args), fn(*args)):
        np.testing.assert_array_equal(want[:, :row], got[:, :row])
    times = interleaved_median_seconds([lambda fn=fn: fn(*args) for fn in fns], repeats,
                                       settle_s=0.2)
    rows.append((f"{b} x {n}, 4 curves", *times))
  return rows


def _flax_masked_batch_norm():
  return nn.BatchNorm(use_running_average=False, momentum=0.99, epsilon=1e-3)


def norm_rows(shapes, repeats, kind="layer"):
  """Gradient timings of flax's norm vs ours ('layer' or 'batch'), equality checked first."""
  rng = np.random.default_rng(2)
  rows = []
  for b, n, c in shapes:
    x = jnp.asarray(rng.normal(size=(b, n, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(c, c)) / np.sqrt(c), jnp.float32)
    if kind == "layer":
      modules = (nn.LayerNorm(epsilon=1e-5), layer_norm.LayerNorm(1e-5))
      calls = [lambda m, p, y: m.apply(p, y)] * 2
      params = modules[0].init(jax.random.key(0), x)
    else:
      mask = jnp.asarray(rng.random((b, n)) < 0.9)
      modules = (_flax_masked_batch_norm(), batch_norm.BatchNorm(0.99, 1e-3))
      calls = [lambda m, p, y: m.apply(p, y, mask=mask[..., None], mutable=["batch_stats"])[0],
               lambda m, p, y: m.apply(p, y, mask, use_running_average=False,
                                       mutable=["batch_stats"])[0]]
      params = modules[0].init(jax.random.key(0), x, mask=mask[..., None])
    fns = [jax.jit(jax.grad(lambda p, x, w, m=m, call=call: jnp.sum(jnp.tanh(call(m, p, x @ w))),
                            (0, 1, 2))) for m, call in zip(modules, calls)]
    want, got = (jax.tree.leaves(fn(params, x, w)) for fn in fns)
    for a, g in zip(want, got):
      np.testing.assert_allclose(g, a, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(a))))
    times = interleaved_median_seconds([lambda fn=fn: fn(params, x, w) for fn in fns], repeats,
                                       settle_s=0.2)
    rows.append((f"{b} x {n} x {c}", *times))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="demo shapes only, 5 repeats")
  parser.add_argument("--repeats", type=int, default=11)
  args = parser.parse_args()
  repeats = 5 if args.quick else args.repeats
  conv_shapes = _CONV_SHAPES[:3] if args.quick else _CONV_SHAPES
  sort_shapes = _SORT_SHAPES[:1] if args.quick else _SORT_SHAPES
  norm_shapes = _NORM_SHAPES[:1] if args.quick else _NORM_SHAPES
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; medians of {repeats}, ms\n")
  print("| sparse conv | fwd: per-offset scan | fwd: grouped | ratio | grad: per-offset scan "
        "| grad: grouped | ratio | grad: B*N rows | vs grouped |")
  print("|---|---|---|---|---|---|---|---|---|")
  for name, f0, f1, g0, g1, g2 in conv_rows(conv_shapes, repeats):
    print(f"| {name} | {f0 * 1e3:.2f} | {f1 * 1e3:.2f} | {f0 / f1:.2f}x | {g0 * 1e3:.2f} | "
          f"{g1 * 1e3:.2f} | {g0 / g1:.2f}x | {g2 * 1e3:.2f} | {g1 / g2:.2f}x |")
  print("\n| neighbour tables | sorted-cell search | neighbor_tables | ratio |")
  print("|---|---|---|---|")
  for name, t0, t1 in neighbor_table_rows([20000] if args.quick else [20000, 80000], repeats):
    print(f"| {name} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}x |")
  print("\n| serialization | 5-key sort per curve | coordinate sort + 2-key sorts "
        "| radix passes (`serialize`) | 5-key / radix | 2-key / radix |")
  print("|---|---|---|---|---|---|")
  for name, t0, t1, t2 in sort_rows(sort_shapes, repeats):
    print(f"| {name} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t2 * 1e3:.2f} | {t0 / t2:.2f}x "
          f"| {t1 / t2:.2f}x |")
  print("\n| LayerNorm grad | flax, autodiff | closed-form VJP | ratio |")
  print("|---|---|---|---|")
  for name, t0, t1 in norm_rows(norm_shapes, repeats):
    print(f"| {name} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}x |")
  print("\n| BatchNorm grad (masked) | flax, autodiff | closed-form VJP | ratio |")
  print("|---|---|---|---|")
  for name, t0, t1 in norm_rows(norm_shapes, repeats, kind="batch"):
    print(f"| {name} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}x |")


if __name__ == "__main__":
  main()
