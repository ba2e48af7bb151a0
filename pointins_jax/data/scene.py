"""The scene record: one point cloud with optional attributes and labels.

Every reader (synthetic, Pointcept folders, ScanNet raw, SemanticKITTI,
nuScenes) produces a `Scene`; every transform consumes one. Validation happens
on construction so that bad input fails where it enters, naming its source.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from pointins_jax.data.boxes import BoxError, Boxes

IGNORE_INDEX = -1  # `segment` value of unlabelled / ignored points
NO_INSTANCE = -1  # `instance` value of points that belong to no instance


class SceneError(ValueError):
  """Bad scene data. The message names the source (file or field) and the fix."""


@dataclasses.dataclass
class Scene:
  """One scan.

  Attributes:
    coord: float32 [N, 3], metres.
    color: float32 [N, 3] in [0, 255] (raw RGB), or None.
    normal: float32 [N, 3] unit vectors, or None.
    strength: float32 [N] LiDAR intensity in [0, 1], or None.
    segment: int32 [N] semantic class id, IGNORE_INDEX = -1; or None.
    instance: int32 [N] instance id, NO_INSTANCE = -1; or None.
    name: scene name (folder name in the Pointcept layout).
    source: where the data came from (a path), used in error messages.
    boxes: detection boxes (`boxes.Boxes`, M boxes in this scene's frame), or None when
      the scene has no box annotation (an empty `Boxes` means "annotated, no objects").
      Boxes are per scene, not per point: `subset` keeps all of them, and transforms
      that move the points move them (`transforms.GeometricAugmenter`).
  """

  coord: np.ndarray
  color: Optional[np.ndarray] = None
  normal: Optional[np.ndarray] = None
  strength: Optional[np.ndarray] = None
  segment: Optional[np.ndarray] = None
  instance: Optional[np.ndarray] = None
  name: str = "scene"
  source: str = "<memory>"
  boxes: Optional[Boxes] = None

  def __post_init__(self):
    self.validate()

  @property
  def num_points(self) -> int:
    return int(self.coord.shape[0])

  def validate(self, num_classes: Optional[int] = None) -> None:
    """Checks shapes, dtypes, finiteness and label ranges; casts dtypes in place."""
    where = f"{self.source} (scene {self.name!r})"
    coord = np.asarray(self.coord)
    if coord.ndim != 2 or coord.shape[1] != 3:
      raise SceneError(f"{where}: coord must have shape [N, 3], got {coord.shape}.")
    if coord.shape[0] == 0:
      raise SceneError(f"{where}: the scan is empty (0 points); re-export or remove it.")
    if not np.issubdtype(coord.dtype, np.number):
      raise SceneError(f"{where}: coord must be numeric, got dtype {coord.dtype}.")
    coord = coord.astype(np.float32, copy=False)
    bad = ~np.isfinite(coord).all(axis=1)
    if bad.any():
      raise SceneError(
          f"{where}: {int(bad.sum())} of {len(coord)} points have NaN/inf coordinates "
          "(first at index {}). Remove them with `drop_non_finite` and report the "
          "count.".format(int(np.flatnonzero(bad)[0])))
    self.coord = coord
    n = coord.shape[0]
    for field, width in (("color", 3), ("normal", 3), ("strength", None)):
      value = getattr(self, field)
      if value is None:
        continue
      value = np.asarray(value)
      shape = (n, width) if width else (n,)
      if width is None and value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]
      if value.shape != shape:
        raise SceneError(f"{where}: {field} must have shape {shape}, got {value.shape}.")
      value = value.astype(np.float32, copy=False)
      if not np.isfinite(value).all():
        raise SceneError(f"{where}: {field} has NaN/inf values.")
      setattr(self, field, value)
    for field in ("segment", "instance"):
      value = getattr(self, field)
      if value is None:
        continue
      value = np.asarray(value)
      if value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]
      if value.shape != (n,):
        raise SceneError(f"{where}: {field} must have shape ({n},), got {value.shape}.")
      if not np.issubdtype(value.dtype, np.integer):
        raise SceneError(f"{where}: {field} must be integer, got dtype {value.dtype}.")
      if value.size and value.min() < -1:
        raise SceneError(f"{where}: {field} has ids below -1 (min {value.min()}); "
                         "use -1 for ignore / no instance.")
      setattr(self, field, value.astype(np.int32, copy=False))
    if self.boxes is not None:
      if not isinstance(self.boxes, Boxes):
        raise SceneError(f"{where}: boxes must be a pointins_jax.data.boxes.Boxes, got "
                         f"{type(self.boxes).__name__}.")
      try:  # a scene error (loaders catch SceneError), naming the scene and the box file
        self.boxes.validate(source=where)
      except BoxError as error:
        raise SceneError(str(error)) from error
    if num_classes is not None and self.segment is not None and self.segment.size:
      if self.segment.max() >= num_classes:
        raise SceneError(
            f"{where}: segment has class id {int(self.segment.max())} but the dataset "
            f"has {num_classes} classes (ids 0..{num_classes - 1}, -1 = ignore).")

  def subset(self, index: np.ndarray) -> "Scene":
    """The scene restricted to `index` (int indices or a boolean mask).

    Boxes are not per point, so all of them are kept (a box may be left with no point);
    spatial crops decide which boxes they keep (`transforms.boxes_in_ball`).
    """
    def take(a):
      return None if a is None else a[index]
    return Scene(coord=self.coord[index], color=take(self.color), normal=take(self.normal),
                 strength=take(self.strength), segment=take(self.segment),
                 instance=take(self.instance), name=self.name, source=self.source,
                 boxes=self.boxes)


def drop_non_finite(coord: np.ndarray, *arrays, source: str = "<memory>"):
  """Removes points with NaN/inf coordinates on purpose; returns (kept arrays..., count).

  Readers call this and report the count, so nothing is dropped silently.
  Raises:
    SceneError: naming `source` when no point is left (every coordinate non-finite).
  """
  keep = np.isfinite(coord).all(axis=1)
  dropped = int((~keep).sum())
  if dropped and not keep.any():
    raise SceneError(f"{source}: no finite points left (all {dropped} have NaN/inf "
                     "coordinates); the scan is unusable, re-export or remove it.")
  out = [coord[keep]] + [None if a is None else a[keep] for a in arrays]
  return (*out, dropped)
