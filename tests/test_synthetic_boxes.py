"""synthetic-outdoor detection boxes: exactly the placed objects, enclosing their points.

Sweeps of 32 beams x 256 azimuth steps (~5k points, ~30 boxes); production sweeps have
~30k points and the same number of objects.
"""
import numpy as np
import pytest

from pointins_jax.data import config as config_lib
from pointins_jax.data import labels, loader, pointcept_io, synthetic_outdoor
from pointins_jax.data.boxes import DETECTION_ATTRIBUTES, DETECTION_CLASSES

SH = synthetic_outdoor.SENSOR_HEIGHT
# Written out again here (not imported), so a wrong table in the module fails the test.
EXPECTED_CLASS = {"car": "car", "truck": "truck", "other-vehicle": "bus",
                  "bicycle": "bicycle", "bicyclist": "bicycle", "motorcycle": "motorcycle",
                  "motorcyclist": "motorcycle", "person": "pedestrian"}


def _inside(points, center, size, yaw, tol):
  """Point-in-oriented-box, bool [N]: rotate by -yaw about the centre, compare extents."""
  rel = points - center
  c, s = np.cos(yaw), np.sin(yaw)
  local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]],
                   axis=1)
  return np.all(np.abs(local) <= size / 2 + tol, axis=1)


def _hand_boxes(seed):
  """Closed-form box of every placed thing, per kind, from the street's primitives."""
  prims = synthetic_outdoor._street(np.random.default_rng(seed))  # pylint: disable=protected-access
  p = prims.arrays()
  names = labels.SEMANTICKITTI_NAMES
  out = {}
  for inst in sorted(set(p["box_instance"].tolist() + p["cyl_instance"].tolist()) - {-1}):
    boxes = np.flatnonzero(p["box_instance"] == inst)
    cyls = np.flatnonzero(p["cyl_instance"] == inst)
    kind = names[int(p["box_label"][boxes[0]] if len(boxes) else p["cyl_label"][cyls[0]])]
    if kind == "person":  # one cylinder: a yaw-0 box of its diameter and z range
      (x, y), r, (z0, z1) = p["cyl_xy"][cyls[0]], p["cyl_radius"][cyls[0]], p["cyl_z"][cyls[0]]
      box = ([x, y, (z0 + z1) / 2 - SH], [2 * r, 2 * r, z1 - z0], 0.0)
    elif kind == "car":  # body from z = 0.2 (first box), cabin (second box) on top
      body, cabin = boxes
      top = p["box_center"][cabin, 2] + p["box_half"][cabin, 2]
      x, y = p["box_center"][body, :2]
      box = ([x, y, (0.2 + top) / 2 - SH],
             [2 * p["box_half"][body, 0], 2 * p["box_half"][body, 1], top - 0.2],
             p["box_yaw"][body])
    elif kind in ("bicyclist", "motorcyclist"):  # frame 0.2 wide; rider r 0.25, z 0.6-1.75
      frame = boxes[0]
      x, y = p["box_center"][frame, :2]
      box = ([x, y, 1.75 / 2 - SH], [2 * max(p["box_half"][frame, 0], 0.25), 0.5, 1.75],
             p["box_yaw"][frame])
    else:  # one box primitive
      [b] = boxes
      box = (p["box_center"][b] - [0, 0, SH], 2 * p["box_half"][b], p["box_yaw"][b])
    out[inst] = (kind, *(np.asarray(v, np.float64) for v in box), prims.attribute[inst])
  return out


@pytest.mark.parametrize("seed", [1, 4])
def test_boxes_are_the_placed_objects_and_enclose_their_points(seed):
  sweep = synthetic_outdoor.generate_sweep(seed, azimuth_steps=256)
  boxes = sweep.boxes
  assert boxes is not None and boxes.velocity is None
  assert len(boxes) == sweep.instance.max() + 1 > 10  # box k <-> instance k
  hand = _hand_boxes(seed)
  matched = set()
  for k in range(len(boxes)):
    points = sweep.coord[sweep.instance == k].astype(np.float64)
    # The placed object whose closed-form box has this centre (unique: no overlaps).
    [inst] = [i for i, h in hand.items() if np.allclose(h[1], boxes.center[k], atol=1e-4)]
    kind, center, size, yaw, attribute = hand[inst]
    matched.add(inst)
    np.testing.assert_allclose(boxes.size[k], size, atol=1e-5)
    np.testing.assert_allclose(boxes.yaw[k], yaw, atol=1e-6)
    assert DETECTION_CLASSES[boxes.label[k]] == EXPECTED_CLASS[kind]
    assert DETECTION_ATTRIBUTES[boxes.attribute[k]] == attribute
    # The points of instance k are this object's, and lie in its box up to the range noise.
    assert np.all(labels.SEMANTICKITTI_NAMES[sweep.segment[sweep.instance == k][0]] == kind)
    tol = 6 * synthetic_outdoor.RANGE_NOISE
    assert _inside(points, center, size, yaw, tol).all(), (k, kind)
  assert len(matched) == len(boxes)
  # Every placed object the LiDAR saw has a box; the unseen ones have no points at all.
  assert len(hand) >= len(boxes)


def test_attributes_follow_the_layout():
  sweep = synthetic_outdoor.generate_sweep(4, azimuth_steps=256)
  attribute = np.asarray(DETECTION_ATTRIBUTES)[sweep.boxes.attribute]
  label = np.asarray(DETECTION_CLASSES)[sweep.boxes.label]
  vehicle = np.isin(label, ["car", "truck", "bus"])
  assert np.all(np.char.startswith(attribute[vehicle], "vehicle."))
  assert np.all(np.char.startswith(attribute[np.isin(label, ["bicycle", "motorcycle"])],
                                   "cycle."))
  assert np.all(attribute[label == "pedestrian"] == "pedestrian.standing")


def test_loader_synthetic_source_and_prepared_folders_have_boxes(tmp_path):
  c = config_lib.data_config("outdoor")
  c.num_scenes = 2
  c.synthetic_small = True
  scene = loader.scene_source(c)[0]
  assert scene.boxes is not None and len(scene.boxes) == scene.instance.max() + 1
  from experiments import prepare_data  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "out")
  assert prepare_data.main(["synthetic-outdoor", "--out", out, "--num-scenes", "1",
                            "--val-fraction", "0", "--small"]) == 0
  [folder] = pointcept_io.list_scenes(out, "train")
  back = pointcept_io.read_scene(folder, "synthetic-outdoor")
  counts = pointcept_io.read_box_extras(folder, len(back.boxes))["num_points"]
  np.testing.assert_array_equal(counts, np.bincount(back.instance[back.instance >= 0]))
  assert counts.min() >= 1
