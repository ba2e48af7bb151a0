"""nuScenes boxes from the official metadata tables, against independent scipy transforms.

The tables here hold one LiDAR key frame (plus two neighbouring samples for velocities)
and six annotations; v1.0-trainval holds 34k samples and 1.2M annotations.
"""
import json
import os

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from experiments import prepare_data
from pointins_jax.data import nuscenes, nuscenes_boxes, pointcept_io
from pointins_jax.data.boxes import DETECTION_ATTRIBUTES, DETECTION_CLASSES
from pointins_jax.data.scene import SceneError

LIDAR = "lidartoken"
# Ego: yaw 120 deg, pitch 3, roll -2 (a non-trivial pose); LIDAR_TOP: about -90 deg yaw and
# slightly tilted, like the real calibration, mounted 1.8 m up.
EGO_R = Rotation.from_euler("ZYX", [120, 3, -2], degrees=True)
EGO_T = np.array([411.3, 1180.9, 0.4])
SENSOR_R = Rotation.from_euler("ZYX", [-89.5, 0.4, -0.3], degrees=True)
SENSOR_T = np.array([0.94, 0.0, 1.84])
T0 = 1_533_151_603_547_590  # microseconds


def _wxyz(rotation):
  x, y, z, w = rotation.as_quat()
  return [w, x, y, z]


def _annotation(token, sample, instance, center, wlh, yaw_deg, attrs=(), prev="", nxt="",
                lidar=5, radar=1):
  return dict(token=token, sample_token=sample, instance_token=instance,
              visibility_token="4", attribute_tokens=list(attrs), translation=list(center),
              size=list(wlh), rotation=_wxyz(Rotation.from_euler("z", yaw_deg, degrees=True)),
              prev=prev, next=nxt, num_lidar_pts=lidar, num_radar_pts=radar)


ANNOTATIONS = [  # (token, sample, instance, centre, wlh, yaw, attributes, prev, next)
    _annotation("car_prev", "s_prev", "i_car", (420.0, 1185.0, 1.0), (1.9, 4.6, 1.7), 40),
    _annotation("car", "s0", "i_car", (421.0, 1186.5, 1.1), (1.9, 4.6, 1.7), 42,
                ("a_moving",), prev="car_prev", nxt="car_next", lidar=120, radar=4),
    _annotation("car_next", "s_next", "i_car", (422.5, 1187.0, 1.2), (1.9, 4.6, 1.7), 44),
    _annotation("ped", "s0", "i_ped", (405.0, 1175.0, 1.2), (0.6, 0.7, 1.8), -100,
                ("a_standing",), lidar=0, radar=0),
    _annotation("barrier", "s0", "i_barrier", (415.0, 1190.0, 0.6), (2.5, 0.4, 1.0), 10,
                prev="barrier_prev"),
    _annotation("barrier_prev", "s_old", "i_barrier", (415.0, 1190.0, 0.6), (2.5, 0.4, 1.0),
                10, nxt="barrier"),
    _annotation("dog", "s0", "i_dog", (410.0, 1182.0, 0.3), (0.3, 0.8, 0.5), 0),
    _annotation("stroller", "s0", "i_stroller", (406.0, 1176.0, 0.5), (0.6, 1.0, 1.0), 0),
]


def _write_tables(raw, overrides=None):
  folder = raw / "v1.0-mini"
  folder.mkdir(parents=True, exist_ok=True)
  tables = dict(
      sample=[dict(token="s0", timestamp=T0, scene_token="sc", prev="s_prev", next="s_next"),
              dict(token="s_prev", timestamp=T0 - 500_000, scene_token="sc", prev="",
                   next="s0"),
              dict(token="s_next", timestamp=T0 + 500_000, scene_token="sc", prev="s0",
                   next=""),
              dict(token="s_old", timestamp=T0 - 2_000_000, scene_token="sc", prev="",
                   next="")],
      sample_data=[dict(token=LIDAR, sample_token="s0", ego_pose_token="ep",
                        calibrated_sensor_token="cs", timestamp=T0, fileformat="pcd",
                        is_key_frame=True, height=0, width=0,
                        filename="samples/LIDAR_TOP/n008__LIDAR_TOP__1533151603547590.pcd.bin",
                        prev="", next="")],
      sample_annotation=ANNOTATIONS,
      instance=[dict(token=f"i_{k}", category_token=f"c_{c}", nbr_annotations=1,
                     first_annotation_token="", last_annotation_token="")
                for k, c in (("car", "car"), ("ped", "adult"), ("barrier", "barrier"),
                             ("dog", "animal"), ("stroller", "stroller"))],
      category=[dict(token="c_car", name="vehicle.car", description=""),
                dict(token="c_adult", name="human.pedestrian.adult", description=""),
                dict(token="c_barrier", name="movable_object.barrier", description=""),
                dict(token="c_animal", name="animal", description=""),
                dict(token="c_stroller", name="human.pedestrian.stroller", description="")],
      attribute=[dict(token="a_moving", name="vehicle.moving", description=""),
                 dict(token="a_standing", name="pedestrian.standing", description="")],
      ego_pose=[dict(token="ep", timestamp=T0, rotation=_wxyz(EGO_R), translation=list(EGO_T))],
      calibrated_sensor=[dict(token="cs", sensor_token="lidar_sensor",
                              translation=list(SENSOR_T), rotation=_wxyz(SENSOR_R),
                              camera_intrinsic=[])],
      sensor=[dict(token="lidar_sensor", channel="LIDAR_TOP", modality="lidar")])
  tables.update(overrides or {})
  for name, records in tables.items():
    if records is not None:
      (folder / f"{name}.json").write_text(json.dumps(records))


