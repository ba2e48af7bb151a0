"""SemanticKITTI sweeps -> scenes with the 19-class learning map and panoptic instances.

Layout (the official release):
  RAW/sequences/NN/velodyne/XXXXXX.bin  float32 [N, 4]: x, y, z (metres), remission [0, 1]
  RAW/sequences/NN/labels/XXXXXX.label  uint32 [N]: low 16 bits semantic, high 16 instance

Sequence 08 is `val`, 00-07 and 09-10 `train`; 11-21 (no labels) are not converted.
Semantic raw ids go through `labels.SEMANTICKITTI_LEARNING_MAP` (unknown ids raise);
thing points (classes 0-7) with a non-zero instance get one id per (semantic, instance)
pair, everything else -1.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from pointins_jax.data import labels
from pointins_jax.data.pointcept_io import LoadedScene, SourceScene
from pointins_jax.data.scene import NO_INSTANCE, Scene, SceneError, drop_non_finite

SPLITS = {"train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10), "val": (8,)}
_LEARNING_TABLE, _KNOWN_RAW = labels.lookup_table(labels.SEMANTICKITTI_LEARNING_MAP, 1 << 16)


def read_points(path: str) -> np.ndarray:
  """float32 [N, 4] (x, y, z, remission) of a velodyne .bin file."""
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing velodyne scan.")
  size = os.path.getsize(path)
  if size == 0:
    raise SceneError(f"{path}: empty scan (0 bytes).")
  if size % 16:
    raise SceneError(f"{path}: {size} bytes is not a multiple of 16 (4 float32 per point: "
                     "x, y, z, remission); the file is truncated or not a KITTI scan.")
  return np.fromfile(path, np.float32).reshape(-1, 4)


def read_labels(path: str, num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """(segment int32 [N] 0..18 / -1, instance int32 [N] / -1) of a .label file."""
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing label file.")
  size = os.path.getsize(path)
  if size != 4 * num_points:
    raise SceneError(f"{path}: {size} bytes but the scan has {num_points} points "
                     f"(expected {4 * num_points}: one uint32 per point).")
  raw = np.fromfile(path, np.uint32)
  semantic, raw_instance = raw & 0xFFFF, raw >> 16
  unknown = ~_KNOWN_RAW[semantic]
  if unknown.any():
    raise SceneError(f"{path}: semantic ids {sorted(set(semantic[unknown].tolist()))[:5]} "
                     "are not in the SemanticKITTI learning map.")
  segment = _LEARNING_TABLE[semantic]
  is_thing = np.isin(segment, labels.SEMANTICKITTI_THING_CLASSES) & (raw_instance > 0)
  _, compact = np.unique(raw[is_thing], return_inverse=True)
  instance = np.full(len(raw), NO_INSTANCE, np.int32)
  instance[is_thing] = compact
  return segment, instance


def convert_scan(bin_path: str, label_path: Optional[str], name: str) -> LoadedScene:
  points = read_points(bin_path)
  segment = instance = None
  if label_path is not None:
    segment, instance = read_labels(label_path, len(points))
  coord, strength, segment, instance, dropped = drop_non_finite(
      points[:, :3], points[:, 3], segment, instance, source=bin_path)
  if not np.isfinite(strength).all() or strength.min() < 0 or strength.max() > 1:
    raise SceneError(f"{bin_path}: remission must be finite and in [0, 1].")
  return LoadedScene(Scene(coord=coord, strength=strength, segment=segment, instance=instance,
                           name=name, source=bin_path), {}, dropped)


def find_scenes(raw: str) -> list[SourceScene]:
  """The labelled sweeps of the train/val sequences under RAW/sequences."""
  root = os.path.join(raw, "sequences")
  if not os.path.isdir(root):
    raise SceneError(f"{root}: missing; --raw must be the SemanticKITTI dataset root.")
  found = []
  for split, sequences in SPLITS.items():
    for sequence in sequences:
      velodyne = os.path.join(root, f"{sequence:02d}", "velodyne")
      if not os.path.isdir(velodyne):
        continue
      for file_name in sorted(f for f in os.listdir(velodyne) if f.endswith(".bin")):
        frame = file_name[:-len(".bin")]
        label_path = os.path.join(root, f"{sequence:02d}", "labels", frame + ".label")
        found.append(SourceScene(
            split, f"{sequence:02d}_{frame}",
            lambda b=os.path.join(velodyne, file_name), l=label_path,
            n=f"{sequence:02d}_{frame}": convert_scan(b, l, n)))
  if not found:
    raise SceneError(f"{root}: no velodyne/*.bin scans in sequences "
                     f"{sorted(SPLITS['train'] + SPLITS['val'])}.")
  return found
