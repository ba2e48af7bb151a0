"""Data-following stage capacities: the ladder, the host-side counts and the model's
invariance to them (padding never changes a real point's output)."""
import jax
import numpy as np
import pytest

from pointins_jax.data import batching
from pointins_jax.data import transforms
from pointins_jax.model import configs
from pointins_jax.model import ptv3
from tests.test_ptv3 import padded_batch, surface_scene, tiny_config


def test_stage_point_counts_match_distinct_parent_cells():
  rng = np.random.default_rng(0)
  grid = rng.integers(0, 40, (500, 3))
  counts = batching.stage_point_counts(grid, 4)
  expected = [500] + [len(np.unique(grid >> s, axis=0)) for s in (1, 2, 3)]
  np.testing.assert_array_equal(counts, expected)
  assert transforms.count_cells(grid >> 3) == counts[3]


@pytest.mark.parametrize("count,patch,expected", [
    (1, 128, 8), (8, 128, 8), (9, 128, 16), (13, 128, 16), (17, 128, 24), (25, 128, 32),
    (100, 128, 128), (129, 128, 256),  # 192 -> a multiple of the patch: 256
    (3502, 1024, 4096), (844, 1024, 1024), (3502, 256, 4096), (3000, 256, 3072), (2900, 256, 3072)])
def test_ladder_is_the_smallest_allowed_size(count, patch, expected):
  """Sizes m * 2^e, m in {1, 1.5}, multiples of 8 and (above the patch) of the patch."""
  assert configs._ladder_capacity(count, 2, patch) == expected


def test_fitted_capacities_hold_the_counts_and_never_exceed_fixed_bounds():
  config = tiny_config()
  n = 4096
  fixed = configs.stage_capacities(config, n)
  counts = [4000, 900, 200, 50, 10]
  caps = configs.stage_capacities(config, n, counts)
  assert caps[0] == n
  assert all(c >= k for c, k in zip(caps, counts))
  assert all(c <= f for c, f in zip(caps, fixed))
  assert caps == [4096, 1024, 256, 64, 16]
  # Counts above the fixed bounds (allowed: nothing is cropped for capacity) still fit.
  caps = configs.stage_capacities(config, n, [4096, 3000, 1500, 800, 400])
  assert caps == [4096, 3072, 1536, 1024, 512]
  config.capacity_steps_per_octave = 0
  assert configs.stage_capacities(config, n, counts) == fixed


def test_resolve_capacities_rejects_bad_tuples():
  config = tiny_config()
  with pytest.raises(ValueError, match="stage_capacities"):
    configs.resolve_capacities(config, 256, (256, 300, 64, 16, 8))  # increasing
  with pytest.raises(ValueError, match="stage_capacities"):
    configs.resolve_capacities(config, 256, (256, 100, 64, 16, 8))  # not a multiple of 8


# base_unet (m1) is in the slow suite: 90-170 s on the 2-core CI machine; the default run
# keeps the pretraining model's m2 path, and m1 padding is covered by test_ptv3.
@pytest.mark.parametrize("variant", ["tiny", pytest.param("base_unet", marks=pytest.mark.slow)])
def test_model_output_does_not_depend_on_capacities(variant):
  """Fixed (mostly padding) and fitted capacities give the same features on real points:
  the whole point of fitting them is to drop padding work, never to change results."""
  rng = np.random.default_rng(3)
  overrides = {}
  if variant == "base_unet":  # small widths, m1 conventions (conv stem, BatchNorm)
    overrides = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(16, 16, 32, 32, 32),
                     enc_num_head=(1, 1, 2, 2, 2), enc_patch_size=(64,) * 5,
                     dec_depths=(1, 1, 1, 1), dec_channels=(16, 16, 32, 32),
                     dec_num_head=(1, 1, 2, 2), dec_patch_size=(64,) * 4)
  config = tiny_config(variant, **overrides)
  config.shuffle_orders = True
  scenes = [surface_scene(rng, 700, 6), surface_scene(rng, 500, 6)]
  batch = padded_batch(scenes, 1024)
  counts = np.max([batching.stage_point_counts(g, 5) for _, _, g in scenes], axis=0)
  fitted = tuple(configs.stage_capacities(config, 1024, counts))
  fixed = tuple(configs.stage_capacities(config, 1024))
  assert sum(fitted) < sum(fixed)
  model = ptv3.PointTransformerV3(config)
  inputs = tuple(batch[k] for k in ("coord", "feat", "grid", "valid"))
  variables = model.init(jax.random.key(0), *inputs, train=False)
  out = {}
  for train in (False, True):  # train: drop path and BatchNorm batch statistics
    config.drop_path = 0.3 if train else 0.0
    rngs = {"order": jax.random.key(1), "dropout": jax.random.key(2)}
    for name, caps in (("fixed", fixed), ("fitted", fitted)):
      feats, aux = model.apply(variables, *inputs, train=train, rngs=rngs,
                               stage_capacities=caps, mutable=["batch_stats"])[0]
      assert not np.asarray(aux["overflow"]).any()
      np.testing.assert_array_equal(np.asarray(aux["num_points"])[:, 0], [700, 500])
      out[name] = np.asarray(feats)[batch["valid"]]
    np.testing.assert_allclose(out["fitted"], out["fixed"], rtol=2e-5, atol=2e-5)


