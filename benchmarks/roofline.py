"""Roofline estimate of PointINS pretraining on one GPU from the train step's FLOPs and bytes.

  python -m benchmarks.roofline                        # ScanNet config, base PTv3, 16 x 2 views
  python -m benchmarks.roofline --points 65536 --batch 16

Lowers (never runs) the full jitted PointINS train step of `configs/pointins_indoor.py:
scannet` for a batch of `--batch` scenes x 2 global views of `--points` capacity, with
stage capacities fitted to the benchmark protocol's room at that size, and reads XLA's
HLO cost analysis (FLOPs, bytes accessed; unfused, so bytes are an upper bound). Each
GPU's step time is bounded below by max(FLOPs / peak, bytes / bandwidth); an epoch of
ScanNet is 1201 scenes / batch steps. Printed beside the paper's 25 hours for 800 epochs
on one H200 (section 9 of the appendix).
"""
from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

from benchmarks import protocol_scene
from configs import pointins_indoor
from pointins_jax.data import batching
from pointins_jax.model import configs as model_configs
from pointins_jax.pointins import train as train_lib

SCANNET_TRAIN_SCENES = 1201
PAPER_HOURS, PAPER_EPOCHS = 25.0, 800
# Dense peaks (no sparsity) and HBM bandwidth, from NVIDIA's H100 SXM / H200 datasheets.
GPUS = {"H100 SXM": {"tf32": 494e12, "bf16": 989e12, "fp32": 67e12, "hbm": 3.35e12},
        "H200": {"tf32": 494e12, "bf16": 989e12, "fp32": 67e12, "hbm": 4.8e12}}


def step_cost(batch: int, points: int) -> tuple[dict, tuple[int, ...]]:
  config = pointins_indoor.get_config("scannet")
  config.data.buckets = (points,)
  scene = protocol_scene.protocol_room(points - points // 32, seed=0)
  counts = batching.stage_point_counts(scene["grid"], len(config.model.enc_depths))
  caps = tuple(model_configs.stage_capacities(config.model, points, counts))
  total_steps = 1000
  state = jax.eval_shape(functools.partial(train_lib.init_train_state, config,
                                           total_steps=total_steps), jax.random.key(0))
  c = config.model.in_channels
  s = jax.ShapeDtypeStruct
  v = 2
  batch_spec = {"coord": s((batch, v, points, 3), np.float32),
                "feat": s((batch, v, points, c), np.float32),
                "grid": s((batch, v, points, 3), np.int32), "valid": s((batch, v, points), bool),
                "visible": s((batch, v, points), bool),
                "cross_index": s((batch, v, points), np.int32),
                "view_linear": s((batch, v, 3, 3), np.float32),
                "origin_coord": s((batch, v, points, 3), np.float32)}
  step = jax.jit(functools.partial(train_lib.train_step, config=config, total_steps=total_steps,
                                   stage_capacities=caps))
  cost = step.trace(state, batch_spec, jax.random.key(1)).lower().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost, caps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16, help="scenes per step (paper: 16)")
  parser.add_argument("--points", type=int, default=32768, help="capacity per view")
  parser.add_argument("--quick", action="store_true", help="2 scenes x 8192 points")
  args = parser.parse_args()
  if args.quick:
    args.batch, args.points = 2, 8192
  cost, caps = step_cost(args.batch, args.points)
  flops, nbytes = float(cost["flops"]), float(cost["bytes accessed"])
  steps_per_epoch = -(-SCANNET_TRAIN_SCENES // args.batch)
  paper_step = PAPER_HOURS * 3600 / (PAPER_EPOCHS * steps_per_epoch)
  print(f"PointINS train step, base PTv3, {args.batch} scenes x 2 views x {args.points} "
        f"points, stage capacities {caps}: {flops / 1e12:.2f} TFLOP, "
        f"{nbytes / 1e9:.1f} GB accessed (unfused upper bound)")
  print(f"paper: {PAPER_HOURS:.0f} h for {PAPER_EPOCHS} epochs on one H200 = "
        f"{paper_step:.2f} s per step of {args.batch}")
  # Compute-bound time is a lower bound; bytes are counted before fusion, so the memory
  # bound is pessimistic: the real step lies between the two.
  print("| GPU | precision | compute-bound s/step | unfused-bytes bound s/step | roofline s/step | "
        "800 epochs (h) |")
  print("|---|---|---|---|---|---|")
  for gpu, spec in GPUS.items():
    for precision in ("fp32", "tf32", "bf16"):
      compute = flops / spec[precision]
      memory = nbytes / spec["hbm"]
      bound = max(compute, memory)
      hours = bound * steps_per_epoch * PAPER_EPOCHS / 3600
      print(f"| {gpu} | {precision} | {compute:.3f} | {memory:.3f} | {bound:.3f} | "
            f"{hours:.1f} |")


if __name__ == "__main__":
  main()
