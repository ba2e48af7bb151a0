"""One protocol step, A/B in one process: this tree vs this tree with parts taken from another.

  python -m benchmarks.ab_step --workload tiny-80k-train --base-tree /path/to/old-checkout \\
      --swap kernels.patch_attention:patch_attention_xla --pairs 8

A = this tree with each `module:attribute` of `--swap` replaced by the same attribute of
that module file in `--base-tree` (an older checkout, e.g. a git worktree); B = this tree
as it is. Both steps (`bench_model.build_workload`, fitted capacities) are compiled in the
same process, then run alternately, A B A B ..., `--settle` seconds apart, and the table
gives their medians and the median of the paired ratios B / A. On a shared machine whose
load drifts by +-50% within minutes, paired steps in one process measure a change that
separate processes (`bench_model --baseline-tree`) cannot resolve. The swap happens
before A is built, through the attribute the rest of the code looks up at trace time, so
it must name a module-level function or class used that way.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time

import numpy as np

from benchmarks import bench_model
from pointins_jax import host_allocator


def base_module(base_tree: str, module_name: str):
  """`module_name` loaded from `base_tree`'s file, under a private name."""
  path = os.path.join(base_tree, *module_name.split(".")) + ".py"
  if not os.path.exists(path):
    raise FileNotFoundError(f"--base-tree {base_tree}: no {path} for --swap {module_name}.")
  private_name = "_ab_base_" + module_name.replace(".", "_")
  spec = importlib.util.spec_from_file_location(private_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while it executes
  spec.loader.exec_module(module)
  return module


def swap_in(base_tree: str, swaps: list[str]):
  """Replaces each `module:attribute`; returns a function that puts the originals back."""
  restore = []
  for item in swaps:
    module_name, _, attribute = item.partition(":")
    if not attribute:
      raise ValueError(f"--swap {item!r}: write module:attribute, e.g. "
                       "kernels.patch_attention:patch_attention_xla.")
    live = importlib.import_module(module_name)
    restore.append((live, attribute, getattr(live, attribute)))
    setattr(live, attribute, getattr(base_module(base_tree, module_name), attribute))

  def put_back():
    for live, attribute, value in restore:
      setattr(live, attribute, value)
  return put_back


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", default="tiny-20k-train", choices=bench_model.WORKLOADS)
  parser.add_argument("--base-tree", required=True, help="checkout the A side's parts come from")
  parser.add_argument("--swap", action="append", required=True,
                      help="module:attribute taken from --base-tree (repeatable)")
  parser.add_argument("--pairs", type=int, default=8)
  parser.add_argument("--settle", type=float, default=0.3, help="seconds between steps")
  args = parser.parse_args()
  host_allocator.tune_glibc_malloc()
  import jax  # pylint: disable=import-outside-toplevel
  from kernels import patch_attention  # pylint: disable=import-outside-toplevel

  steps = {}
  for side in ("A", "B"):
    put_back = swap_in(args.base_tree, args.swap) if side == "A" else (lambda: None)
    # patch_attention is jitted and would keep the other side's trace; not
    # jax.clear_caches(), which would also drop A's compiled step and retrace it as B.
    patch_attention.patch_attention.clear_cache()
    step, _ = bench_model.build_workload(args.workload, "fitted")
    start = time.perf_counter()
    jax.block_until_ready(step(0))
    print(f"{side}: first step {time.perf_counter() - start:.1f} s", flush=True)
    put_back()
    steps[side] = step
  times = {"A": [], "B": []}
  for i in range(1, args.pairs + 1):
    for side in ("A", "B"):
      time.sleep(args.settle)
      start = time.perf_counter()
      jax.block_until_ready(steps[side](i))
      times[side].append(time.perf_counter() - start)
  ratios = np.array(times["B"]) / np.array(times["A"])
  print(f"\n| workload | A (base parts) s/step | B (this tree) s/step | B / A paired median "
        f"(min-max, {args.pairs} pairs) |\n|---|---|---|---|\n| {args.workload} | "
        f"{np.median(times['A']):.3f} | {np.median(times['B']):.3f} | "
        f"{np.median(ratios):.3f} ({ratios.min():.2f}-{ratios.max():.2f}) |", flush=True)


if __name__ == "__main__":
  main()
