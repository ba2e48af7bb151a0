"""Boxes on scenes: validation on construction, Pointcept folder round trip, bad box files.

The folders here hold 5 points and 2-3 boxes (nuScenes sweeps: ~35k points, ~30 boxes).
"""
import os

import numpy as np
import pytest

from pointins_jax.data import pointcept_io
from pointins_jax.data.boxes import BOX_FILES, Boxes
from pointins_jax.data.scene import Scene, SceneError


def _boxes(with_extras=True):
  return Boxes(center=np.float32([[1, 2, 0.5], [-3, 4, 1.0]]),
               size=np.float32([[4.5, 1.9, 1.6], [0.7, 0.6, 1.8]]),
               yaw=np.float32([0.3, -2.0]), label=np.int32([0, 5]),
               velocity=np.float32([[3, 0.5], [0, 0]]) if with_extras else None,
               attribute=np.int32([5, 4]) if with_extras else None)


def _scene(boxes=None):
  rng = np.random.default_rng(0)
  return Scene(coord=rng.normal(size=(5, 3)).astype(np.float32),
               segment=np.int32([0, 1, 2, -1, 5]), name="s", source="src/s", boxes=boxes)


def test_scene_validates_boxes_naming_the_scene():
  boxes = _boxes()
  boxes.size = np.float32([[4.5, 1.9, 1.6], [0.7, 0.0, 1.8]])
  with pytest.raises(SceneError, match=r"src/s \(scene 's'\).*box_size.npy.*positive"):
    _scene(boxes)
  with pytest.raises(SceneError, match="must be a pointins_jax.data.boxes.Boxes"):
    _scene({"center": np.zeros((1, 3))})
  # Float64 / int64 inputs are cast to the documented dtypes.
  scene = _scene(Boxes(np.zeros((1, 3)), np.ones((1, 3)), np.zeros(1), np.int64([9])))
  assert scene.boxes.center.dtype == np.float32 and scene.boxes.label.dtype == np.int32


def test_subset_keeps_every_box():
  scene = _scene(_boxes())
  part = scene.subset(np.array([0, 3]))
  assert part.num_points == 2 and len(part.boxes) == 2
  np.testing.assert_array_equal(part.boxes.center, scene.boxes.center)


@pytest.mark.parametrize("with_extras", [True, False])
def test_round_trip_with_boxes(tmp_path, with_extras):
  scene = _scene(_boxes(with_extras))
  folder = str(tmp_path / "train" / "s")
  pointcept_io.write_scene(scene, folder, box_extras={"num_points": np.array([12, 0]),
                                                 "velocity_known": np.array([True, False])})
  back = pointcept_io.read_scene(folder)
  for field in BOX_FILES:
    expected = getattr(scene.boxes, field)
    if expected is None:
      assert getattr(back.boxes, field) is None
      assert not os.path.exists(os.path.join(folder, BOX_FILES[field]))
    else:
      np.testing.assert_array_equal(getattr(back.boxes, field), expected)
      assert getattr(back.boxes, field).dtype == expected.dtype
  extras = pointcept_io.read_box_extras(folder, 2)
  np.testing.assert_array_equal(extras["num_points"], [12, 0])
  np.testing.assert_array_equal(extras["velocity_known"], [True, False])
  np.testing.assert_array_equal(back.coord, scene.coord)


def test_round_trip_without_and_with_zero_boxes(tmp_path):
  folder = str(tmp_path / "s")
  pointcept_io.write_scene(_scene(_boxes()), folder, box_extras={"num_points": np.array([1, 2])})
  pointcept_io.write_scene(_scene(None), folder)  # re-write: the old box files must go
  assert pointcept_io.read_scene(folder).boxes is None
  assert not any(name.startswith("box_") for name in os.listdir(folder))
  pointcept_io.write_scene(_scene(Boxes.empty()), folder)
  back = pointcept_io.read_scene(folder).boxes
  assert back is not None and len(back) == 0 and back.velocity is None


@pytest.mark.parametrize("case", ["missing_size", "missing_two", "stray_velocity", "rows",
                                  "nan", "label_range", "label_float", "not_npy",
                                  "num_points"])
def test_bad_box_files_name_the_file(tmp_path, case):
  folder = tmp_path / "s"
  pointcept_io.write_scene(_scene(_boxes()), str(folder))
  expected = {"missing_size": "box_size.npy: missing",
              "missing_two": "missing: box_yaw.npy, box_label.npy",
              "stray_velocity": "has box_velocity.npy, box_attribute.npy but no box_center",
              "rows": "box_yaw.npy must have shape",
              "nan": "box_center.npy has NaN",
              "label_range": "box_label.npy has ids outside 0..9",
              "label_float": "box_label.npy must be integer",
              "not_npy": "box_attribute.npy: not a readable",
              "num_points": "box_num_points.npy: must be int"}[case]
  if case == "missing_size":
    os.remove(folder / "box_size.npy")
  elif case == "missing_two":
    os.remove(folder / "box_yaw.npy")
    os.remove(folder / "box_label.npy")
  elif case == "stray_velocity":
    for field in ("center", "size", "yaw", "label"):
      os.remove(folder / BOX_FILES[field])
  elif case == "rows":
    np.save(folder / "box_yaw.npy", np.float32([0.1, 0.2, 0.3]))
  elif case == "nan":
    np.save(folder / "box_center.npy", np.float32([[np.nan, 0, 0], [0, 0, 0]]))
  elif case == "label_range":
    np.save(folder / "box_label.npy", np.int32([0, 10]))
  elif case == "label_float":
    np.save(folder / "box_label.npy", np.float32([0, 1]))
  elif case == "not_npy":
    (folder / "box_attribute.npy").write_bytes(b"garbage")
  elif case == "num_points":
    np.save(folder / "box_num_points.npy", np.int32([1, 2, 3]))
    with pytest.raises(SceneError, match=expected):
      pointcept_io.read_box_extras(str(folder), 2)
    return
  with pytest.raises(SceneError, match=expected):
    pointcept_io.read_scene(str(folder))
