"""Parameter counts of the published configurations (ptv3_ssl_spec.md §3.7).

Shapes only: `jax.eval_shape` of `init`, no parameter is allocated.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.model import configs
from pointins_jax.model import ptv3


def count_parameters(variant: str, n_points: int = 1024) -> int:
  """Number of trainable parameters (BatchNorm statistics excluded)."""
  config = configs.model_config(variant)
  model = ptv3.PointTransformerV3(config)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, n_points, 3)),
                         jnp.zeros((1, n_points, config.in_channels)),
                         jnp.zeros((1, n_points, 3), jnp.int32), jnp.ones((1, n_points), bool),
                         train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("variant,expected", [("large", 108.46e6), ("base_unet", 46.17e6),
                                              ("large_unet", 124.79e6)])
def test_published_counts(variant, expected):
  assert abs(count_parameters(variant) / expected - 1) < 0.005


def test_base_encoder_count_is_reported():
  """The decoder-free base encoder (in 9); the PointINS paper quotes 38M."""
  count = count_parameters("base")
  print(f"base encoder parameters: {count / 1e6:.2f}M")
  assert 30e6 < count < 46.17e6
