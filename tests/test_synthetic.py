"""Synthetic generators: determinism, labels, instances, placement, offsets.

Production shapes: indoor rooms 50k-200k points, outdoor sweeps 30k-120k points; the
tests use the `small` room preset (~5k-15k) and 32 beams x 128-256 azimuth steps.
"""
import numpy as np
import pytest

from pointins_jax.data import labels, synthetic_indoor, synthetic_outdoor
from pointins_jax.data.scene import SceneError
from pointins_jax.pointins import priors


def _assert_same(a, b):
  for field in ("coord", "color", "normal", "strength", "segment", "instance"):
    x, y = getattr(a, field), getattr(b, field)
    assert (x is None) == (y is None), field
    if x is not None:
      np.testing.assert_array_equal(x, y, err_msg=field)


def _offset_magnitudes(scene):
  return np.linalg.norm(priors.instance_offsets(scene.coord, scene.instance), axis=1)


def test_indoor_deterministic_and_seed_dependent():
  _assert_same(synthetic_indoor.generate_room(3, small=True),
               synthetic_indoor.generate_room(3, small=True))
  other = synthetic_indoor.generate_room(4, small=True)
  assert other.num_points != synthetic_indoor.generate_room(3, small=True).num_points


def test_indoor_labels_instances_and_attributes():
  rooms = [synthetic_indoor.generate_room(seed, small=True) for seed in range(4)]
  classes = set()
  for room in rooms:
    assert 5_000 <= room.num_points <= 15_000
    assert room.segment.min() >= 0 and room.segment.max() < len(labels.SCANNET20_NAMES)
    classes.update(np.unique(room.segment).tolist())
    things = np.isin(room.segment, labels.SCANNET20_INSTANCE_CLASSES)
    # Every thing point has an instance, structure (wall, floor) has none.
    np.testing.assert_array_equal(room.instance >= 0, things)
    num_instances = room.instance.max() + 1
    assert 5 <= num_instances <= 30
    np.testing.assert_array_equal(np.unique(room.instance[things]), np.arange(num_instances))
    for instance_id in range(num_instances):  # one class per instance
      assert len(np.unique(room.segment[room.instance == instance_id])) == 1
    np.testing.assert_allclose(np.linalg.norm(room.normal, axis=1), 1.0, atol=1e-5)
    assert room.color.min() >= 0 and room.color.max() <= 255
  assert {0, 1} <= classes and len(classes - {0, 1}) >= 10


def test_indoor_objects_do_not_interpenetrate():
  for seed in range(3):
    room = synthetic_indoor.generate_room(seed, small=True)
    boxes = []
    for instance_id in range(room.instance.max() + 1):
      xy = room.coord[room.instance == instance_id, :2]
      boxes.append(np.concatenate([xy.min(0), xy.max(0)]))
    # Points carry ~1 cm of sensor noise: shrink the boxes by that before comparing.
    boxes = np.array(boxes) + np.array([1, 1, -1, -1]) * 0.015
    for i in range(len(boxes)):
      for j in range(i + 1, len(boxes)):
        overlap = (np.all(boxes[i, :2] < boxes[j, 2:]) and np.all(boxes[j, :2] < boxes[i, 2:]))
        assert not overlap, (seed, i, j, boxes[i], boxes[j])


def test_indoor_default_size():
  assert 50_000 <= synthetic_indoor.generate_room(0).num_points <= 200_000


def test_indoor_offsets_long_tailed():
  # Over a dataset (as the prior sees it): right-skewed, tail well beyond the median.
  magnitude = np.concatenate([_offset_magnitudes(synthetic_indoor.generate_room(s, small=True))
                              for s in range(6)])
  assert magnitude.mean() > np.median(magnitude)
  assert np.quantile(magnitude, 0.99) > 2 * np.median(magnitude)


def test_indoor_rejects_impossible_requests():
  with pytest.raises(SceneError, match="cannot place"):
    synthetic_indoor.generate_room(0, num_objects=60, room_size=(2.0, 2.0))
  with pytest.raises(SceneError, match="num_objects"):
    synthetic_indoor.generate_room(0, num_objects=0)


