"""Unsupervised instance segmentation from pretrained PointINS offsets vs classical baselines.

  python -m experiments.unsup_instances --pretrained runs/demo/export \
      --data synthetic-indoor --num-scenes 4 --out runs/unsup
  python -m experiments.unsup_instances --pretrained runs/scannet/export \
      --data data/scannet --split val --out runs/unsup_scannet

No training (PointINS Table 13): points are shifted by the exported offset head's
predictions and grouped by connected components of a radius graph; HDBSCAN and
Felzenszwalb segmentation run on the raw coordinates. All three are scored with the
class-agnostic Hungarian AP (`pointins_jax.metrics.unsupervised`). Prints a 3-row table and
writes OUT/unsup_instances.json and OUT/unsup_instances.png (GT vs each method, one scene).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.metrics import report
from pointins_jax.metrics import unsupervised as unsup_metrics
from pointins_jax.probe import unsupervised


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pretrained", required=True, help="export/ folder of experiments.pretrain")
  parser.add_argument("--data", required=True,
                      help="synthetic-indoor | synthetic-outdoor | a Pointcept root folder")
  parser.add_argument("--split", default="val", help="split folder of a Pointcept root")
  parser.add_argument("--dataset", default="",
                      help="dataset of a Pointcept root (e.g. scannet; picks segment files)")
  parser.add_argument("--num-scenes", type=int, default=None, help="scenes to score (all)")
  parser.add_argument("--radius", type=float, default=None,
                      help="linking distance of shifted points in metres (1.5 voxels)")
  parser.add_argument("--k-neighbors", type=int, default=64)
  parser.add_argument("--min-size", type=int, default=unsup_metrics.MIN_SIZE,
                      help="smallest instance in points (metric and baselines)")
  parser.add_argument("--batch-size", type=int, default=2, help="fragments per forward pass")
  parser.add_argument("--out", required=True, help="output folder")
  args = parser.parse_args(argv)
  result = unsupervised.run(args.pretrained, args.data, out_dir=args.out,
                            num_scenes=args.num_scenes, split=args.split, dataset=args.dataset,
                            radius=args.radius, k_neighbors=args.k_neighbors,
                            min_size=args.min_size, batch_size=args.batch_size)
  rows = {name: result[name] for name in unsupervised.METHODS}
  print(report.per_class_table(rows, columns=("mAP", "AP50", "AP25"), row_label="method"))
  print(f"\n{result['num_scenes']} scenes; figure {result['figure']}")
  with open(os.path.join(args.out, "unsup_instances.json"), "w", encoding="utf-8") as f:
    json.dump(report.jsonable(result), f, indent=2, allow_nan=True)
  return result


if __name__ == "__main__":
  sys.exit(cli.run(main, name="unsup_instances"))
