"""Boxes move with the points: affine maps, the Sonata recipe, views, crops, re-centring.

Every check samples points inside boxes, transforms the scene and tests the transformed
points against the transformed boxes with a point-in-oriented-box test written here.
Scenes here: 6 boxes, ~3k points (a nuScenes sweep: ~30 boxes, ~35k points).
"""
import ml_collections
import numpy as np
import pytest

from pointins_jax.data import batching, transforms, views
from pointins_jax.data import config as config_lib
from pointins_jax.data.boxes import BoxError, Boxes
from pointins_jax.data.scene import Scene


def _inside(points, center, size, yaw, tol=1e-4):
  """bool [N]: points within the box (rotate by -yaw about the centre, compare extents)."""
  rel = np.asarray(points, np.float64) - center
  c, s = np.cos(yaw), np.sin(yaw)
  local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]],
                   axis=1)
  return np.all(np.abs(local) <= np.asarray(size) / 2 + tol, axis=1)


def _points_in(box_center, size, yaw, n, rng, corners=True):
  """n uniform points in a box, plus its 8 corners (the extremes a box must still hold)."""
  local = rng.uniform(-0.5, 0.5, (n, 3)) * size
  if corners:
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]) * 0.5
    local = np.concatenate([local, signs * size])
  c, s = np.cos(yaw), np.sin(yaw)
  rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
  return local @ rot.T + box_center


def _boxes(rng, m=6, spread=20.0):
  return Boxes(center=np.c_[rng.uniform(-spread, spread, (m, 2)), rng.uniform(0.5, 1.5, m)]
               .astype(np.float32),
               size=rng.uniform([1.0, 0.5, 1.0], [5.0, 2.0, 2.5], (m, 3)).astype(np.float32),
               yaw=rng.uniform(-np.pi, np.pi, m).astype(np.float32),
               label=rng.integers(0, 10, m).astype(np.int32),
               velocity=rng.normal(size=(m, 2)).astype(np.float32),
               attribute=rng.integers(-1, 8, m).astype(np.int32))


def _scene_with_boxes(seed=0, per_box=400, spread=20.0):
  rng = np.random.default_rng(seed)
  boxes = _boxes(rng, spread=spread)
  parts, instance = [], []
  for k in range(len(boxes)):
    parts.append(_points_in(boxes.center[k], boxes.size[k], boxes.yaw[k], per_box, rng,
                            corners=False))
    instance.append(np.full(per_box, k))
  ground = np.c_[rng.uniform(-spread - 5, spread + 5, (600, 2)), np.zeros(600)]
  coord = np.concatenate(parts + [ground]).astype(np.float32)
  instance = np.concatenate(instance + [np.full(600, -1)]).astype(np.int32)
  return Scene(coord=coord, strength=rng.uniform(0, 1, len(coord)).astype(np.float32),
               segment=np.where(instance >= 0, 0, 9).astype(np.int32), instance=instance,
               name="boxes", source="test", boxes=boxes)


