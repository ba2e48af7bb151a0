"""Tests for pointins_jax.data.loader: determinism, state round-trip, sources, eval coverage."""
import itertools
import os

import numpy as np
import pytest

from pointins_jax.data import config as config_lib
from pointins_jax.data import loader
from tests.test_views import make_scene


def _config(**overrides):
  # Production: full-size rooms, buckets up to 65536, batch 8+; tiny scenes keep this fast.
  c = config_lib.data_config("indoor")
  c.num_scenes = 5
  c.synthetic_small = True
  c.grid_size = 0.05
  c.buckets = (2048, 4096, 8192)
  c.batch_size = 2
  c.update(overrides)
  return c


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_pretrain_batches_match_layout():
  batch = next(loader.make_pretrain_iterator(_config(), seed=0))
  n = batch["coord"].shape[2]
  assert n in (2048, 4096, 8192)
  expected = dict(coord=(2, 2, n, 3), feat=(2, 2, n, 9), grid=(2, 2, n, 3), valid=(2, 2, n),
                  visible=(2, 2, n), origin_coord=(2, 2, n, 3), origin_index=(2, 2, n),
                  cross_index=(2, 2, n), view_linear=(2, 2, 3, 3), view_translation=(2, 2, 3),
                  segment=(2, 2, n), instance=(2, 2, n), num_cropped=(2,))
  for key, shape in expected.items():
    assert batch[key].shape == shape, key
  visible_share = batch["visible"].sum() / batch["valid"].sum()
  assert 0.1 < visible_share < 0.6  # ~30% of cells (so roughly of points) stay visible


def test_same_seed_same_batches_and_different_seed_differs():
  a = _take(loader.make_pretrain_iterator(_config(), seed=3), 2)
  b = _take(loader.make_pretrain_iterator(_config(), seed=3), 2)
  c = _take(loader.make_pretrain_iterator(_config(), seed=4), 1)
  _assert_same(a, b)
  assert not np.array_equal(a[0]["origin_index"], c[0]["origin_index"])


def test_iterator_state_round_trip():
  iterator = loader.make_pretrain_iterator(_config(), seed=1)
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 2)
  fresh = loader.make_pretrain_iterator(_config(), seed=1)
  fresh.set_state(state)
  _assert_same(_take(fresh, 2), expected)


def test_two_workers_give_the_same_batches():
  # ~10 s (2 spawned worker processes): kept in the default run since determinism across
  # worker counts is the loader's main promise.
  single = _take(loader.make_pretrain_iterator(_config(), seed=2), 3)
  multi = _take(loader.make_pretrain_iterator(_config(num_workers=2), seed=2), 3)
  _assert_same(single, multi)


def test_sharding_splits_scenes():
  shards = [next(loader.make_pretrain_iterator(_config(shuffle=False, batch_size=1), seed=0,
                                               shard_index=i, shard_count=2))
            for i in range(2)]
  assert not np.array_equal(shards[0]["origin_coord"], shards[1]["origin_coord"])
  with pytest.raises(ValueError, match="shard_index"):
    loader.make_pretrain_iterator(_config(), seed=0, shard_index=2, shard_count=2)


