"""Writes a dataset in the Pointcept layout OUT/{train,val}/<scene>/*.npy.

  python -m experiments.prepare_data synthetic-indoor --out OUT --num-scenes N [--seed S]
      [--val-fraction F] [--small]
  python -m experiments.prepare_data synthetic-outdoor --out OUT --num-scenes N [--beams 64]
  python -m experiments.prepare_data {scannet,semantickitti,nuscenes} --raw RAW --out OUT

Scenes with detection boxes (synthetic-outdoor; nuscenes when RAW holds the v1.0-*
metadata tables) also get box_*.npy (pointins_jax/data/pointcept_io.py).

Prints a summary table (scenes, points, classes, instances, instance-offset magnitude
statistics, points dropped on purpose). Exits non-zero on any error.
"""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Optional, Sequence

import numpy as np
import tqdm

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.data import config as data_config
from pointins_jax.data import (labels, nuscenes, pointcept_io, scannet, semantickitti,
                               synthetic_indoor, synthetic_outdoor)
from pointins_jax.data.pointcept_io import LoadedScene, SourceScene
from pointins_jax.data.scene import SceneError
from pointins_jax.pointins import priors

RAW_READERS = {"scannet": scannet.find_scenes, "semantickitti": semantickitti.find_scenes,
               "nuscenes": nuscenes.find_scenes}
OFFSET_SAMPLES_PER_SCENE = 50_000  # magnitudes kept a scene for the quantiles


def _synthetic_indoor(seed: int, small: bool) -> LoadedScene:
  scene = synthetic_indoor.generate_room(seed, small=small)
  # segment20.npy too, so the ScanNet protocol (which reads segment20) applies unchanged.
  return LoadedScene(scene, {"segment20": scene.segment})


def _synthetic_outdoor(seed: int, beams: int, small: bool) -> LoadedScene:
  scene = synthetic_outdoor.generate_sweep(seed, beams=beams,
                                           azimuth_steps=256 if small else None)
  # Box k encloses instance k: its point count is that instance's.
  counts = np.bincount(scene.instance[scene.instance >= 0], minlength=len(scene.boxes))
  return LoadedScene(scene, box_extras={"num_points": counts.astype(np.int32)})


def synthetic_scenes(args) -> list[SourceScene]:
  """Seeded scenes, a seeded `--val-fraction` of them in val."""
  if args.num_scenes < 1 or not 0 <= args.val_fraction < 1:
    raise SceneError(f"--num-scenes must be >= 1 and --val-fraction in [0, 1); got "
                     f"{args.num_scenes}, {args.val_fraction}.")
  rng = np.random.default_rng(args.seed)
  num_val = int(round(args.num_scenes * args.val_fraction))
  is_val = np.zeros(args.num_scenes, bool)
  is_val[rng.permutation(args.num_scenes)[:num_val]] = True
  found = []
  for index in range(args.num_scenes):
    seed = args.seed * 1_000_000 + index
    if args.dataset == "synthetic-indoor":
      load = functools.partial(_synthetic_indoor, seed, args.small)
    else:
      load = functools.partial(_synthetic_outdoor, seed, args.beams, args.small)
    name = f"{args.dataset.replace('-', '_')}_{seed:08d}"
    found.append(SourceScene("val" if is_val[index] else "train", name, load))
  return found


