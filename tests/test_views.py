"""Tests for pointins_jax.data.views: global crops, correspondences, masking, features."""
import numpy as np
import pytest

from pointins_jax.data import config as config_lib
from pointins_jax.data import views
from pointins_jax.data.scene import Scene, SceneError


def make_scene(n=3000, seed=0, color=True, normal=True):
  """A box room: floor + two walls + one box, labelled (production rooms: 50k-200k points)."""
  rng = np.random.default_rng(seed)
  floor = np.c_[rng.uniform(0, 4, (n // 2, 2)), np.zeros(n // 2)]
  wall = np.c_[rng.uniform(0, 4, n // 4), np.zeros(n // 4), rng.uniform(0, 2.5, n // 4)]
  m = n - len(floor) - len(wall)
  box = rng.uniform([1, 1, 0], [1.8, 1.6, 0.8], (m, 3))
  coord = np.concatenate([floor, wall, box]).astype(np.float32) + [5.0, -2.0, 0.3]
  segment = np.r_[np.ones(len(floor)), np.zeros(len(wall)), np.full(m, 4)].astype(np.int32)
  instance = np.r_[np.full(len(floor) + len(wall), -1), np.zeros(m)].astype(np.int32)
  unit = rng.standard_normal((n, 3))
  return Scene(coord=coord,
               color=rng.uniform(0, 255, (n, 3)) if color else None,
               normal=unit / np.linalg.norm(unit, axis=1, keepdims=True) if normal else None,
               segment=segment, instance=instance, name=f"room{seed}")


def small_config():
  c = config_lib.data_config("indoor")
  c.grid_size = 0.05
  return c


def test_cross_index_against_brute_force():
  rng = np.random.default_rng(0)
  a = rng.permutation(50)[:30]
  b = rng.permutation(50)[:25]
  got = views.cross_index(a, b)
  expected = [list(b).index(x) if x in b else -1 for x in a]
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(views.cross_index(a, np.zeros(0, int)), -1)


def test_global_views_are_nearest_crops_with_shared_points():
  c = small_config()
  coord = make_scene().coord
  first, second = views.global_view_indices(coord, c, np.random.default_rng(0))
  for index in (first, second):
    assert c.global_view_scale[0] * len(coord) - 1 <= len(index) <= len(coord)
    np.testing.assert_array_equal(index, np.unique(index))
  # The second centre lies in the first view, so the two views overlap.
  assert np.intersect1d(first, second).size > 0


def test_pretrain_views_correspondence_and_frames():
  c = small_config()
  scene = make_scene()
  first, second = views.pretrain_views(scene, c, np.random.default_rng(1))
  for v, (view, other) in enumerate(((first, second), (second, first))):
    cross = views.cross_index(view["origin_index"], other["origin_index"])
    hit = cross >= 0
    assert hit.any()
    np.testing.assert_array_equal(other["origin_index"][cross[hit]], view["origin_index"][hit])
    np.testing.assert_allclose(other["origin_coord"][cross[hit]], view["origin_coord"][hit])
    # origin_coord is the scan point (centred), index its id in the full scan.
    offset = scene.coord[view["index"]] - view["origin_coord"]
    np.testing.assert_allclose(offset, offset[:1].repeat(len(offset), 0), atol=1e-5)
    assert view["feat"].shape == (len(view["coord"]), 9), v
    np.testing.assert_allclose(view["feat"][:, :3], view["coord"])
    np.testing.assert_allclose(np.linalg.norm(view["feat"][:, 6:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(view["segment"], scene.segment[view["index"]])


def test_views_without_nonaffine_ops_follow_their_affine_exactly():
  c = small_config()
  c.augment.jitter_sigma = 0.0
  c.augment.elastic = ()
  for view in views.pretrain_views(make_scene(), c, np.random.default_rng(2)):
    mapped = view["origin_coord"] @ view["view_linear"].T + view["view_translation"]
    np.testing.assert_allclose(view["coord"], mapped, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_block_mask_ratio_of_cells(seed):
  rng = np.random.default_rng(seed)
  coord = rng.uniform(0, 4, (5000, 3))
  masked = views.block_mask(coord, 0.4, 0.7, np.random.default_rng(seed))
  cells = np.floor((coord - coord.min(0)) / 0.4).astype(int)
  keys = [tuple(x) for x in cells]
  cell_masked = {}
  for key, m in zip(keys, masked):
    assert cell_masked.setdefault(key, m) == m  # whole cells are masked together
  num_cells = len(cell_masked)
  assert sum(cell_masked.values()) == int(num_cells * 0.7)


def test_same_seed_same_views():
  c, scene = small_config(), make_scene()
  a = views.pretrain_views(scene, c, np.random.default_rng(7))
  b = views.pretrain_views(scene, c, np.random.default_rng(7))
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_missing_feature_raises_naming_the_field():
  with pytest.raises(SceneError, match="feat_keys.*normal"):
    views.pretrain_views(make_scene(normal=False), small_config(), np.random.default_rng(0))


def test_fragment_views_cover_scan():
  scene = make_scene(800)
  fragments = views.fragment_views(scene, small_config())
  ids = np.concatenate([f["index"] for f in fragments])
  np.testing.assert_array_equal(np.unique(ids), np.arange(scene.num_points))
  for f in fragments:
    assert f["visible"].all()


def test_probe_view_crops_around_random_points_and_recentres():
  """Crops to the largest bucket reach the whole room (not only its centre), centred."""
  scene, c = make_scene(), small_config()
  c.buckets = (256,)
  c.augment.enabled = False
  origin_coord = views.centred(scene).coord
  seen = np.zeros(scene.num_points, bool)
  for seed in range(12):
    view = views.probe_view(scene, c, np.random.default_rng(seed), augment=False)
    assert view["coord"].shape[0] == 256
    lo, hi = view["coord"].min(0), view["coord"].max(0)
    np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], 0, atol=1e-5)
    # A crop is the 256 nearest points to one centre: a ball in the scene frame.
    crop = origin_coord[view["index"]]
    radius = np.linalg.norm(crop - crop.mean(0), axis=1).max()
    assert radius < 2.5  # the room's half-diagonal is ~2.9 m
    seen[view["index"]] = True
  # Walls (segment 0) and both ends of the floor get trained on.
  assert seen[scene.segment == 0].any()
  floor_x = origin_coord[seen & (scene.segment == 1), 0]
  assert floor_x.min() < -1.0 and floor_x.max() > 1.0


def test_recentre_moves_coord_features_only():
  scene, c = make_scene(), small_config()
  view = views.fragment_views(scene, c)[0]
  part = {k: (v[:500] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == len(view["coord"])
              else v) for k, v in view.items()}
  part["coord"] = part["coord"] + np.float32([1.0, -2.0, 0.5])
  out = views.recentre(part, c.feat_keys)
  lo, hi = out["coord"].min(0), out["coord"].max(0)
  np.testing.assert_allclose([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], 0, atol=1e-5)
  np.testing.assert_allclose(out["feat"][:, :3], out["coord"])  # feat_keys start with coord
  np.testing.assert_array_equal(out["feat"][:, 3:], part["feat"][:, 3:])  # colour, normal
  shift = out["view_translation"] - part["view_translation"]
  np.testing.assert_allclose(out["coord"] - part["coord"],
                             np.broadcast_to(shift, part["coord"].shape), atol=1e-5)