def test_outdoor_deterministic_labels_and_strength():
  a = synthetic_outdoor.generate_sweep(1, azimuth_steps=256)
  _assert_same(a, synthetic_outdoor.generate_sweep(1, azimuth_steps=256))
  assert a.segment.min() >= 0 and a.segment.max() < len(labels.SEMANTICKITTI_NAMES)
  assert 0 <= a.strength.min() and a.strength.max() <= 1
  things = np.isin(a.segment, labels.SEMANTICKITTI_THING_CLASSES)
  np.testing.assert_array_equal(a.instance >= 0, things)
  present = set(np.unique(a.segment).tolist())
  for name in ("road", "sidewalk", "building", "car"):
    assert labels.SEMANTICKITTI_NAMES.index(name) in present, name
  # The road (class 8) lies SENSOR_HEIGHT below the sensor, within the range noise.
  road = a.coord[a.segment == labels.SEMANTICKITTI_NAMES.index("road"), 2]
  np.testing.assert_allclose(road, -synthetic_outdoor.SENSOR_HEIGHT, atol=0.1)


def test_outdoor_density_falls_with_range_and_ego_is_empty():
  sweep = synthetic_outdoor.generate_sweep(2, azimuth_steps=256)
  horizontal = np.linalg.norm(sweep.coord[:, :2], axis=1)
  near = np.sum((horizontal > 5) & (horizontal < 10)) / (np.pi * (10 ** 2 - 5 ** 2))
  far = np.sum((horizontal > 30) & (horizontal < 35)) / (np.pi * (35 ** 2 - 30 ** 2))
  assert near > 5 * far
  # No returns from inside the ego vehicle's footprint (its own body is not a hit).
  ego = (np.abs(sweep.coord[:, 0]) < 2.2) & (np.abs(sweep.coord[:, 1]) < 0.9)
  assert not ego.any()


def test_outdoor_ray_box_hit_matches_closed_form():
  # One box 10 m ahead; the ray along +x enters its near face at x = 10 - 1.
  prims = synthetic_outdoor._Primitives()  # pylint: disable=protected-access
  prims.box(10.0, 0.0, 0.0, 2.0, 2.0, 3.0, 0.0, "car", 0)
  prims.cylinder(0.0, 20.0, 0.5, 0.0, 4.0, "pole")
  origin = np.array([0.0, 0.0, 1.0])
  rays = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
  t, label, instance, cosine = synthetic_outdoor._nearest_hit(  # pylint: disable=protected-access
      origin, rays, prims.arrays())
  np.testing.assert_allclose(t[:2], [9.0, 19.5])
  assert np.isinf(t[2])
  assert label[0] == 0 and instance[0] == 0 and label[1] == labels.SEMANTICKITTI_NAMES.index(
      "pole")
  np.testing.assert_allclose(cosine[:2], 1.0)


def test_outdoor_offsets_long_tailed():
  sweep = synthetic_outdoor.generate_sweep(0, azimuth_steps=512)
  magnitude = _offset_magnitudes(sweep)
  assert magnitude.mean() > np.median(magnitude)


def test_outdoor_rejects_bad_beams():
  with pytest.raises(SceneError, match="beams"):
    synthetic_outdoor.generate_sweep(0, beams=16)


def test_room_with_chosen_kinds_only():
  """data.synthetic_kinds: only those classes carry instances; unknown names are refused."""
  kinds = ("bed", "sofa", "table", "bookshelf", "bathtub")
  classes = {synthetic_indoor.CLASS[k] for k in kinds}
  for seed in range(6):
    room = synthetic_indoor.generate_room(seed, small=True, kinds=kinds)
    things = set(np.unique(room.segment[room.instance >= 0]).tolist())
    assert things and things <= classes, (seed, things)
  default = synthetic_indoor.generate_room(3, small=True)
  np.testing.assert_array_equal(default.coord,
                                synthetic_indoor.generate_room(3, small=True, kinds=()).coord)
  with pytest.raises(ValueError, match="'lamp'"):
    synthetic_indoor.generate_room(0, small=True, kinds=("bed", "lamp"))