class Summary:
  """Per-split counts and the instance-offset magnitudes of the written scenes."""

  def __init__(self, num_classes: int, seed: int):
    self.rows = {}
    self.num_classes = num_classes
    self.rng = np.random.default_rng(seed)
    self.samples, self.offset_sum, self.offset_count, self.offset_max = [], 0.0, 0, 0.0

  def add(self, split: str, loaded: LoadedScene):
    scene = loaded.scene
    row = self.rows.setdefault(split, {"scenes": 0, "points": 0, "classes": set(),
                                       "instances": 0, "dropped": 0, "boxes": 0,
                                       "box_scenes": 0, "boxes_skipped": 0})
    row["scenes"] += 1
    if scene.boxes is not None:
      row["boxes"] += len(scene.boxes)
      row["box_scenes"] += 1
    row["boxes_skipped"] += loaded.boxes_skipped
    row["points"] += scene.num_points
    row["dropped"] += loaded.dropped
    if scene.segment is not None:
      row["classes"].update(np.unique(scene.segment[scene.segment >= 0]).tolist())
    if scene.instance is not None and (scene.instance >= 0).any():
      row["instances"] += len(np.unique(scene.instance[scene.instance >= 0]))
      magnitude = np.linalg.norm(priors.instance_offsets(scene.coord, scene.instance), axis=1)
      self.offset_sum += float(magnitude.sum())
      self.offset_count += magnitude.size
      self.offset_max = max(self.offset_max, float(magnitude.max()))
      if magnitude.size > OFFSET_SAMPLES_PER_SCENE:
        magnitude = self.rng.choice(magnitude, OFFSET_SAMPLES_PER_SCENE, replace=False)
      self.samples.append(magnitude)

  def offset_statistics(self) -> Optional[dict[str, float]]:
    if not self.samples:
      return None
    sample = np.concatenate(self.samples)
    return {"mean": self.offset_sum / self.offset_count, "median": float(np.median(sample)),
            "p90": float(np.quantile(sample, 0.9)), "p99": float(np.quantile(sample, 0.99)),
            "max": self.offset_max}

  def table(self) -> str:
    lines = [f"{'split':<6} {'scenes':>7} {'points':>12} {'classes':>8} {'instances':>10} "
             f"{'dropped':>8}"]
    for split, row in sorted(self.rows.items()):
      lines.append(f"{split:<6} {row['scenes']:>7} {row['points']:>12} "
                   f"{len(row['classes']):>4}/{self.num_classes:<3} {row['instances']:>10} "
                   f"{row['dropped']:>8}")
    for split, row in sorted(self.rows.items()):
      if row["box_scenes"]:
        lines.append(f"{split}: {row['boxes']} detection boxes in {row['box_scenes']} of "
                     f"{row['scenes']} scenes (box_*.npy); {row['boxes_skipped']} "
                     "annotations skipped (category without a detection class)")
    if any(row["dropped"] for row in self.rows.values()):
      lines.append("dropped: points removed for non-finite (NaN/inf) coordinates")
    stats = self.offset_statistics()
    if stats:
      lines.append("instance offset |centroid - point| (m): " +
                   "  ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return "\n".join(lines)


def scene_notes(loaded: LoadedScene, min_points: int) -> list[str]:
  """One line per thing a user should know about a converted scene: points dropped (and
  why), labels lost, a scan too small to pretrain on."""
  scene, notes = loaded.scene, list(loaded.warnings)
  if loaded.dropped:
    notes.append(f"{scene.source}: dropped {loaded.dropped} points (non-finite coordinates).")
  if scene.num_points < min_points:
    notes.append(f"{scene.source}: only {scene.num_points} points, fewer than "
                 f"data.min_view_points={min_points}; pretraining will skip this scene "
                 "(data.bad_scenes).")
  return notes


def parse_args(argv: Optional[Sequence[str]]):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="dataset", required=True)
  for name in ("synthetic-indoor", "synthetic-outdoor"):
    command = commands.add_parser(name, help=f"generate {name} scenes")
    command.add_argument("--num-scenes", type=int, required=True)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--val-fraction", type=float, default=0.2)
    command.add_argument("--small", action="store_true",
                         help="small scenes (a few thousand points) for tests and CPU demos")
    if name == "synthetic-outdoor":
      command.add_argument("--beams", type=int, choices=(32, 64), default=32)
  for name in RAW_READERS:
    command = commands.add_parser(name, help=f"convert raw {name}")
    command.add_argument("--raw", required=True, help="root of the raw dataset")
  for command in commands.choices.values():
    command.add_argument("--out", required=True, help="output root OUT/{train,val}/<scene>")
  return parser.parse_args(argv)


def _main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  if args.dataset in RAW_READERS:
    scenes = RAW_READERS[args.dataset](args.raw)
  else:
    scenes = synthetic_scenes(args)
  info = labels.dataset_info(args.dataset)
  summary = Summary(info.num_classes, getattr(args, "seed", 0))
  min_points = data_config.data_config().min_view_points
  for source in tqdm.tqdm(scenes, desc=args.dataset, unit="scene"):
    loaded = source.load()
    loaded.scene.validate(num_classes=info.num_classes)
    for note in scene_notes(loaded, min_points):
      tqdm.tqdm.write(f"prepare_data: warning: {note}", file=sys.stderr)
    pointcept_io.write_scene(loaded.scene, f"{args.out}/{source.split}/{source.name}",
                             loaded.extra_segments, loaded.box_extras)
    summary.add(source.split, loaded)
  print(summary.table())
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; errors are one line on stderr and status 1 (`pointins_jax.cli`)."""
  return cli.run(_main, argv, name="prepare_data")


if __name__ == "__main__":
  sys.exit(main())
