"""model.layer_norm: values, gradients and parameters against flax's LayerNorm (autodiff)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.model import layer_norm as layer_norm_lib


@pytest.mark.parametrize("shape", [(2, 37, 16), (5, 3)])
def test_matches_flax_layer_norm_values_and_gradients(shape):
  rng = np.random.default_rng(0)
  # An offset mean and a spread scale make the variance term matter.
  x = jnp.asarray(rng.normal(3.0, 2.0, size=shape), jnp.float32)
  dy = jnp.asarray(rng.normal(size=shape), jnp.float32)
  ours, ref = layer_norm_lib.LayerNorm(1e-5), nn.LayerNorm(epsilon=1e-5)
  params = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, params)
  params = jax.tree.map(  # non-trivial scale and bias, so their gradients are tested
      lambda p: p + jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)

  def loss(module, params, x):
    return jnp.sum(jnp.sin(module.apply(params, x)) * dy)

  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  got = jax.grad(loss, argnums=(1, 2))(ours, params, x)
  want = jax.grad(loss, argnums=(1, 2))(ref, params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_gradient_matches_finite_differences():
  """Independent of flax: the backward against central differences of the forward."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  scale = rng.normal(size=6).astype(np.float32)
  bias = rng.normal(size=6).astype(np.float32)
  w = rng.normal(size=(4, 6)).astype(np.float32)
  f = lambda x: jnp.sum(layer_norm_lib.layer_norm(x, scale, bias, 1e-5) * w)
  grad = np.asarray(jax.grad(f)(jnp.asarray(x)))
  h = 1e-2
  for i, j in [(0, 0), (1, 3), (3, 5)]:
    e = np.zeros_like(x); e[i, j] = h
    fd = (float(f(x + e)) - float(f(x - e))) / (2 * h)
    np.testing.assert_allclose(grad[i, j], fd, rtol=2e-2, atol=2e-3)
