"""Tests for pointins_jax.data.batching: buckets, padding, capacity crops, cross_index."""
import numpy as np
import pytest

from pointins_jax.data import batching
from pointins_jax.data import config as config_lib
from pointins_jax.data import views
from tests.test_views import make_scene, small_config

# Production buckets are (8192, ..., 65536); tiny ones keep the test fast.
BUCKETS = (512, 1024, 2048)


def _examples(c, seeds, n=3000):
  return [views.pretrain_views(make_scene(n, seed), c, np.random.default_rng(seed))
          for seed in seeds]


def _unique_cells(grid, shift):
  return len({tuple(g) for g in (grid >> shift)})


def test_choose_bucket():
  assert batching.choose_bucket(1, BUCKETS) == 512
  assert batching.choose_bucket(512, BUCKETS) == 512
  assert batching.choose_bucket(513, BUCKETS) == 1024
  assert batching.choose_bucket(5000, BUCKETS) == 2048


def test_collate_layout_padding_and_correspondence():
  c = small_config()
  examples = _examples(c, [0, 1])
  batch = batching.collate(examples, buckets=(4096, 8192), grid_size=c.grid_size)
  sizes = [[len(v["coord"]) for v in ex] for ex in examples]
  n = batching.choose_bucket(max(map(max, sizes)), (4096, 8192))
  assert batch["coord"].shape == (2, 2, n, 3) and batch["feat"].shape == (2, 2, n, 9)
  assert batch["view_linear"].shape == (2, 2, 3, 3) and batch["num_cropped"].tolist() == [0, 0]
  for b in range(2):
    for v in range(2):
      valid = batch["valid"][b, v]
      assert valid.sum() == sizes[b][v] and valid[:sizes[b][v]].all()
      assert not batch["visible"][b, v][~valid].any()
      assert (batch["origin_index"][b, v][~valid] == -1).all()
      assert (batch["coord"][b, v][~valid] == 0).all()
      grid = batch["grid"][b, v][valid]
      assert grid.min() == 0 and grid.dtype == np.int32
      np.testing.assert_array_equal(
          grid, np.floor((batch["coord"][b, v][valid] - batch["coord"][b, v][valid].min(0))
                         / c.grid_size))
      cross = batch["cross_index"][b, v]
      hit = cross >= 0
      np.testing.assert_array_equal(batch["origin_index"][b, 1 - v][cross[hit]],
                                    batch["origin_index"][b, v][hit])
      # Every shared origin point is found: the cross map is complete.
      shared = np.intersect1d(batch["origin_index"][b, v][valid],
                              batch["origin_index"][b, 1 - v][batch["valid"][b, 1 - v]])
      assert hit.sum() == len(shared)


def test_views_over_the_largest_bucket_are_cropped_and_counted():
  c = small_config()
  examples = _examples(c, [2])
  sizes = [len(v["coord"]) for v in examples[0]]
  batch = batching.collate(examples, buckets=BUCKETS, grid_size=c.grid_size)
  assert batch["coord"].shape[2] == 2048
  assert batch["num_cropped"][0] == sum(max(s - 2048, 0) for s in sizes) > 0
  assert batch["valid"].sum() == sum(min(s, 2048) for s in sizes)
  hit = batch["cross_index"][0, 0] >= 0  # still consistent after the crop
  np.testing.assert_array_equal(batch["origin_index"][0, 1][batch["cross_index"][0, 0][hit]],
                                batch["origin_index"][0, 0][hit])


def test_fit_stage_capacities_against_brute_force():
  rng = np.random.default_rng(0)
  grid = rng.integers(0, 40, (600, 3))
  capacities = [600, 300, 120, 40]
  keep = batching.fit_stage_capacities(grid, 600, capacities)
  kept = grid[keep]
  for s, cap in enumerate(capacities):
    assert _unique_cells(kept, s) <= cap
  # Maximal: the next point in sphere order would overflow some stage.
  order = batching.center_order(grid.astype(float))
  k = int(keep.sum())
  np.testing.assert_array_equal(np.flatnonzero(keep), np.sort(order[:k]))
  bigger = grid[order[:k + 1]]
  assert any(_unique_cells(bigger, s) > cap for s, cap in enumerate(capacities))


def test_fit_stage_capacities_keeps_all_when_it_fits():
  grid = np.random.default_rng(0).integers(0, 4, (100, 3))
  assert batching.fit_stage_capacities(grid, 100, [100, 64, 8]).all()


def test_collate_capacity_crop_is_counted():
  c = small_config()
  examples = _examples(c, [3])
  def capacities(n, counts=None):  # fixed bounds, whatever the counts
    return [n, n // 8, n // 64]
  batch = batching.collate(examples, buckets=(4096,), grid_size=c.grid_size,
                           stage_capacities_fn=capacities)
  caps = capacities(4096)
  for v in range(2):
    grid = batch["grid"][0, v][batch["valid"][0, v]]
    for s, cap in enumerate(caps):
      assert _unique_cells(grid, s) <= cap
  total = sum(len(v["coord"]) for v in examples[0])
  assert batch["num_cropped"][0] == total - batch["valid"].sum() > 0


def test_single_view_batches_have_no_view_axis():
  c = small_config()
  example = [[views.probe_view(make_scene(), c, np.random.default_rng(0), augment=True)]]
  batch = batching.collate(example, buckets=(4096,), grid_size=c.grid_size, with_views=False)
  assert batch["coord"].shape == (1, 4096, 3) and "cross_index" not in batch
  valid = batch["valid"][0]
  assert (batch["index"][0][valid] >= 0).all() and (batch["index"][0][~valid] == -1).all()


def test_too_few_points_raises_naming_field():
  c = small_config()
  with pytest.raises(ValueError, match="min_view_points"):
    batching.collate(_examples(c, [0], n=200), buckets=(512,), grid_size=c.grid_size,
                     min_view_points=500)


@pytest.mark.parametrize("field,value", [("mask_ratio", 1.0), ("mask_ratio", -0.1),
                                         ("buckets", ()), ("buckets", (8, 4)),
                                         ("num_local_views", 2), ("grid_size", 0.0)])
def test_config_validation_names_field(field, value):
  c = config_lib.data_config("outdoor")
  c[field] = value
  with pytest.raises(ValueError, match=field):
    config_lib.validate(c)
