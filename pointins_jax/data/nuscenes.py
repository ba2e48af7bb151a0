"""nuScenes LiDAR sweeps -> scenes with the 16 lidarseg classes and panoptic instances.

Layout read here (no nuscenes-devkit needed):
  RAW/{train,val}/<token>.pcd.bin                  float32 [N, 5]: x, y, z, intensity
                                                   (0..255), ring index
  RAW/panoptic/{train,val}/<token>_panoptic.npz    key 'data': int [N] = general class
                                                   (0..31) * 1000 + instance (0 = none)

To get it from a devkit install, symlink each keyframe's `samples/LIDAR_TOP/*.pcd.bin`
and its `panoptic/v1.0-*/<lidar_token>_panoptic.npz` into this layout (split by
`nuscenes.utils.splits`). General classes map to the 16 merged classes through
`labels.NUSCENES_GENERAL_TO_16` (noise and the other unused classes -> -1); thing points
(classes 0-9) with a non-zero instance keep one id per panoptic value.

Detection boxes: when RAW/v1.0-*/ holds the official metadata tables (copy or symlink
the devkit's v1.0-trainval / v1.0-mini folder), every sweep also gets its sample's
annotation boxes in its LIDAR_TOP frame (`nuscenes_boxes`; a sweep is found by its
sample_data token or its original file name). Without the tables, scenes have no boxes
(segmentation-only conversion; `find_scenes` logs it once).
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np

from pointins_jax.data import labels, nuscenes_boxes
from pointins_jax.data.pointcept_io import LoadedScene, SourceScene
from pointins_jax.data.scene import NO_INSTANCE, Scene, SceneError, drop_non_finite

SPLITS = ("train", "val")
_GENERAL_TO_16 = np.asarray(labels.NUSCENES_GENERAL_TO_16, np.int32)


def read_points(path: str) -> np.ndarray:
  """float32 [N, 5] (x, y, z, intensity, ring) of a .pcd.bin file."""
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing LiDAR sweep.")
  size = os.path.getsize(path)
  if size == 0:
    raise SceneError(f"{path}: empty scan (0 bytes).")
  if size % 20:
    raise SceneError(f"{path}: {size} bytes is not a multiple of 20 (5 float32 per point: "
                     "x, y, z, intensity, ring); the file is truncated or not a nuScenes "
                     "sweep.")
  return np.fromfile(path, np.float32).reshape(-1, 5)


def read_panoptic(path: str, num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """(segment int32 [N] 0..15 / -1, instance int32 [N] / -1) of a panoptic .npz file."""
  if not os.path.isfile(path):
    raise SceneError(f"{path}: missing panoptic label file.")
  try:
    with np.load(path, allow_pickle=False) as archive:
      panoptic = archive["data"]
  except (KeyError, ValueError, OSError) as error:
    raise SceneError(f"{path}: not an .npz with a 'data' array ({error}).") from error
  if panoptic.shape != (num_points,) or not np.issubdtype(panoptic.dtype, np.integer):
    raise SceneError(f"{path}: 'data' must be int [{num_points}] (one per point), got "
                     f"{panoptic.dtype} {panoptic.shape}.")
  panoptic = panoptic.astype(np.int64)
  general = panoptic // 1000
  bad = (panoptic < 0) | (general >= len(_GENERAL_TO_16))
  if bad.any():
    raise SceneError(f"{path}: panoptic values {sorted(set(panoptic[bad].tolist()))[:5]} "
                     f"have a general class outside 0..{len(_GENERAL_TO_16) - 1}.")
  segment = _GENERAL_TO_16[general]
  is_thing = np.isin(segment, labels.NUSCENES_THING_CLASSES) & (panoptic % 1000 > 0)
  _, compact = np.unique(panoptic[is_thing], return_inverse=True)
  instance = np.full(num_points, NO_INSTANCE, np.int32)
  instance[is_thing] = compact
  return segment, instance


def convert_sweep(bin_path: str, label_path: str, name: str,
                  metadata: Optional[nuscenes_boxes.Metadata] = None) -> LoadedScene:
  """One sweep as a scene; with `metadata`, its sample's boxes (LIDAR_TOP frame) too."""
  points = read_points(bin_path)
  segment, instance = read_panoptic(label_path, len(points))
  coord, intensity, segment, instance, dropped = drop_non_finite(
      points[:, :3], points[:, 3], segment, instance, source=bin_path)
  if not np.isfinite(intensity).all() or intensity.min() < 0 or intensity.max() > 255:
    raise SceneError(f"{bin_path}: intensity must be finite and in [0, 255].")
  sample = None
  if metadata is not None:
    sample = metadata.sample_boxes(metadata.lidar_token(name, bin_path), bin_path)
  # Pointcept's nuScenes loader scales intensity to [0, 1] the same way.
  scene = Scene(coord=coord, strength=intensity / 255.0, segment=segment, instance=instance,
                name=name, source=bin_path, boxes=None if sample is None else sample.boxes)
  if sample is None:
    return LoadedScene(scene, {}, dropped)
  return LoadedScene(scene, {}, dropped, box_extras=sample.extras,
                     boxes_skipped=sample.skipped)


def find_scenes(raw: str) -> list[SourceScene]:
  """The sweeps under RAW/{train,val} with their panoptic labels (and boxes, when RAW has
  the v1.0-* metadata tables)."""
  metadata = nuscenes_boxes.load_metadata(raw)
  if metadata is None:
    logging.warning("nuScenes %s: no v1.0-*/sample_annotation.json; converting without "
                    "detection boxes.", raw)
  found = []
  for split in SPLITS:
    folder = os.path.join(raw, split)
    if not os.path.isdir(folder):
      continue
    for file_name in sorted(f for f in os.listdir(folder) if f.endswith(".pcd.bin")):
      token = file_name[:-len(".pcd.bin")]
      label_path = os.path.join(raw, "panoptic", split, f"{token}_panoptic.npz")
      found.append(SourceScene(split, token,
                               lambda b=os.path.join(folder, file_name), l=label_path, n=token:
                               convert_sweep(b, l, n, metadata)))
  if not found:
    raise SceneError(f"{raw}: no {{train,val}}/<token>.pcd.bin sweeps (see the layout in "
                     "pointins_jax/data/nuscenes.py).")
  return found
