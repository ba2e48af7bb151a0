"""model.batch_norm: values, running statistics and gradients against flax's masked BatchNorm."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.model import batch_norm as batch_norm_lib

_MOMENTUM, _EPS = 0.99, 1e-3


def _inputs(shape, seed=0):
  """x with an offset mean and spread scale (so the variance term matters), a mask with
  padding rows, and a cotangent that is non-zero on padding rows too."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(3.0, 2.0, size=shape), jnp.float32)
  mask = jnp.asarray(rng.random(shape[:-1]) < 0.7)
  dy = jnp.asarray(rng.normal(size=shape), jnp.float32)
  return rng, x, mask, dy


def _modules():
  return (batch_norm_lib.BatchNorm(_MOMENTUM, _EPS),
          nn.BatchNorm(momentum=_MOMENTUM, epsilon=_EPS))


def _apply(module, variables, x, mask, train):
  if isinstance(module, nn.BatchNorm):
    return module.apply(variables, x, use_running_average=not train, mask=mask[..., None],
                        mutable=["batch_stats"] if train else False)
  return module.apply(variables, x, mask, use_running_average=not train,
                      mutable=["batch_stats"] if train else False)


@pytest.mark.parametrize("shape", [(2, 37, 16), (50, 3)])
def test_matches_flax_values_statistics_and_gradients(shape):
  rng, x, mask, dy = _inputs(shape)
  ours, ref = _modules()
  variables = ref.init(jax.random.key(0), x, use_running_average=False, mask=mask[..., None])
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x, mask,
                                           use_running_average=False)) == jax.tree.map(
                                               jnp.shape, variables)
  # Non-trivial scale, bias and running statistics, so every term is exercised.
  variables = jax.tree.map(lambda v: v + jnp.abs(jnp.asarray(rng.normal(size=v.shape),
                                                             jnp.float32)), variables)

  for train in (True, False):
    (y_ours, y_ref) = (_apply(m, variables, x, mask, train) for m in (ours, ref))
    if train:
      (y_ours, stats_ours), (y_ref, stats_ref) = y_ours, y_ref
      for a, b in zip(jax.tree.leaves(stats_ours), jax.tree.leaves(stats_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_ours, y_ref, rtol=1e-4, atol=1e-4)

  def loss(module, params, x):
    out, _ = _apply(module, {"params": params, "batch_stats": variables["batch_stats"]}, x,
                    mask, True)
    return jnp.sum(jnp.sin(out) * dy)

  got = jax.grad(loss, argnums=(1, 2))(ours, variables["params"], x)
  want = jax.grad(loss, argnums=(1, 2))(ref, variables["params"], x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_init_does_not_move_running_statistics():
  _, x, mask, _ = _inputs((3, 8, 4))
  variables = batch_norm_lib.BatchNorm(_MOMENTUM, _EPS).init(jax.random.key(0), x, mask,
                                                             use_running_average=False)
  np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)
  np.testing.assert_array_equal(variables["batch_stats"]["var"], 1.0)


def test_gradients_match_finite_differences_with_statistic_cotangents():
  """Independent of flax: d/d(x, scale, bias) of a functional of y, mean and var."""
  rng = np.random.default_rng(1)
  x = rng.normal(1.0, 1.5, size=(7, 5)).astype(np.float32)
  mask = jnp.asarray([True, True, False, True, True, False, True])
  scale, bias = (rng.normal(size=5).astype(np.float32) for _ in range(2))
  w, w_mean, w_var = (rng.normal(size=s).astype(np.float32) for s in ((7, 5), 5, 5))

  def f(x, scale, bias):
    y, mean, var = batch_norm_lib.masked_batch_norm(x, mask, scale, bias, _EPS)
    return jnp.sum(y * w) + jnp.sum(mean * w_mean) + jnp.sum(var * w_var)

  args = [jnp.asarray(a, jnp.float64) if jax.config.jax_enable_x64 else jnp.asarray(a)
          for a in (x, scale, bias)]
  grads = jax.grad(f, argnums=(0, 1, 2))(*args)
  h = 1e-2
  for arg, index in [(0, (0, 0)), (0, (2, 3)), (0, (6, 4)), (1, (2,)), (2, (4,))]:
    plus, minus = [np.array(a) for a in args], [np.array(a) for a in args]
    plus[arg][index] += h
    minus[arg][index] -= h
    fd = (float(f(*plus)) - float(f(*minus))) / (2 * h)
    np.testing.assert_allclose(np.asarray(grads[arg])[index], fd, rtol=2e-2, atol=2e-3)


def test_no_masked_in_row_stays_finite():
  x = jnp.ones((2, 4, 3))
  mask = jnp.zeros((2, 4), bool)
  y, mean, var = batch_norm_lib.masked_batch_norm(x, mask, jnp.ones(3), jnp.zeros(3), _EPS)
  np.testing.assert_array_equal(mean, 0.0)
  np.testing.assert_array_equal(var, 0.0)
  np.testing.assert_allclose(y, 1.0 / np.sqrt(_EPS), rtol=1e-5)
  grad = jax.grad(lambda x: jnp.sum(batch_norm_lib.masked_batch_norm(
      x, mask, jnp.ones(3), jnp.zeros(3), _EPS)[0]))(x)
  assert np.isfinite(np.asarray(grad)).all()