def _rot_z(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


MAPS = {  # name -> (M, c): the transforms the augmentations compose
    "rotate_z": (_rot_z(0.7), np.zeros(3)),
    "flip_x": (np.diag([-1.0, 1, 1]), np.zeros(3)),
    "flip_y": (np.diag([1.0, -1, 1]), np.zeros(3)),
    "scale": (np.eye(3) * 1.13, np.zeros(3)),
    "translate": (np.eye(3), np.array([3.0, -7.0, 0.4])),
    "z_scale_only": (np.diag([1.0, 1.0, 0.8]), np.zeros(3)),
    "composed": (np.diag([1.0, -1, 1]) @ _rot_z(-2.1) * 0.93, np.array([0.5, 2.0, -1.0])),
}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_affine_boxes_follow_the_points(name):
  matrix, offset = MAPS[name]
  rng = np.random.default_rng(1)
  boxes = _boxes(rng)
  moved = transforms.affine_boxes(boxes, matrix, offset)
  for k in range(len(boxes)):
    points = _points_in(boxes.center[k], boxes.size[k], boxes.yaw[k], 300, rng)
    after = points @ matrix.T + offset
    assert _inside(after, moved.center[k], moved.size[k], moved.yaw[k]).all(), (name, k)
    # Tight: the box's corners map onto the new box's surface (each on >= 3 faces).
    corners = after[-8:]
    local = corners - moved.center[k]
    c, s = np.cos(moved.yaw[k]), np.sin(moved.yaw[k])
    local = np.stack([c * local[:, 0] + s * local[:, 1], -s * local[:, 0] + c * local[:, 1],
                      local[:, 2]], axis=1)
    np.testing.assert_allclose(np.abs(local), np.broadcast_to(moved.size[k] / 2, (8, 3)),
                               atol=1e-4)
  # Velocity is a vector of the xy plane: it follows the linear part (scale included).
  np.testing.assert_allclose(moved.velocity, boxes.velocity @ matrix[:2, :2].T, atol=1e-5)
  np.testing.assert_array_equal(moved.label, boxes.label)
  np.testing.assert_array_equal(moved.attribute, boxes.attribute)


@pytest.mark.parametrize("matrix", [
    np.array([[1, 0, 0], [0, np.cos(0.05), -np.sin(0.05)], [0, np.sin(0.05), np.cos(0.05)]]),
    np.diag([1.1, 0.9, 1.0])])
def test_affine_boxes_refuses_tilts_and_unequal_scales(matrix):
  with pytest.raises(BoxError, match="src: boxes are upright.*rotate_xy_p"):
    transforms.affine_boxes(_boxes(np.random.default_rng(0)), matrix, None, "src")


def _augment(rotate_xy_p=0.0, jitter=0.005):
  return ml_collections.ConfigDict(dict(
      enabled=True, scale=(0.9, 1.1), rotate_z=1.0, rotate_z_p=1.0, rotate_xy=1.0 / 64,
      rotate_xy_p=rotate_xy_p, flip_p=0.5, jitter_sigma=jitter, jitter_clip=4 * jitter,
      elastic=(), elastic_p=0.0))


@pytest.mark.parametrize("seed", range(4))
def test_sonata_recipe_moves_boxes_with_points(seed):
  scene = _scene_with_boxes(seed)
  aug = _augment()
  geometry = transforms.augment_geometry(scene.coord, None, aug, np.random.default_rng(seed),
                                         scene.boxes, "test")
  moved = geometry.boxes
  for k in range(len(moved)):
    points = geometry.coord[scene.instance == k]
    # Jitter displaces points by at most jitter_clip per axis; boxes stay put.
    assert _inside(points, moved.center[k], moved.size[k], moved.yaw[k],
                   tol=aug.jitter_clip * np.sqrt(3)).all()
  # The boxes went through exactly the recorded affine map.
  expected = transforms.affine_boxes(scene.boxes, geometry.record.linear,
                                     geometry.record.translation)
  np.testing.assert_allclose(moved.center, expected.center, atol=1e-4)


def test_sonata_recipe_with_tilts_refuses_boxes():
  scene = _scene_with_boxes()
  with pytest.raises(BoxError, match="scene x: the scene has boxes but augment.rotate_xy_p"):
    transforms.augment_geometry(scene.coord, None, _augment(rotate_xy_p=0.8),
                                np.random.default_rng(0), scene.boxes, "scene x")
  # Without boxes, the tilts run as before.
  transforms.augment_geometry(scene.coord, None, _augment(rotate_xy_p=0.8),
                              np.random.default_rng(0))


def test_boxes_in_ball_and_crop_radius_by_hand():
  boxes = Boxes(center=np.float32([[0, 0, 0], [3, 4, 0], [5.1, 0, 0]]),
                size=np.ones((3, 3), np.float32), yaw=np.zeros(3, np.float32),
                label=np.int32([0, 1, 2]))
  kept, dropped = transforms.boxes_in_ball(boxes, np.zeros(3), 5.0)
  np.testing.assert_array_equal(kept.label, [0, 1])
  assert dropped == 1
  assert transforms.crop_radius(np.float32([[1, 0, 0], [0, -2, 0]]), np.zeros(3)) == 2.0


def _config(buckets=(1024, 2048)):
  c = config_lib.data_config("outdoor")
  c.with_boxes = True
  c.augment.rotate_xy_p = 0.0
  c.buckets = buckets
  c.grid_size = 0.05
  c.max_view_points = 2048
  return c


def _check_view(view, scene):
  """Each kept box holds its instance's view points; kept + dropped = the scene's boxes."""
  boxes = view["boxes"]
  assert len(boxes) + view["boxes_dropped"] == len(scene.boxes)
  tol = 4 * 0.005 * np.sqrt(3)  # jitter clip
  labels = list(scene.boxes.label)
  for k in range(len(boxes)):
    # Match the view box to its scene box by label + size (the scale is uniform).
    ratio = boxes.size[k] / scene.boxes.size
    [j] = [j for j in range(len(labels)) if labels[j] == boxes.label[k]
           and np.allclose(ratio[j], ratio[j, 0], rtol=1e-4)]
    points = view["coord"][view["instance"] == j]
    assert _inside(points, boxes.center[k], boxes.size[k], boxes.yaw[k], tol).all()


def test_probe_view_crop_keeps_boxes_centred_in_the_crop():
  scene = _scene_with_boxes(3, spread=30.0)
  config = _config(buckets=(512, 1024))  # forces a sphere crop of ~3k grid points to 1024
  dropped_any = False
  for seed in range(4):
    view = views.probe_view(scene, config, np.random.default_rng(seed), augment=True)
    assert view["coord"].shape[0] == 1024
    _check_view(view, scene)
    dropped_any |= view["boxes_dropped"] > 0
    # A box whose points are all in the view is never dropped (its centre is inside the
    # crop's ball, the ball being convex around the points it took).
    for j in range(len(scene.boxes)):
      if np.sum(view["instance"] == j) == np.sum(scene.instance == j):
        assert (np.abs(view["boxes"].label - scene.boxes.label[j]) == 0).any()
  assert dropped_any


def test_pretrain_views_and_fragments_carry_boxes():
  scene = _scene_with_boxes(4)
  config = _config()
  for view in views.pretrain_views(scene, config, np.random.default_rng(0)):
    _check_view(view, scene)
  for view in views.fragment_views(scene, config):
    assert view["boxes_dropped"] == 0
    _check_view(view, scene)
    # An evaluation chunk (half the fragment) is re-centred: its boxes move with it.
    half = batching.subset_view(view, view["coord"][:, 0] > 0)
    assert len(half["boxes"]) == len(view["boxes"])  # subsets keep every box
    moved = views.recentre(half, config.feat_keys)
    assert np.abs(moved["coord"] - half["coord"]).max() > 1.0
    _check_view(moved, scene)


def test_views_without_boxes_flag_or_without_boxes():
  scene = _scene_with_boxes(5)
  config = _config()
  config.with_boxes = False
  config.augment.rotate_xy_p = 0.8  # pretraining keeps its tilts: boxes are not carried
  assert "boxes" not in views.probe_view(scene, config, np.random.default_rng(0),
                                         augment=True)
  config = _config()
  bare = Scene(coord=scene.coord, instance=scene.instance, strength=scene.strength,
               name="bare", source="src")
  with pytest.raises(Exception, match="src \\(scene 'bare'\\): data.with_boxes is set"):
    views.probe_view(bare, config, np.random.default_rng(0), augment=False)
  config.augment.rotate_xy_p = 0.8
  with pytest.raises(ValueError, match="with_boxes=True needs augment.rotate_xy_p=0"):
    config_lib.validate(config)


def test_centred_moves_boxes_with_points():
  scene = _scene_with_boxes(6)
  centred = views.centred(scene)
  shift = scene.coord[0] - centred.coord[0]
  np.testing.assert_allclose(centred.boxes.center, scene.boxes.center - shift, atol=1e-5)
  for k in range(len(scene.boxes)):
    points = centred.coord[scene.instance == k]
    assert _inside(points, centred.boxes.center[k], centred.boxes.size[k],
                   centred.boxes.yaw[k]).all()


def test_batching_sphere_crop_drops_boxes_centred_outside():
  scene = _scene_with_boxes(7, spread=30.0)
  config = _config(buckets=(4096,))
  view = views.probe_view(scene, config, np.random.default_rng(0), augment=False)
  assert view["boxes_dropped"] == 0
  cropped, removed = batching.crop_view(view, 800)
  assert removed == view["coord"].shape[0] - 800
  points = view["coord"].astype(np.float64)
  center = (points.min(0) + points.max(0)) / 2
  radius = np.sqrt(((cropped["coord"] - center) ** 2).sum(1).max())
  distance = np.linalg.norm(view["boxes"].center - center, axis=1)
  assert len(cropped["boxes"]) == np.sum(distance <= radius) < len(view["boxes"])
  assert cropped["boxes_dropped"] == np.sum(distance > radius)
  _check_view(cropped, scene)