def test_stage_capacities_fn_is_honoured():
  def capacities(n, counts=None):  # fixed bounds, whatever the counts
    return [n, n // 4, n // 32]
  batch = next(loader.make_pretrain_iterator(_config(), seed=0, stage_capacities_fn=capacities))
  caps = capacities(batch["coord"].shape[2])
  for b, v in itertools.product(range(2), range(2)):
    grid = batch["grid"][b, v][batch["valid"][b, v]]
    for s, cap in enumerate(caps):
      assert len(np.unique(grid >> s, axis=0)) <= cap


def test_probe_iterator_single_view_with_labels():
  batch = next(loader.make_probe_iterator(_config(), seed=0))
  assert batch["coord"].ndim == 3 and "cross_index" not in batch
  valid = batch["valid"]
  assert (batch["visible"] == valid).all()
  assert (batch["segment"][valid] >= -1).all() and (batch["segment"][valid] >= 0).any()
  assert (batch["index"][valid] >= 0).all()


def test_label_fraction_subset():
  source = loader.scene_source(_config(num_scenes=10))
  subset = loader.labelled_subset(source, 0.25, seed=0)
  assert len(subset) == 3
  again = loader.labelled_subset(source, 0.25, seed=0)
  np.testing.assert_array_equal(subset[0].coord, again[0].coord)


def test_eval_fragments_cover_every_point_once_per_fragment():
  scene = make_scene(4000)
  c = _config(buckets=(256, 512), batch_size=3)  # forces chunking of every fragment

  def capacities(n, counts=None):  # fixed bounds, whatever the counts
    return [n, n // 2, n // 8]
  seen = []
  for batch in loader.iterate_eval_fragments(scene, c, stage_capacities_fn=capacities):
    assert batch["coord"].shape[:2] == (3, 512)
    seen.append(batch["index"][batch["valid"]])
    for b in range(3):
      grid = batch["grid"][b][batch["valid"][b]]
      for s, cap in enumerate(capacities(512)):
        assert len(np.unique(grid >> s, axis=0)) <= cap
  ids = np.concatenate(seen)
  counts = np.bincount(ids, minlength=scene.num_points)
  assert (counts >= 1).all()  # every point is evaluated
  cells = np.floor((scene.coord - scene.coord.min(0)) / c.grid_size).astype(int)
  _, cell, per_cell = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
  # One pass per fragment: a point of a cell with k points appears max_k // k (+1) times.
  assert counts.sum() == per_cell.max() * len(per_cell)


def test_bad_config_raises_naming_field():
  with pytest.raises(ValueError, match="mask_ratio"):
    loader.make_pretrain_iterator(_config(mask_ratio=1.5), seed=0)
  with pytest.raises(ValueError, match="dataset"):
    loader.make_pretrain_iterator(_config(dataset="scannet"), seed=0)


def test_folder_source_reads_written_scenes(tmp_path):
  pointcept_io = pytest.importorskip("pointins_jax.data.pointcept_io")
  for seed in range(2):
    pointcept_io.write_scene(make_scene(3000, seed), os.path.join(tmp_path, "train", f"s{seed}"))
  c = _config(root=str(tmp_path), dataset="", batch_size=2, shuffle=False)
  assert loader.num_scenes(c) == 2
  batch = next(loader.make_pretrain_iterator(c, seed=0))
  assert batch["valid"].any(axis=2).all()
  written = np.concatenate([make_scene(3000, s).segment for s in range(2)])
  assert set(np.unique(batch["segment"][batch["valid"]])) <= set(np.unique(written))
  with pytest.raises(FileNotFoundError, match="val"):
    loader.num_scenes(c, split="val")


def _bad_scene_root(tmp_path):
  """train/: s0 fine, s1 NaN coordinate, s2 too few points, s3 fine."""
  pointcept_io = pytest.importorskip("pointins_jax.data.pointcept_io")
  for seed in range(4):
    pointcept_io.write_scene(make_scene(3000, seed), os.path.join(tmp_path, "train", f"s{seed}"))
  coord = np.load(tmp_path / "train" / "s1" / "coord.npy")
  coord[5, 1] = np.nan
  np.save(tmp_path / "train" / "s1" / "coord.npy", coord)
  pointcept_io.write_scene(make_scene(3000, 2).subset(np.arange(10)), str(tmp_path / "train" / "s2"))
  return _config(root=str(tmp_path), dataset="", batch_size=2, shuffle=False)


def test_bad_scenes_are_skipped_named_and_counted(tmp_path, caplog):
  c = _bad_scene_root(tmp_path)
  with caplog.at_level("WARNING"):
    batches = _take(loader.make_pretrain_iterator(c, seed=0), 4)  # two epochs
  # s1 and s2 are replaced by s3 (the next readable scene): 2 + 1 skips per epoch.
  assert [int(b["bad_scenes"].sum()) for b in batches] == [2, 1, 2, 1]
  warnings = [r.getMessage() for r in caplog.records if "bad scene skipped" in r.getMessage()]
  assert len(warnings) == 2  # each bad scene named once, not once per epoch
  assert any("s1/coord.npy" in w and "NaN" in w for w in warnings)
  assert any("s2" in w and "min_view_points=64" in w for w in warnings)
  dropped = loader.DroppedData()
  for batch in batches:
    dropped.add(batch)
    assert "bad_scenes" not in batch and "num_cropped" not in batch
  assert dropped.pop() == {"num_cropped": 0, "bad_scenes": 6}
  assert dropped.pop() == {"num_cropped": 0, "bad_scenes": 0}


def test_bad_scenes_raise_policy_names_the_file(tmp_path):
  c = _bad_scene_root(tmp_path)
  c.bad_scenes = "raise"
  with pytest.raises(Exception, match="s1/coord.npy"):
    _take(loader.make_pretrain_iterator(c, seed=0), 1)
  with pytest.raises(ValueError, match="bad_scenes"):
    loader.make_pretrain_iterator(_config(bad_scenes="ignore"), seed=0)


def test_synthetic_source_caches_copies():
  """Generated scenes are cached (a sweep is ray-cast once), and each access is a copy:
  equal to a fresh generation, and changing it never changes what the next access sees."""
  from pointins_jax.data import synthetic_outdoor
  source = loader.SyntheticSource("synthetic-outdoor", 2, small=True)
  first = source[1]
  fresh = synthetic_outdoor.generate_sweep(1, azimuth_steps=loader._SMALL_AZIMUTH_STEPS)
  first.coord[:] = 0.0
  first.boxes.center[:] = 0.0
  again = source[1]
  np.testing.assert_array_equal(again.coord, fresh.coord)
  np.testing.assert_array_equal(again.boxes.center, fresh.boxes.center)
  assert list(source._cache) == [1]