def test_collate_fits_capacities_without_cropping():
  rng = np.random.default_rng(1)
  config = tiny_config()
  views = []
  for n in (900, 600):
    coord, feat, _ = surface_scene(rng, n, 6)
    views.append({"coord": coord, "feat": feat, "origin_coord": coord,
                  "origin_index": np.arange(n, dtype=np.int32),
                  "index": np.arange(n, dtype=np.int32), "visible": np.ones(n, bool),
                  "segment": np.zeros(n, np.int32), "instance": np.zeros(n, np.int32),
                  "view_linear": np.eye(3, dtype=np.float32),
                  "view_translation": np.zeros(3, np.float32)})
  batch = batching.collate([views], buckets=(1024,), grid_size=0.02,
                           stage_capacities_fn=lambda n, counts=None: configs.stage_capacities(
                               config, n, counts))
  assert batch["num_cropped"].sum() == 0
  counts = np.max([batching.stage_point_counts(batching.view_grid(v["coord"], 0.02), 5)
                   for v in views], axis=0)
  np.testing.assert_array_equal(batch["stage_capacities"],
                                configs.stage_capacities(config, 1024, counts))


def test_planner_reuses_compiled_profiles_only_when_they_fit_and_are_cheap():
  from pointins_jax import compilation
  planner = compilation.CapacityPlanner(slack=1.5)
  big = (2048, 2048, 1536, 768, 256)
  assert planner.choose(big, (2000, 1900, 1400, 700, 200)) == big
  # Fits in `big` and big costs <= 1.5x the fitted profile: reused.
  assert planner.choose((2048, 2048, 1536, 512, 128), (2000, 1900, 1400, 500, 100)) == big
  # A count above big's stage 3: the fitted profile is compiled.
  assert planner.choose((2048, 2048, 1536, 1024, 256), (2000, 1900, 1400, 900, 200)) == (
      2048, 2048, 1536, 1024, 256)
  # Fits but would cost more than 1.5x: compiled, not reused.
  small = (2048, 256, 64, 16, 8)
  assert planner.choose(small, (2000, 250, 60, 16, 8)) == small
  assert planner.compiled == [big, (2048, 2048, 1536, 1024, 256), small]
  # Another stage-0 size never reuses.
  assert planner.choose((1024, 512, 128, 32, 8), (1000, 400, 100, 30, 8))[0] == 1024


def test_drop_path_draws_do_not_depend_on_capacity():
  from pointins_jax.model import blocks
  layer = blocks.DropPath(0.5)
  rngs = {"dropout": jax.random.key(0)}
  x = np.ones((2, 64, 3), np.float32)
  full = np.asarray(layer.apply({}, x, True, rngs=rngs))
  short = np.asarray(layer.apply({}, x[:, :40], True, rngs=rngs))
  np.testing.assert_array_equal(full[:, :40], short)
  assert 0 < (full == 0).mean() < 1
