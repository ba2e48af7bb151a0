"""Where one step's time goes: a jax.profiler trace aggregated by model part.

  python -m benchmarks.profile_step --workload tiny-20k-train
  python -m benchmarks.profile_step --workload default-20k-train --capacities fixed --steps 2
  python -m benchmarks.profile_step --workload demo     # the README demo's PointINS step

Runs the benchmark protocol's step (benchmarks/bench_model.py), or with `--workload demo`
the full PointINS train step of the README demo on its loader's first batch
(benchmarks/bench_train_step.py), under `jax.profiler`, reads the trace's XLA op events
back and charges each op to a part through the op_name metadata of the compiled HLO (the
offset branch's ODR and SCR steps, attention, sparse conv, neighbour tables,
serialization, norms, ...; "(bwd)" = the backward pass). Also prints XLA's cost analysis
(FLOPs, bytes).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from benchmarks import bench_model
from benchmarks import bench_train_step

# (part, substrings of the op_name path that identify it); first match wins.
PARTS = (
    # The offset branch's named scopes (pointins/offsets.py, pointins/scr.py) come first:
    # their sorts and searches would otherwise count as the backbone's.
    ("ODR", ("(odr)", "/odr/")),
    ("SCR K-means", ("scr_kmeans",)),
    ("SCR kNN", ("scr_knn",)),
    ("SCR components", ("scr_components",)),
    ("attention", ("/attn/",)),
    ("sparse conv (CPE)", ("cpe_conv",)),
    ("sparse conv (stem)", ("stem_conv",)),
    ("neighbour tables", ("neighbor_table", "_search_sorted")),
    ("serialization", ("serialize", "hilbert", "sort_by_code", "/sort")),
    ("pooling / unpooling", ("_down", "_up", "grid_pool", "upcast")),
    ("MLP", ("fc1", "fc2")),
    ("norms", ("norm",)),
    ("CPE linear", ("cpe_linear",)),
    ("drop path", ("drop_path",)),
    ("head, loss, optimizer", ("head", "adamw", "softmax_cross_entropy", "optax")),
)


def part_of(op_name: str) -> str:
  for part, keys in PARTS:
    if any(key in op_name for key in keys):
      return part + (" (bwd)" if "transpose(" in op_name else "")
  return "other"


def op_metadata(compiled_text: str) -> dict[str, str]:
  """HLO instruction name -> its op_name metadata."""
  meta = {}
  for line in compiled_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]+)"', line)
    if match:
      meta[match.group(1)] = match.group(2)
  return meta


def trace_events(trace_dir: str) -> tuple[str, list]:
  """(path, traceEvents) of the newest jax.profiler trace written under `trace_dir`."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    return path, json.load(f)["traceEvents"]


def demo_workload():
  """(step(i), info) of the README demo's PointINS train step, as `build_workload`'s."""
  config = bench_train_step.make_config("tiny", 2048, offset_enabled=True)
  train_step, args = bench_train_step.build_step(config, bench_train_step.first_batch(config),
                                                 total_steps=100)
  info = {"capacities": tuple(config.model.stage_capacity_fractions),
          "lowered": lambda: train_step.lower(*args)}
  return lambda i: train_step(*args)[1]["loss"], info


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", default="tiny-20k-train",
                      choices=bench_model.WORKLOADS + ("demo",))
  parser.add_argument("--capacities", default="fitted", choices=("fitted", "fixed"))
  parser.add_argument("--steps", type=int, default=3, help="profiled steps (after warm-up)")
  parser.add_argument("--verbose", action="store_true", help="list the largest 'other' ops")
  parser.add_argument("--quick", action="store_true", help="one profiled step")
  args = parser.parse_args()
  if args.quick:
    args.steps = 1
  # Ops are charged by the compiled program's op names, and a program from the persistent
  # compilation cache may carry an older code's names (the cache key ignores them).
  jax.config.update("jax_enable_compilation_cache", False)
  if args.workload == "demo":
    args.capacities = "fixed"  # the demo config's stage fractions
    step, info = demo_workload()
  else:
    step, info = bench_model.build_workload(args.workload, args.capacities)
  jax.block_until_ready(step(0))
  jax.block_until_ready(step(1))
  trace_dir = tempfile.mkdtemp(prefix="pointins_profile_")
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  for i in range(args.steps):
    jax.block_until_ready(step(2 + i))
  jax.profiler.stop_trace()
  path, events = trace_events(trace_dir)
  compiled = info["lowered"]().compile()
  meta = op_metadata(compiled.as_text())
  by_part, other = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") == "X" and name in meta:
      part = part_of(meta[name])
      by_part[part] += event.get("dur", 0) / args.steps
      if part == "other":
        other[re.sub(r"\d+", "#", meta[name])[-90:]] += event.get("dur", 0) / args.steps
  total = sum(by_part.values())
  print(f"{args.workload}, capacities={args.capacities} {info['capacities']}: "
        f"{total / 1e3:.0f} ms of XLA ops per step (trace {path})")
  print("| part | ms per step | share |")
  print("|---|---|---|")
  for part, micros in by_part.most_common():
    print(f"| {part} | {micros / 1e3:.1f} | {micros / total:.1%} |")
  if args.verbose:
    print("\nlargest 'other' ops:")
    for op, micros in other.most_common(15):
      print(f"  {micros / 1e3:7.1f} ms  {op}")
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost:
    print(f"\nXLA cost analysis: {cost.get('flops', 0) / 1e9:.1f} GFLOP, "
          f"{cost.get('bytes accessed', 0) / 1e9:.2f} GB accessed per step")


if __name__ == "__main__":
  main()