def _write_sweep(raw, name=LIDAR):
  (raw / "val").mkdir(parents=True, exist_ok=True)
  (raw / "panoptic" / "val").mkdir(parents=True, exist_ok=True)
  np.array([[1, 2, 3, 255, 0], [4, 5, 6, 0, 1]], np.float32).tofile(raw / "val" /
                                                                     f"{name}.pcd.bin")
  np.savez_compressed(raw / "panoptic" / "val" / f"{name}_panoptic.npz",
                      data=np.array([17003, 24000], np.uint16))


def _expected(ann_token, velocity_global=None):
  """Independent: scipy rotations, sensor <- ego <- global."""
  ann = {a["token"]: a for a in ANNOTATIONS}[ann_token]
  to_sensor = SENSOR_R.inv() * EGO_R.inv()
  center = SENSOR_R.inv().apply(EGO_R.inv().apply(np.array(ann["translation"]) - EGO_T)
                                - SENSOR_T)
  w, x, y, z = ann["rotation"]
  yaw = (to_sensor * Rotation.from_quat([x, y, z, w])).as_euler("ZYX")[0]
  width, length, height = ann["size"]
  velocity = None
  if velocity_global is not None:
    velocity = to_sensor.apply([velocity_global[0], velocity_global[1], 0.0])[:2]
  return center, np.array([length, width, height]), yaw, velocity


def test_quaternion_matrix_matches_scipy():
  rotation = Rotation.from_euler("ZYX", [33, -12, 71], degrees=True)
  np.testing.assert_allclose(nuscenes_boxes.quaternion_matrix(_wxyz(rotation)),
                             rotation.as_matrix(), atol=1e-12)
  with pytest.raises(SceneError, match="not a quaternion"):
    nuscenes_boxes.quaternion_matrix([0, 0, 0, 0], "x.json")


def test_boxes_in_lidar_frame_match_independent_transforms(tmp_path):
  _write_tables(tmp_path)
  _write_sweep(tmp_path)
  [source] = nuscenes.find_scenes(str(tmp_path))
  loaded = source.load()
  boxes = loaded.scene.boxes
  # Kept in table order: car, pedestrian, barrier (dog and stroller have no detection class).
  assert [DETECTION_CLASSES[i] for i in boxes.label] == ["car", "pedestrian", "barrier"]
  assert loaded.boxes_skipped == 2
  # Car: centred difference over 1 s: (422.5-420, 1187-1185) / 1.0 m/s.
  expectations = [_expected("car", [2.5, 2.0]), _expected("ped"), _expected("barrier")]
  for k, (center, size, yaw, velocity) in enumerate(expectations):
    np.testing.assert_allclose(boxes.center[k], center, atol=1e-3)
    np.testing.assert_allclose(boxes.size[k], size, atol=1e-6)
    np.testing.assert_allclose(np.angle(np.exp(1j * (boxes.yaw[k] - yaw))), 0.0, atol=1e-5)
    if velocity is None:
      np.testing.assert_array_equal(boxes.velocity[k], [0.0, 0.0])
    else:
      np.testing.assert_allclose(boxes.velocity[k], velocity, atol=1e-5)
  # Barrier: one-sided difference over 2 s > 1.5 s -> unknown; pedestrian: single annotation.
  np.testing.assert_array_equal(loaded.box_extras["velocity_known"], [True, False, False])
  np.testing.assert_array_equal(loaded.box_extras["num_points"], [120, 0, 5])
  np.testing.assert_array_equal(loaded.box_extras["num_radar_points"], [4, 0, 1])
  # ego_dist (devkit): BEV distance from the ego pose, global frame, by hand.
  np.testing.assert_allclose(loaded.box_extras["ego_distance"], [
      np.hypot(421.0 - 411.3, 1186.5 - 1180.9), np.hypot(405.0 - 411.3, 1175.0 - 1180.9),
      np.hypot(415.0 - 411.3, 1190.0 - 1180.9)], rtol=1e-6)
  assert [DETECTION_ATTRIBUTES[a] if a >= 0 else None for a in boxes.attribute] == [
      "vehicle.moving", "pedestrian.standing", None]
  # Hand check of the frame chain on the car's front-centre point: it must land at
  # centre + l/2 (cos yaw, sin yaw) up to the small pitch/roll left in the sensor frame.
  car = ANNOTATIONS[1]
  front_global = np.array(car["translation"]) + 2.3 * np.array(
      [np.cos(np.deg2rad(42)), np.sin(np.deg2rad(42)), 0.0])
  front = SENSOR_R.inv().apply(EGO_R.inv().apply(front_global - EGO_T) - SENSOR_T)
  np.testing.assert_allclose(front[:2], boxes.center[0, :2] + 2.3 * np.array(
      [np.cos(boxes.yaw[0]), np.sin(boxes.yaw[0])]), atol=0.01)


