"""PTv3 encoder / U-Net: pooling vs numpy, shapes, gradients, padding and permutation
invariance, overflow detection. Tiny config and small scenes (production: base/large at
80k-point views); the 20k-point fwd+bwd run is marked slow."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from pointins_jax.model import blocks
from pointins_jax.model import configs
from pointins_jax.model import pooling
from pointins_jax.model import ptv3

GRID_SIZE = 0.02  # metres


def surface_scene(rng, n, in_channels):
  """n points on the floor and two walls of a room, one per 2 cm cell (like GridSample)."""
  side = np.sqrt(n / 3.0) * GRID_SIZE * 1.3
  m = 4 * n
  u, v = rng.random((2, m)) * side
  face = rng.integers(0, 3, m)
  zeros = np.zeros(m)
  xyz = np.select([face[:, None] == 0, face[:, None] == 1],
                  [np.stack([u, v, zeros], 1), np.stack([u, zeros, v], 1)],
                  np.stack([zeros, u, v], 1))
  cells, first = np.unique(np.floor(xyz / GRID_SIZE).astype(np.int32), axis=0,
                           return_index=True)
  keep = rng.permutation(len(cells))[:n]
  assert len(keep) == n, "scene too small"
  coord = xyz[first[keep]].astype(np.float32)
  grid = cells[keep]
  feat = np.concatenate([coord, rng.random((n, in_channels - 3))], 1).astype(np.float32)
  return coord, feat, grid


def padded_batch(scenes, n_pad, rng=None):
  """Stacks scenes padded to n_pad; padding holds garbage when rng is given."""
  out = {k: [] for k in ("coord", "feat", "grid", "valid")}
  for coord, feat, grid in scenes:
    n = len(coord)
    garbage = (lambda shape, dtype: rng.integers(0, 9, shape).astype(dtype)) if rng else (
        lambda shape, dtype: np.zeros(shape, dtype))
    out["coord"].append(np.concatenate([coord, garbage((n_pad - n, 3), np.float32)]))
    out["feat"].append(np.concatenate([feat, garbage((n_pad - n, feat.shape[1]), np.float32)]))
    out["grid"].append(np.concatenate([grid, garbage((n_pad - n, 3), np.int32)]))
    out["valid"].append(np.arange(n_pad) < n)
  return {k: np.stack(v) for k, v in out.items()}


def tiny_config(variant="tiny", **overrides):
  config = configs.model_config(variant)
  config.in_channels = 6
  config.shuffle_orders = False
  config.drop_path = 0.0
  config.update(overrides)
  return config


def _key(config):
  return tuple(sorted(config.items()))


@functools.lru_cache(maxsize=None)
def _init(config_key):
  """Parameters do not depend on the point count: initialise once at 256 points."""
  config = configs.model_config("tiny")
  config.update(dict(config_key))
  model = ptv3.PointTransformerV3(config)
  init = jax.jit(functools.partial(model.init, train=False))
  n = 256
  return model, init(jax.random.key(0), jnp.zeros((1, n, 3)), jnp.zeros((1, n, config.in_channels)),
                     jnp.zeros((1, n, 3), jnp.int32), jnp.ones((1, n), bool))


def init_model(config):
  return _init(_key(config))


@functools.lru_cache(maxsize=None)
def _apply(config_key):
  model, _ = _init(config_key)

  @jax.jit
  def apply(variables, batch):
    # train=True: BatchNorm uses (masked) batch statistics; drop path is off in these configs.
    (out, aux), _ = model.apply(variables, batch["coord"], batch["feat"], batch["grid"],
                                batch["valid"], train=True, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(1), "order": jax.random.key(2)})
    return out, aux
  return apply


def apply_fn(config):
  return _apply(_key(config))


def test_grid_pool_matches_numpy():
  rng = np.random.default_rng(0)
  n, capacity = 300, 300
  grid = rng.integers(0, 12, (n, 3)).astype(np.int32)
  coord = rng.random((n, 3)).astype(np.float32)
  valid = rng.random(n) < 0.8
  got = jax.jit(pooling.grid_pool, static_argnums=3)(grid, valid, coord, capacity)
  parents, inverse = np.unique(grid[valid] >> 1, axis=0, return_inverse=True)
  count = len(parents)
  assert int(got["count"]) == count and not bool(got["overflow"])
  assert np.asarray(got["valid"]).sum() == count
  cluster = np.asarray(got["cluster"])
  assert (cluster[~valid] == capacity).all()
  coarse_grid = np.asarray(got["grid"])[:count]
  np.testing.assert_array_equal(coarse_grid[cluster[valid]], grid[valid] >> 1)
  np.testing.assert_array_equal(np.unique(coarse_grid, axis=0), parents)
  means = np.stack([coord[valid][inverse.ravel() == p].mean(0) for p in range(count)])
  slot_of_parent = cluster[valid][np.unique(inverse.ravel(), return_index=True)[1]]
  np.testing.assert_allclose(np.asarray(got["coord"])[slot_of_parent], means, rtol=1e-5)


def test_grid_pooling_module_is_max_of_projection():
  rng = np.random.default_rng(1)
  n, capacity, c_in, c_out = 64, 64, 5, 7
  grid = rng.integers(0, 6, (1, n, 3)).astype(np.int32)
  valid = np.ones((1, n), bool)
  coarse = jax.vmap(lambda g, v: pooling.grid_pool(g, v, jnp.zeros((n, 3)), capacity))(
      grid, valid)
  x = rng.normal(size=(1, n, c_in)).astype(np.float32)
  module = pooling.GridPooling(c_out, "layer")
  params = module.init(jax.random.key(0), x, coarse, train=False)
  got = np.asarray(module.apply(params, x, coarse, train=False))[0]
  p = params["params"]
  y = x[0] @ np.asarray(p["proj"]["kernel"]) + np.asarray(p["proj"]["bias"])
  cluster, count = np.asarray(coarse["cluster"])[0], int(coarse["count"][0])
  pooled = np.stack([y[cluster == s].max(0) for s in range(count)])
  normed = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True)
                                                                + blocks.LAYER_NORM_EPS)
  expected = np.asarray(blocks.gelu(jnp.asarray(normed)))
  np.testing.assert_allclose(got[:count], expected, rtol=1e-4, atol=1e-5)
  assert (got[count:] == 0).all()


def test_gelu_is_exact():
  x = jnp.asarray([-2.0, 0.5, 3.0])
  expected = 0.5 * np.asarray(x) * (1 + erf(np.asarray(x) / np.sqrt(2)))
  np.testing.assert_allclose(blocks.gelu(x), expected, rtol=1e-6)


@pytest.mark.parametrize("variant_overrides", [
    {}, {"enc_mode": False, "stem": "conv", "norm": "batch", "unpool_conv_skip_only": True}])
def test_padding_does_not_change_real_points(variant_overrides):
  """Same scenes padded to 2048 (zeros) and 4096 (garbage) points: identical real outputs.
  Both capacities give every stage the same patch length, so only padding differs."""
  config = tiny_config(**variant_overrides)
  rng = np.random.default_rng(0)
  scenes = [surface_scene(rng, n, 6) for n in (1500, 900)]
  small = padded_batch(scenes, 2048)
  large = padded_batch(scenes, 4096, rng)
  _, variables = init_model(config)
  out_small, aux_small = apply_fn(config)(variables, small)
  out_large, aux_large = apply_fn(config)(variables, large)
  assert not np.asarray(aux_small["overflow"]).any()
  np.testing.assert_array_equal(aux_small["num_points"], aux_large["num_points"])
  for b, (coord, _, _) in enumerate(scenes):
    n = len(coord)
    np.testing.assert_allclose(out_large[b, :n], out_small[b, :n], rtol=1e-4, atol=1e-5)
    assert (np.asarray(out_large[b, n:]) == 0).all()


def test_permuting_points_permutes_outputs():
  config = tiny_config()
  rng = np.random.default_rng(1)
  # Two scenes, as in the other tests, so the compiled forward pass is reused.
  batch = padded_batch([surface_scene(rng, n, 6) for n in (1800, 1000)], 2048)
  perm = rng.permutation(2048)
  permuted = {k: v[:, perm] for k, v in batch.items()}
  _, variables = init_model(config)
  out, aux = apply_fn(config)(variables, batch)
  out_perm, _ = apply_fn(config)(variables, permuted)
  assert out.shape == (2, 2048, sum(config.enc_channels))
  np.testing.assert_array_equal(aux["num_points"][:, 0], [1800, 1000])
  np.testing.assert_allclose(out_perm, np.asarray(out)[:, perm], atol=1e-5, rtol=1e-5)


def _forward_backward(n_points, n_real):
  _, variables = init_model(tiny_config())
  config = tiny_config(drop_path=0.3, shuffle_orders=True)
  model = ptv3.PointTransformerV3(config)
  rng = np.random.default_rng(2)
  batch = padded_batch([surface_scene(rng, n, 6) for n in n_real], n_points)
  weights = jnp.asarray(rng.normal(size=(len(n_real), n_points, sum(config.enc_channels))),
                        jnp.float32)

  @jax.jit
  def loss_and_grad(params, batch):
    def loss(p):
      out, aux = model.apply({"params": p}, batch["coord"], batch["feat"], batch["grid"],
                             batch["valid"], train=True,
                             rngs={"dropout": jax.random.key(3), "order": jax.random.key(4)})
      return jnp.sum(out * weights), (out, aux)
    return jax.value_and_grad(loss, has_aux=True)(params)

  (value, (out, aux)), grads = loss_and_grad(variables["params"], batch)
  assert out.shape == (len(n_real), n_points, sum(config.enc_channels))
  assert np.isfinite(float(value))
  assert not np.asarray(aux["overflow"]).any()
  np.testing.assert_array_equal(aux["num_points"][:, 0], n_real)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) == len(leaves)
  for b, n in enumerate(n_real):
    assert (np.asarray(out[b, n:]) == 0).all()


def test_forward_backward_small():
  _forward_backward(2048, (2000, 1200))


@pytest.mark.slow
def test_forward_backward_20k():
  _forward_backward(20480, (20000, 15000))


def test_overflow_is_flagged_and_raises():
  config = tiny_config()
  rng = np.random.default_rng(3)
  n = 2048
  grid = rng.integers(0, 1 << 12, (2, n, 3)).astype(np.int32)  # isolated cells: no merging
  valid = np.ones((2, n), bool)
  valid[1, 100:] = False  # the second scene fits every stage (smallest holds 128)
  batch = {"coord": (grid * GRID_SIZE).astype(np.float32),
           "feat": rng.normal(size=(2, n, 6)).astype(np.float32), "grid": grid, "valid": valid}
  _, variables = init_model(config)
  _, aux = apply_fn(config)(variables, batch)
  np.testing.assert_array_equal(aux["overflow"], [[False, True, True, True, True],
                                                  [False, False, False, False, False]])
  with pytest.raises(ValueError, match="stage_capacity_fractions"):
    configs.check_overflow(aux, config)


def test_stage_capacities():
  config = configs.model_config("base")
  assert configs.stage_capacities(config, 81920) == [81920, 40960, 20480, 10240, 5120]
  assert configs.stage_capacities(config, 1024) == [1024, 512, 256, 128, 64]
  with pytest.raises(ValueError, match="enc_patch_size"):
    configs.stage_capacities(config, 1500)
  config.stage_capacity_fractions = (1.0, 0.5)
  with pytest.raises(ValueError, match="stage_capacity_fractions"):
    configs.stage_capacities(config, 1024)


def test_bad_inputs_raise():
  config = tiny_config()
  model, variables = init_model(config)
  with pytest.raises(ValueError, match="in_channels"):
    model.apply(variables, jnp.zeros((1, 256, 3)), jnp.zeros((1, 256, 9)),
                jnp.zeros((1, 256, 3), jnp.int32), jnp.ones((1, 256), bool), train=False)
