"""nuScenes annotation boxes in the LIDAR_TOP frame, from the official metadata tables.

Reads RAW/v1.0-*/{sample,sample_data,sample_annotation,instance,category,attribute,
ego_pose,calibrated_sensor}.json (and sensor.json when present) with the standard library
only: the nuscenes-devkit is not needed. The conversion follows the devkit
(`NuScenes.get_sample_data`, `box_velocity`, `eval.detection.utils`
`category_to_detection_name`) and mmdet3d's `create_data` for nuScenes:

  * frames: a global box goes to the ego frame of the LiDAR sample_data (inverse
    ego_pose) and then to the sensor frame (inverse calibrated_sensor):
      x_sensor = R_s^T (R_e^T (x_global - t_e) - t_s),  R_box_sensor = R_s^T R_e^T R_box.
    Quaternions are [w, x, y, z] (pyquaternion order).
  * size: nuScenes stores [width, length, height]; ours is (length, width, height), the
    length lying along the heading (the box's +x axis).
  * yaw: heading of the rotated box's +x axis, atan2(R[1, 0], R[0, 0]) (= pyquaternion's
    yaw_pitch_roll[0]); any pitch/roll left by the ego's tilt is dropped.
  * class: `DETECTION_NAME` (the devkit's category_to_detection_name); annotations of
    other categories (animal, human.pedestrian.personal_mobility / stroller / wheelchair,
    movable_object.debris / pushable_pullable, static_object.bicycle_rack,
    vehicle.emergency.*) get no box and are counted (`SampleBoxes.skipped`).
  * attribute: the annotation's attribute (0 or 1 of the 8 detection attributes);
    more than one is refused, as the devkit's evaluation does.
  * velocity: the devkit's `box_velocity` (difference of the previous and next
    annotations of the instance over their sample timestamps; 1.5 s at most for a one-sided
    difference, 3 s for a centred one), global frame; its z is dropped and (vx, vy, 0) is
    rotated into the sensor frame, as mmdet3d does. Where the devkit gives NaN (a single
    annotation, or too long a gap) the box gets velocity (0, 0) and
    `velocity_known = False`: finite training targets (mmdet3d also sets 0), and the
    devkit's evaluation leaves such boxes out of AVE, which `velocity_known` allows.
  * every annotation of the sample with a detection class is kept, with its
    num_lidar_pts / num_radar_pts (`box_num_points.npy`, `box_num_radar_points.npy`):
    the official evaluation drops ground-truth boxes with no LiDAR or radar point.
  * `box_ego_distance.npy`: the devkit's ego_dist, |(box translation - ego pose
    translation)[:2]| in the global frame, which its class ranges filter on. It is
    measured from the ego origin (rear axle), not the LiDAR (~1 m ahead of it).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Optional

import numpy as np

from pointins_jax.data.boxes import DETECTION_ATTRIBUTES, DETECTION_CLASSES, BoxError, Boxes
from pointins_jax.data.scene import SceneError

# nuscenes-devkit eval/detection/utils.py category_to_detection_name.
DETECTION_NAME = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}
MAX_TIME_DIFF = 1.5  # s, the devkit's box_velocity default (doubled for centred differences)
# Table -> keys every record must have (what this module reads).
TABLE_KEYS = {
    "sample": ("token", "timestamp"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "calibrated_sensor_token",
                    "filename", "is_key_frame"),
    "sample_annotation": ("token", "sample_token", "instance_token", "attribute_tokens",
                          "translation", "size", "rotation", "prev", "next"),
    "instance": ("token", "category_token"),
    "category": ("token", "name"),
    "attribute": ("token", "name"),
    "ego_pose": ("token", "translation", "rotation"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation"),
}
OPTIONAL_TABLE_KEYS = {"sensor": ("token", "channel")}
LIDAR_CHANNEL = "LIDAR_TOP"


def metadata_folders(raw: str) -> list[str]:
  """The RAW/v1.0-* folders holding a sample_annotation.json, sorted."""
  return sorted(os.path.dirname(path)
                for path in glob.glob(os.path.join(raw, "v1.0-*", "sample_annotation.json")))


def quaternion_matrix(q, source: str = "<memory>") -> np.ndarray:
  """Rotation matrix f64 [3, 3] of a quaternion [w, x, y, z] (normalised first).

  Raises:
    SceneError: naming `source` for a zero or non-finite quaternion.
  """
  q = np.asarray(q, np.float64)
  norm = np.linalg.norm(q) if q.shape == (4,) else 0.0
  if not np.isfinite(norm) or norm < 1e-12:
    raise SceneError(f"{source}: rotation {q.tolist()} is not a quaternion [w, x, y, z].")
  w, x, y, z = q / norm
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@dataclasses.dataclass(frozen=True)
class SampleBoxes:
  """One LiDAR sample's boxes and per-box extras (`pointcept_io.BOX_EXTRA_FILES` keys).

  Attributes:
    boxes: `Boxes` in the LIDAR_TOP frame, velocity f32 [M, 2] m/s always present.
    extras: {"num_points": i32 [M] num_lidar_pts, "num_radar_points": i32 [M],
      "velocity_known": bool [M], "ego_distance": f32 [M] m}.
    skipped: annotations of the sample whose category has no detection class.
  """
  boxes: Boxes
  extras: dict
  skipped: int


class Metadata:
  """The metadata tables of every RAW/v1.0-* folder, indexed by token.

  Loaded once (the trainval tables are ~1 GB of JSON; the devkit loads them the same way).
  """

  def __init__(self, folders: list[str]):
    if not folders:
      raise SceneError("nuScenes metadata: no v1.0-*/sample_annotation.json folder given.")
    self.folders = folders
    self.tables = {name: {} for name in (*TABLE_KEYS, *OPTIONAL_TABLE_KEYS)}
    self.where = {}  # table -> file it came from (first folder), for error messages
    for folder in folders:
      for name in self.tables:
        keys = TABLE_KEYS.get(name) or OPTIONAL_TABLE_KEYS[name]
        path = os.path.join(folder, f"{name}.json")
        if not os.path.isfile(path):
          if name in TABLE_KEYS:
            raise SceneError(f"{path}: missing nuScenes table (boxes need "
                             f"{', '.join(f'{t}.json' for t in TABLE_KEYS)}).")
          continue
        self.where.setdefault(name, path)
        self.tables[name].update(self._load(path, keys))
    self.annotations_of = {}  # sample token -> annotation tokens, table order
    for token, record in self.tables["sample_annotation"].items():
      self.annotations_of.setdefault(record["sample_token"], []).append(token)
    self.by_filename = {os.path.basename(record["filename"]): token
                        for token, record in self.tables["sample_data"].items()}

  @staticmethod
  def _load(path: str, keys) -> dict:
    try:
      with open(path, encoding="utf-8") as stream:
        records = json.load(stream)
    except (OSError, ValueError) as error:
      raise SceneError(f"{path}: not a readable JSON table ({error}).") from error
    if not isinstance(records, list):
      raise SceneError(f"{path}: a nuScenes table is a JSON list of records, got "
                       f"{type(records).__name__}.")
    out = {}
    for i, record in enumerate(records):
      missing = [key for key in keys if not isinstance(record, dict) or key not in record]
      if missing:
        raise SceneError(f"{path}: record {i} lacks {', '.join(missing)} (official nuScenes "
                         "v1.0 table format).")
      out[record["token"]] = record
    return out

  def get(self, table: str, token: str, context: str) -> dict:
    record = self.tables[table].get(token)
    if record is None:
      raise SceneError(f"{self.where.get(table, table + '.json')}: no record with token "
                       f"{token!r} (needed by {context}); the metadata tables are "
                       "incomplete or from another release.")
    return record

  def lidar_token(self, name: str, source: str) -> str:
    """The LiDAR sample_data token of a sweep named by its token or its file name."""
    if name in self.tables["sample_data"]:
      return name
    token = self.by_filename.get(name + ".pcd.bin") or self.by_filename.get(name)
    if token is None:
      raise SceneError(f"{source}: {name!r} is neither a sample_data token nor a sample_data "
                       f"file name in {self.where['sample_data']}; name each sweep by its "
                       "LIDAR_TOP sample_data token (or keep its original file name).")
    return token

  def _velocity(self, annotation: dict) -> np.ndarray:
    """The devkit's box_velocity: f64 [3] m/s in the global frame, NaN when unknown."""
    has_prev, has_next = annotation["prev"] != "", annotation["next"] != ""
    if not has_prev and not has_next:
      return np.full(3, np.nan)
    context = f"velocity of annotation {annotation['token']}"
    first = (self.get("sample_annotation", annotation["prev"], context) if has_prev
             else annotation)
    last = (self.get("sample_annotation", annotation["next"], context) if has_next
            else annotation)
    time_diff = 1e-6 * (self.get("sample", last["sample_token"], context)["timestamp"]
                        - self.get("sample", first["sample_token"], context)["timestamp"])
    max_time_diff = MAX_TIME_DIFF * (2 if has_prev and has_next else 1)
    # time_diff <= 0 (broken tables) would divide by zero in the devkit; unknown here.
    if time_diff > max_time_diff or time_diff <= 0:
      return np.full(3, np.nan)
    return (np.asarray(last["translation"], np.float64)
            - np.asarray(first["translation"], np.float64)) / time_diff

  def sample_boxes(self, lidar_token: str, source: str) -> SampleBoxes:
    """The boxes of the sample of LiDAR sample_data `lidar_token`, in its sensor frame."""
    sample_data = self.get("sample_data", lidar_token, source)
    sensor = self.tables["sensor"].get(
        self.get("calibrated_sensor", sample_data["calibrated_sensor_token"], source)
        ["sensor_token"])
    # Without sensor.json, the channel is the folder of the file (samples/LIDAR_TOP/...).
    channel = (sensor["channel"] if sensor
               else os.path.basename(os.path.dirname(sample_data["filename"])))
    if channel != LIDAR_CHANNEL:
      raise SceneError(f"{source}: sample_data {lidar_token} is a {channel} record; boxes "
                       f"are written in the {LIDAR_CHANNEL} frame of LiDAR sweeps.")
    if not sample_data["is_key_frame"]:
      raise SceneError(f"{source}: sample_data {lidar_token} is not a key frame; nuScenes "
                       "annotates key frames only (samples/LIDAR_TOP).")
    ego = self.get("ego_pose", sample_data["ego_pose_token"], source)
    calib = self.get("calibrated_sensor", sample_data["calibrated_sensor_token"], source)
    ego_r = quaternion_matrix(ego["rotation"], f"{self.where['ego_pose']} {ego['token']}")
    sensor_r = quaternion_matrix(calib["rotation"],
                                 f"{self.where['calibrated_sensor']} {calib['token']}")
    to_sensor = sensor_r.T @ ego_r.T  # global -> sensor rotation
    ego_t = np.asarray(ego["translation"], np.float64)
    sensor_t = np.asarray(calib["translation"], np.float64)
    attribute_names = {token: record["name"]
                       for token, record in self.tables["attribute"].items()}
    rows, skipped = [], 0
    for token in self.annotations_of.get(sample_data["sample_token"], []):
      ann = self.tables["sample_annotation"][token]
      where = f"{self.where['sample_annotation']} annotation {token}"
      instance = self.get("instance", ann["instance_token"], where)
      category = self.get("category", instance["category_token"], where)["name"]
      name = DETECTION_NAME.get(category)
      if name is None:
        skipped += 1
        continue
      if len(ann["attribute_tokens"]) > 1:
        raise SceneError(f"{where}: {len(ann['attribute_tokens'])} attributes; detection "
                         "ground truth has at most one (as the devkit's evaluation checks).")
      attribute = -1
      if ann["attribute_tokens"]:
        attr_name = attribute_names.get(ann["attribute_tokens"][0])
        if attr_name not in DETECTION_ATTRIBUTES:
          raise SceneError(f"{where}: attribute {attr_name or ann['attribute_tokens'][0]!r} "
                           f"is not one of {DETECTION_ATTRIBUTES} (or not in attribute.json).")
        attribute = DETECTION_ATTRIBUTES.index(attr_name)
      width, length, height = ann["size"]
      center = to_sensor @ np.asarray(ann["translation"], np.float64) - sensor_r.T @ (
          ego_r.T @ ego_t + sensor_t)
      rotation = to_sensor @ quaternion_matrix(ann["rotation"], where)
      velocity = self._velocity(ann)
      known = bool(np.isfinite(velocity[:2]).all())
      # mmdet3d: (vx, vy, 0) rotated by the inverse ego and sensor rotations.
      velocity = to_sensor @ np.array([*velocity[:2], 0.0]) if known else np.zeros(3)
      ego_distance = np.linalg.norm(np.asarray(ann["translation"], np.float64)[:2]
                                    - ego_t[:2])
      rows.append((center, (length, width, height), np.arctan2(rotation[1, 0], rotation[0, 0]),
                   DETECTION_CLASSES.index(name), velocity[:2], attribute,
                   int(ann.get("num_lidar_pts", -1)), int(ann.get("num_radar_pts", -1)), known,
                   ego_distance))
    m = len(rows)
    column = lambda i, dtype, shape: np.asarray([r[i] for r in rows], dtype).reshape(shape)  # pylint: disable=unnecessary-lambda-assignment
    boxes = Boxes(center=column(0, np.float32, (m, 3)), size=column(1, np.float32, (m, 3)),
                  yaw=column(2, np.float32, (m,)), label=column(3, np.int32, (m,)),
                  velocity=column(4, np.float32, (m, 2)), attribute=column(5, np.int32, (m,)))
    try:
      boxes.validate(source=f"{source} (boxes from {os.path.dirname(self.where['sample'])})")
    except BoxError as error:  # e.g. a zero size in sample_annotation.json
      raise SceneError(str(error)) from error
    extras = {"velocity_known": column(8, bool, (m,)),
              "ego_distance": column(9, np.float32, (m,))}
    for i, key in ((6, "num_points"), (7, "num_radar_points")):
      counts = column(i, np.int32, (m,))
      if m and counts.min() >= 0:  # -1: the table has no count (older releases)
        extras[key] = counts
    return SampleBoxes(boxes, extras, skipped)


def load_metadata(raw: str) -> Optional[Metadata]:
  """The tables under RAW/v1.0-*, or None when there are none (lidarseg-only layout)."""
  folders = metadata_folders(raw)
  return Metadata(folders) if folders else None
