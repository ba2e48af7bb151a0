"""Where one protocol step's XLA compile time goes: compiler phases and kernels per model part.

  python -m benchmarks.profile_compile --workload tiny-20k-train
  python -m benchmarks.profile_compile --workload default-20k-train --capacities fixed

Compiles the benchmark protocol's step (benchmarks/bench_model.py) cold (persistent cache
off) under `jax.profiler` and prints (1) the compiler's own trace spans summed by name (HLO
pass pipelines, per-fusion kernel emission, LLVM code generation), and (2) the fused
kernels of the compiled program charged to model parts through their op_name metadata
(benchmarks/profile_step.PARTS). On XLA:CPU the compile time grows with the number of
kernels rather than with the tensor sizes, so (2) says which parts make it long.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import tempfile
import time

# Compile time is what we measure: never load the step from a persistent cache.
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
os.environ["POINTINS_COMPILATION_CACHE"] = "0"

import jax  # pylint: disable=wrong-import-position

from benchmarks import bench_model  # pylint: disable=wrong-import-position
from benchmarks import profile_step  # pylint: disable=wrong-import-position

# Compiler trace spans worth showing (XLA:CPU names); other spans are not printed.
_PHASES = ("PjRtCpuClient::Compile", "HLO passes through layout assignment",
           "HLO passes after layout assignment", "FusionCompiler::Compile", "Codegen",
           "ThunkEmitter::EmitEntryComputation")


def compiler_spans(events) -> dict[str, tuple[float, int]]:
  """Trace span name prefix in _PHASES -> (seconds summed, count)."""
  spans = {}
  for event in events:
    if event.get("ph") != "X":
      continue
    name = event.get("name", "")
    for phase in _PHASES:
      if name.startswith(phase):
        seconds, count = spans.get(phase, (0.0, 0))
        spans[phase] = (seconds + event.get("dur", 0) / 1e6, count + 1)
  return spans


def kernels_by_part(compiled_text: str) -> collections.Counter:
  """Fusion instructions of the compiled HLO, counted per model part."""
  parts = collections.Counter()
  for line in compiled_text.splitlines():
    if " fusion(" not in line:
      continue
    op_name = re.search(r'op_name="([^"]+)"', line)
    if op_name is None:
      parts["(no metadata)"] += 1
    elif re.search(r"jit\(\w+\)/(add|mul|sub|div|sqrt|integer_pow|max|select_n)$",
                   op_name.group(1)):
      # Top-level elementwise ops outside the network: the optimizer's per-leaf updates.
      parts["optimizer (per-parameter updates)"] += 1
    else:
      parts[profile_step.part_of(op_name.group(1))] += 1
  return parts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", default="tiny-20k-train", choices=bench_model.WORKLOADS)
  parser.add_argument("--capacities", default="fitted", choices=("fitted", "fixed"))
  args = parser.parse_args()
  _, info = bench_model.build_workload(args.workload, args.capacities)
  lowered = info["lowered"]()
  trace_dir = tempfile.mkdtemp(prefix="pointins_compile_")
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - start
  jax.profiler.stop_trace()
  spans = compiler_spans(profile_step.trace_events(trace_dir)[1])
  print(f"{args.workload}, capacities={args.capacities}: cold XLA compile {seconds:.1f} s")
  print("| compiler span | seconds (summed over threads) | spans |")
  print("|---|---|---|")
  for phase in _PHASES:
    if phase in spans:
      print(f"| {phase} | {spans[phase][0]:.1f} | {spans[phase][1]} |")
  parts = kernels_by_part(compiled.as_text())
  total = sum(parts.values())
  print(f"\n{total} fused kernels (fusion instructions, nested ones included):")
  print("| part | kernels | share |")
  print("|---|---|---|")
  for part, count in parts.most_common():
    print(f"| {part} | {count} | {count / total:.0%} |")


if __name__ == "__main__":
  main()
