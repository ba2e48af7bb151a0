"""Tests of the projection and offset heads against numpy re-computations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from configs import pointins_indoor
from pointins_jax.pointins import heads
from pointins_jax.pointins import network
from pointins_jax.pointins import train

# Tiny sizes; production is C=1088 (up-cast features), hidden 4096, bottleneck 256, K 4096.
C, HIDDEN, BOTTLENECK, K = 24, 32, 16, 40


def test_gelu_is_exact_erf_form():
  x = np.linspace(-6, 6, 201).astype(np.float32)
  expected = 0.5 * x * (1 + special.erf(x / np.sqrt(2)))
  np.testing.assert_allclose(heads.gelu(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-7)
  tanh_form = jax.nn.gelu(jnp.asarray(x), approximate=True)
  assert np.max(np.abs(np.asarray(tanh_form) - expected)) > 1e-4  # the test can tell them apart


def test_l2_normalize_zero_vector_stays_finite():
  x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(heads.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])


def _init(module, x):
  return module.init(jax.random.PRNGKey(0), x)["params"]


def test_projection_head_matches_numpy_and_prototypes_are_unit_norm():
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, C))  # [B, N, C]
  head = heads.ProjectionHead(hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK, num_prototypes=K)
  params = _init(head, x)
  logits = head.apply({"params": params}, x)
  assert logits.shape == (2, 5, K) and logits.dtype == jnp.float32
  assert set(params) == {"fc1", "fc2", "prototypes"}
  assert params["prototypes"].shape == (K, BOTTLENECK)

  p = jax.tree.map(np.asarray, params)
  h = np.asarray(x) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
  z = h @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  protos = p["prototypes"] / np.linalg.norm(p["prototypes"], axis=-1, keepdims=True)
  np.testing.assert_allclose(logits, z @ protos.T, rtol=1e-4, atol=1e-5)
  assert np.all(np.abs(np.asarray(logits)) <= 1 + 1e-5)

  # The prototype magnitude is fixed at 1: scaling the stored rows changes nothing.
  scaled = dict(params, prototypes=params["prototypes"] * 7.0)
  np.testing.assert_allclose(head.apply({"params": scaled}, x), logits, rtol=1e-5, atol=1e-6)


def test_projection_head_init_is_trunc_normal_002():
  head = heads.ProjectionHead(hidden_dim=256, bottleneck_dim=64, num_prototypes=256)
  params = _init(head, jnp.zeros((1, 64)))
  kernel = np.asarray(params["fc1"]["kernel"])
  # timm's trunc_normal_(std=0.02) truncates at +-2 absolute: effectively N(0, 0.02^2),
  # so about 4.6% of 16384 weights lie beyond 2 sigma (flax's default bounds give none).
  assert kernel.std() == pytest.approx(0.02, rel=0.03)
  assert 0.03 < np.mean(np.abs(kernel) > 0.04) < 0.06
  assert np.all(np.asarray(params["fc1"]["bias"]) == 0)


def test_offset_head_shape_and_numpy_match():
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 7, C))
  head = heads.OffsetHead(hidden_dim=HIDDEN)
  params = _init(head, x)
  out = head.apply({"params": params}, x)
  assert out.shape == (3, 7, 3)
  p = jax.tree.map(np.asarray, params)
  h = np.asarray(x) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
  h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
  h = h * p["norm"]["scale"] + p["norm"]["bias"]
  h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
  np.testing.assert_allclose(out, h @ p["fc2"]["kernel"] + p["fc2"]["bias"], rtol=1e-4,
                             atol=1e-5)


@pytest.mark.parametrize("stages, width", [(3, 64 + 64 + 64), (5, 16 + 32 + 64 + 64 + 64)])
def test_offset_head_reads_the_last_encoder_stages(stages, width):
  config = pointins_indoor.get_config("demo")  # tiny: enc_channels (16, 32, 64, 64, 64)
  assert config.heads.offset_stages == 3  # the paper's "last three encoder stages"
  config.heads.offset_stages = stages
  params = jax.eval_shape(lambda: train.init_train_state(config, jax.random.key(0), 10).params)
  hidden = config.heads.offset_hidden
  assert params["offset_head"]["fc1"]["kernel"].shape == (width, hidden)
  # The projection head keeps the whole up-cast output [C0 | ... | C4].
  assert params["projection_head"]["fc1"]["kernel"].shape[0] == 240


def test_offset_stages_need_the_upcast_levels():
  config = pointins_indoor.get_config("demo")
  config.model.upcast_levels = 1  # output [C3 | C4]: no third stage to read
  with pytest.raises(ValueError, match="heads.offset_stages"):
    network.offset_feature_width(config.model, config.heads)
