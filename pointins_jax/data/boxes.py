"""Oriented 3D boxes of a scene (detection annotations) and the nuScenes detection classes.

A box is its centre (m), size (length along its heading, width, height; m), yaw (rad,
counter-clockwise about +z from +x, so the heading is (cos yaw, sin yaw)), a detection
class id (index into `DETECTION_CLASSES`) and, when the data has it, a BEV velocity (m/s).
All are in the scene's own frame (the LiDAR frame for nuScenes; the sweep's frame for
synthetic-outdoor). Scene folders store them as `box_center.npy` [M, 3],
`box_size.npy` [M, 3], `box_yaw.npy` [M], `box_label.npy` [M] and optionally
`box_velocity.npy` [M, 2] and `box_attribute.npy` [M].
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

# The 10 classes of the nuScenes detection benchmark, in the devkit's order
# (nuscenes/eval/detection/configs/detection_cvpr_2019.json).
DETECTION_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
                     "motorcycle", "bicycle", "traffic_cone", "barrier")
# The benchmark's class ranges: boxes farther than this (BEV distance from the ego/sensor
# origin, m) are removed from both ground truth and predictions before matching.
DETECTION_CLASS_RANGE = {"car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0,
                         "construction_vehicle": 50.0, "pedestrian": 40.0,
                         "motorcycle": 40.0, "bicycle": 40.0, "traffic_cone": 30.0,
                         "barrier": 30.0}
# The benchmark's 8 attributes (scored by AAE); -1 = no attribute (e.g. barriers, cones).
DETECTION_ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving",
                        "pedestrian.sitting_lying_down", "pedestrian.standing",
                        "vehicle.moving", "vehicle.parked", "vehicle.stopped")
NO_ATTRIBUTE = -1
BOX_FILES = {"center": "box_center.npy", "size": "box_size.npy", "yaw": "box_yaw.npy",
             "label": "box_label.npy", "velocity": "box_velocity.npy",
             "attribute": "box_attribute.npy"}


class BoxError(ValueError):
  """Bad box data. The message names the source (file or field) and the fix."""


@dataclasses.dataclass
class Boxes:
  """M oriented boxes.

  Attributes:
    center: float32 [M, 3], metres.
    size: float32 [M, 3], (length, width, height) in metres, all > 0.
    yaw: float32 [M], radians about +z.
    label: int32 [M], index into `DETECTION_CLASSES` (or the dataset's class list).
    velocity: float32 [M, 2] (vx, vy) in m/s, or None when the data has no velocity.
    attribute: int32 [M], index into `DETECTION_ATTRIBUTES` or NO_ATTRIBUTE (-1); or None.
  """

  center: np.ndarray
  size: np.ndarray
  yaw: np.ndarray
  label: np.ndarray
  velocity: Optional[np.ndarray] = None
  attribute: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return int(np.asarray(self.center).shape[0])

  def validate(self, source: str = "<memory>", num_classes: int = len(DETECTION_CLASSES)
               ) -> "Boxes":
    """Checks shapes, finiteness, positive sizes and class ids; casts dtypes in place.

    Raises:
      BoxError: naming `source` and the offending field (its box file).
    """
    m = None
    for field, tail in (("center", (3,)), ("size", (3,)), ("yaw", ()), ("label", ()),
                        ("velocity", (2,)), ("attribute", ())):
      value = getattr(self, field)
      if value is None:
        if field not in ("velocity", "attribute"):
          raise BoxError(f"{source}: boxes need {BOX_FILES[field]} ({field}).")
        continue
      value = np.asarray(value)
      if value.ndim == 2 and tail == () and value.shape[1] == 1:
        value = value[:, 0]
      m = value.shape[0] if m is None and value.ndim >= 1 else m
      if value.ndim != 1 + len(tail) or value.shape[1:] != tail or value.shape[0] != m:
        raise BoxError(f"{source}: {BOX_FILES[field]} must have shape {(m, *tail)}, got "
                       f"{value.shape}; every box file holds one row per box.")
      if field in ("label", "attribute"):
        low, high = (0, num_classes) if field == "label" else (NO_ATTRIBUTE,
                                                                len(DETECTION_ATTRIBUTES))
        if not np.issubdtype(value.dtype, np.integer):
          raise BoxError(f"{source}: {BOX_FILES[field]} must be integer ids, got "
                         f"dtype {value.dtype}.")
        if value.size and (value.min() < low or value.max() >= high):
          raise BoxError(f"{source}: {BOX_FILES[field]} has ids outside {low}.."
                         f"{high - 1} (min {value.min()}, max {value.max()}); map "
                         f"them to the detection {field}s.")
        value = value.astype(np.int32, copy=False)
      else:
        if not np.issubdtype(value.dtype, np.number):
          raise BoxError(f"{source}: {BOX_FILES[field]} must be numeric, got {value.dtype}.")
        value = value.astype(np.float32, copy=False)
        if not np.isfinite(value).all():
          raise BoxError(f"{source}: {BOX_FILES[field]} has NaN/inf values.")
      if field == "size" and value.size and value.min() <= 0:
        raise BoxError(f"{source}: {BOX_FILES[field]} must be positive (min "
                       f"{value.min():.3g} m); every box needs length, width, height > 0.")
      setattr(self, field, value)
    return self

  def subset(self, index) -> "Boxes":
    """The boxes selected by `index` (int indices or a boolean mask)."""
    def take(a):
      return None if a is None else a[index]
    return Boxes(self.center[index], self.size[index], self.yaw[index], self.label[index],
                 take(self.velocity), take(self.attribute))

  @classmethod
  def empty(cls, with_velocity: bool = False) -> "Boxes":
    return cls(np.zeros((0, 3), np.float32), np.ones((0, 3), np.float32),
               np.zeros((0,), np.float32), np.zeros((0,), np.int32),
               np.zeros((0, 2), np.float32) if with_velocity else None)