def test_sweep_found_by_original_file_name_and_prepare_data_writes_boxes(tmp_path, capsys):
  raw = tmp_path / "raw"
  _write_tables(raw, overrides=dict(sensor=None))  # no sensor.json: channel from the path
  _write_sweep(raw, name="n008__LIDAR_TOP__1533151603547590")
  out = str(tmp_path / "out")
  assert prepare_data.main(["nuscenes", "--raw", str(raw), "--out", out]) == 0
  assert "3 detection boxes in 1 of 1 scenes" in capsys.readouterr().out
  [folder] = pointcept_io.list_scenes(out, "val")
  back = pointcept_io.read_scene(folder, "nuscenes")
  center, *_ = _expected("car", [2.5, 2.0])
  np.testing.assert_allclose(back.boxes.center[0], center, atol=1e-3)
  extras = pointcept_io.read_box_extras(folder, 3)
  assert set(extras) == {"num_points", "num_radar_points", "velocity_known", "ego_distance"}


def test_without_tables_no_boxes(tmp_path):
  _write_sweep(tmp_path)
  assert nuscenes.find_scenes(str(tmp_path))[0].load().scene.boxes is None


@pytest.mark.parametrize("case", ["missing_table", "bad_json", "missing_key", "instance",
                                  "unknown_sweep", "two_attributes", "not_key_frame",
                                  "bad_quaternion", "zero_size"])
def test_bad_tables_name_the_file(tmp_path, case):
  overrides, name = {}, LIDAR
  annotations = [dict(a) for a in ANNOTATIONS]
  expected = {"missing_table": "ego_pose.json: missing nuScenes table",
              "bad_json": "category.json: not a readable JSON",
              "missing_key": "sample_annotation.json: record 1 lacks size",
              "instance": "instance.json: no record with token 'i_nowhere'",
              "unknown_sweep": "'other' is neither a sample_data token",
              "two_attributes": "annotation car: 2 attributes",
              "not_key_frame": "not a key frame",
              "bad_quaternion": "ego_pose.json ep: rotation",
              "zero_size": "box_size.npy must be positive"}[case]
  if case == "missing_table":
    overrides["ego_pose"] = None
  elif case == "missing_key":
    del annotations[1]["size"]
  elif case == "instance":
    annotations[1]["instance_token"] = "i_nowhere"
  elif case == "unknown_sweep":
    name = "other"
  elif case == "two_attributes":
    annotations[1]["attribute_tokens"] = ["a_moving", "a_standing"]
  elif case == "zero_size":
    annotations[3]["size"] = [0.6, 0.0, 1.8]
  overrides["sample_annotation"] = annotations
  _write_tables(tmp_path, overrides)
  tables = tmp_path / "v1.0-mini"
  if case == "bad_json":
    (tables / "category.json").write_text("[{")
  elif case == "not_key_frame":
    records = json.loads((tables / "sample_data.json").read_text())
    records[0]["is_key_frame"] = False
    (tables / "sample_data.json").write_text(json.dumps(records))
  elif case == "bad_quaternion":
    records = json.loads((tables / "ego_pose.json").read_text())
    records[0]["rotation"] = [0, 0, 0, 0]
    (tables / "ego_pose.json").write_text(json.dumps(records))
  _write_sweep(tmp_path, name)
  with pytest.raises(SceneError, match=expected):
    nuscenes.find_scenes(str(tmp_path))[0].load()
  assert os.path.isdir(tables)
