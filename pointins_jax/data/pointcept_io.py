"""Pointcept scene folders: `ROOT/{train,val}/<scene>/{coord,color,...}.npy`.

One folder per scene, one `.npy` per attribute (the layout Pointcept's preprocessing
scripts write for ScanNet, ScanNet200, S3DIS and Structured3D, and what
`experiments.prepare_data` writes for every source):

  coord.npy     float32 [N, 3] metres
  color.npy     [N, 3] RGB in 0..255 (uint8 or float)        optional
  normal.npy    float32 [N, 3] unit vectors                    optional
  strength.npy  float32 [N] or [N, 1] LiDAR intensity in [0,1] optional
  segment.npy / segment20.npy / segment200.npy  int [N], -1 = ignore
  instance.npy  int [N], -1 = no instance                     optional

Detection boxes (`boxes.Boxes`, one row per box, in the scene's frame), optional:

  box_center.npy float32 [M, 3] m; box_size.npy float32 [M, 3] (length, width, height) m;
  box_yaw.npy float32 [M] rad; box_label.npy int [M] (index into DETECTION_CLASSES)
      -- these four together or not at all (M = 0 rows: annotated, no objects)
  box_velocity.npy float32 [M, 2] m/s       optional
  box_attribute.npy int [M], -1 = none      optional
  box_num_points.npy int [M]                optional: LiDAR points in each box (nuScenes
                                            num_lidar_pts; synthetic: the instance's points)
  box_num_radar_points.npy int [M]          optional: nuScenes num_radar_pts
  box_velocity_known.npy bool [M]           optional: False where box_velocity.npy holds
                                            0 for an unknown velocity (nuScenes NaN)
  box_ego_distance.npy float32 [M]          optional: BEV distance (m) of the box centre
                                            from the ego pose, as nuScenes' class ranges use
The last four are per-box extras outside `Boxes` (`BOX_EXTRA_FILES`): nuScenes'
evaluation drops ground-truth boxes with num_lidar_pts + num_radar_pts == 0 and leaves
unknown velocities out of AVE; they are written by prepare_data and read with
`read_box_extras`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Optional

import numpy as np

from pointins_jax.data import labels
from pointins_jax.data.boxes import BOX_FILES, BoxError, Boxes
from pointins_jax.data.scene import Scene, SceneError

# Used when read_scene is not told the dataset: the first that exists is `segment`.
_DEFAULT_SEGMENT_FILES = ("segment.npy", "segment20.npy", "segment200.npy")
_REQUIRED_BOX_FIELDS = ("center", "size", "yaw", "label")
# Optional per-box extras (module docstring): key -> (file, numpy dtype kind).
BOX_EXTRA_FILES = {"num_points": ("box_num_points.npy", np.integer),
                   "num_radar_points": ("box_num_radar_points.npy", np.integer),
                   "velocity_known": ("box_velocity_known.npy", np.bool_),
                   "ego_distance": ("box_ego_distance.npy", np.floating)}


def write_scene(scene: Scene, folder: str,
                extra_segments: Optional[Mapping[str, np.ndarray]] = None,
                box_extras: Optional[Mapping[str, np.ndarray]] = None) -> None:
  """Writes `scene` as one Pointcept folder (created if needed).

  Args:
    scene: the scene; absent (None) attributes are not written. Its boxes, when present,
      go to box_*.npy (module docstring); box files left in `folder` by an earlier write
      that this scene does not have are removed, so a re-write cannot mix old boxes in.
    folder: output folder, e.g. OUT/train/scene0000_00.
    extra_segments: more label files, e.g. {"segment20": s20, "segment200": s200}
      (int [N] each), written as `<key>.npy` next to `segment.npy`.
    box_extras: per-box arrays [M] keyed as `BOX_EXTRA_FILES`, or None.
  """
  os.makedirs(folder, exist_ok=True)
  box_arrays = {name: None for name in BOX_FILES.values()}
  box_arrays.update({name: None for name, _ in BOX_EXTRA_FILES.values()})
  if scene.boxes is not None:
    for field, name in BOX_FILES.items():
      box_arrays[name] = getattr(scene.boxes, field)
  for key, value in dict(box_extras or {}).items():
    if key not in BOX_EXTRA_FILES:
      raise SceneError(f"{folder}: unknown box extra {key!r}; known: "
                       f"{sorted(BOX_EXTRA_FILES)}.")
    name, kind = BOX_EXTRA_FILES[key]
    if scene.boxes is None:
      raise SceneError(f"{folder}: box extra {key!r} given but the scene has no boxes.")
    value = np.asarray(value)
    if value.shape != (len(scene.boxes),) or not np.issubdtype(value.dtype, kind):
      raise SceneError(f"{folder}: box extra {key!r} must be {kind.__name__} "
                       f"[{len(scene.boxes)}] (one per box), got {value.dtype} {value.shape}.")
    box_arrays[name] = value
  for name, value in box_arrays.items():
    path = os.path.join(folder, name)
    if value is not None:
      np.save(path, value)
    elif os.path.isfile(path):
      os.remove(path)
  arrays = {"coord": scene.coord, "color": scene.color, "normal": scene.normal,
            "strength": scene.strength, "segment": scene.segment, "instance": scene.instance}
  for key, value in dict(extra_segments or {}).items():
    value = np.asarray(value)
    if value.shape != (scene.num_points,) or not np.issubdtype(value.dtype, np.integer):
      raise SceneError(f"{folder}: extra segment {key!r} must be int [{scene.num_points}], "
                       f"got {value.dtype} {value.shape}.")
    arrays[key] = value.astype(np.int32)
  for key, value in arrays.items():
    if value is not None:
      np.save(os.path.join(folder, key + ".npy"), value)


def _load(path: str, required: bool) -> Optional[np.ndarray]:
  if not os.path.isfile(path):
    if required:
      raise SceneError(f"{path}: missing file (a Pointcept scene folder needs coord.npy; "
                       "rerun experiments.prepare_data).")
    return None
  try:
    return np.load(path, allow_pickle=False)
  except (ValueError, OSError) as error:
    raise SceneError(f"{path}: not a readable .npy array ({error}); regenerate it.") from error


def read_scene(folder: str, dataset: Optional[str] = None) -> Scene:
  """Reads one Pointcept scene folder into a validated `Scene`.

  Args:
    folder: the scene folder.
    dataset: a `labels.DATASET_NAMES` entry; selects the segment file (e.g. ScanNet200
      -> segment200.npy) and checks class ids against its number of classes. Without
      it the first of segment.npy, segment20.npy, segment200.npy present is used.
  """
  if not os.path.isdir(folder):
    raise SceneError(f"{folder}: scene folder does not exist.")
  coord = _load(os.path.join(folder, "coord.npy"), required=True)
  path = os.path.join(folder, "coord.npy")
  if coord.ndim != 2 or coord.shape[1] != 3 or not np.issubdtype(coord.dtype, np.number):
    raise SceneError(f"{path}: expected a numeric [N, 3] array, got {coord.dtype} "
                     f"{coord.shape}.")
  if not np.isfinite(coord).all():
    raise SceneError(f"{path}: {int((~np.isfinite(coord).all(1)).sum())} points have "
                     "NaN/inf coordinates; clean the scene (prepare_data drops and counts "
                     "them).")
  num_points = coord.shape[0]
  if dataset is None:
    info, segment_files = None, _DEFAULT_SEGMENT_FILES
  else:
    info = labels.dataset_info(dataset)
    segment_files = (info.segment_file,)
    if not os.path.isfile(os.path.join(folder, info.segment_file)):
      raise SceneError(f"{os.path.join(folder, info.segment_file)}: missing; dataset "
                       f"{dataset!r} reads its labels from {info.segment_file}.")
  segment_file = next((f for f in segment_files if os.path.isfile(os.path.join(folder, f))),
                      None)
  fields = {"color": "color.npy", "normal": "normal.npy", "strength": "strength.npy",
            "instance": "instance.npy", "segment": segment_file}
  values = {}
  for field, name in fields.items():
    if name is None:
      continue
    path = os.path.join(folder, name)
    value = _load(path, required=False)
    if value is not None and (value.ndim == 0 or value.shape[0] != num_points):
      raise SceneError(f"{path}: has shape {value.shape} but coord.npy has {num_points} "
                       "points; the files of a scene must agree.")
    values[field] = value
  strength = values.get("strength")
  if strength is not None and strength.size and (strength.min() < 0 or strength.max() > 1):
    raise SceneError(f"{os.path.join(folder, 'strength.npy')}: values must lie in [0, 1], "
                     f"got [{strength.min()}, {strength.max()}]; divide raw 0..255 "
                     "intensities by 255.")
  scene = Scene(coord=coord, name=os.path.basename(os.path.normpath(folder)), source=folder,
                boxes=read_boxes(folder), **values)
  if info is not None:
    scene.validate(num_classes=info.num_classes)
  return scene


def read_boxes(folder: str) -> Optional[Boxes]:
  """The scene's boxes from box_*.npy (module docstring), or None when it has none.

  Raises:
    SceneError: some but not all of box_center/size/yaw/label exist (naming the missing
      files), or a box file is unreadable or malformed (naming it).
  """
  present = {field: os.path.isfile(os.path.join(folder, BOX_FILES[field]))
             for field in BOX_FILES}
  if not any(present[field] for field in _REQUIRED_BOX_FIELDS):
    extra = [BOX_FILES[f] for f in ("velocity", "attribute") if present[f]]
    extra += [name for name, _ in BOX_EXTRA_FILES.values()
              if os.path.isfile(os.path.join(folder, name))]
    if extra:
      raise SceneError(f"{folder}: has {', '.join(extra)} but no "
                       "box_center/size/yaw/label.npy; write the boxes together or delete "
                       "the stray file.")
    return None
  missing = [BOX_FILES[field] for field in _REQUIRED_BOX_FIELDS if not present[field]]
  if missing:
    raise SceneError(f"{os.path.join(folder, missing[0])}: missing; boxes need "
                     f"{', '.join(BOX_FILES[f] for f in _REQUIRED_BOX_FIELDS)} together "
                     f"(missing: {', '.join(missing)}). Rerun experiments.prepare_data.")
  values = {field: _load(os.path.join(folder, BOX_FILES[field]), required=False)
            for field in BOX_FILES}
  for field, value in values.items():
    if value is not None and value.ndim == 0:
      raise SceneError(f"{os.path.join(folder, BOX_FILES[field])}: a 0-d array; box files "
                       "hold one row per box.")
  # Validation (shapes agree, finite, sizes > 0, ids in range) names the file; Scene
  # re-validates it with the scene's name.
  try:
    return Boxes(**values).validate(source=folder)
  except BoxError as error:
    raise SceneError(str(error)) from error


def read_box_extras(folder: str, num_boxes: int) -> dict[str, np.ndarray]:
  """The per-box extras present in a scene folder, {key: [M] array} (`BOX_EXTRA_FILES`).

  Raises:
    SceneError: naming the file when it is not one value of the right kind per box.
  """
  out = {}
  for key, (name, kind) in BOX_EXTRA_FILES.items():
    path = os.path.join(folder, name)
    value = _load(path, required=False)
    if value is None:
      continue
    if value.shape != (num_boxes,) or not np.issubdtype(value.dtype, kind):
      raise SceneError(f"{path}: must be {kind.__name__} [{num_boxes}] (one per box), got "
                       f"{value.dtype} {value.shape}.")
    out[key] = value
  return out


def list_scenes(root: str, split: str) -> list[str]:
  """Sorted paths of the scene folders under `root/split` (those holding coord.npy)."""
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f"{split_dir}: no such split folder; expected the Pointcept "
                            "layout ROOT/{train,val}/<scene>/coord.npy (see "
                            "experiments.prepare_data).")
  scenes = sorted(os.path.join(split_dir, name) for name in os.listdir(split_dir)
                  if os.path.isfile(os.path.join(split_dir, name, "coord.npy")))
  if not scenes:
    raise FileNotFoundError(f"{split_dir}: holds no scene folders with coord.npy.")
  return scenes


@dataclasses.dataclass(frozen=True)
class LoadedScene:
  """A converted scene ready for `write_scene`.

  Attributes:
    scene: the scene.
    extra_segments: more label files, e.g. {"segment20": ..., "segment200": ...}.
    dropped: points removed on purpose (NaN/inf coordinates), reported by prepare_data.
    warnings: labels lost on the way, one line each naming the file and what was lost
      (printed by prepare_data).
    box_extras: per-box arrays of `scene.boxes` keyed as `BOX_EXTRA_FILES`.
    boxes_skipped: annotations of the source that got no box (their category has no
      detection class), counted by prepare_data.
  """
  scene: Scene
  extra_segments: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  dropped: int = 0
  warnings: tuple[str, ...] = ()
  box_extras: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  boxes_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class SourceScene:
  """One scene of a raw dataset: its split, output name and a loader (read on demand)."""
  split: str
  name: str
  load: Callable[[], LoadedScene]
