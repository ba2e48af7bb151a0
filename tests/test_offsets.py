"""Offset frames and the offset loss against numpy hand computations."""
import numpy as np
import jax.numpy as jnp
from scipy.spatial.transform import Rotation

from pointins_jax.pointins import offsets as offsets_lib


def test_to_original_frame_inverts_the_view_affine():
  rng = np.random.default_rng(0)
  rot = Rotation.random(2, random_state=1).as_matrix()
  flip = np.diag([-1.0, 1.0, 1.0])
  linear = np.stack([rot[0] * 1.1, rot[1] @ flip * 0.9]).astype(np.float32)  # [V, 3, 3]
  o_orig = rng.normal(size=(2, 50, 3)).astype(np.float32)
  o_view = np.einsum("vij,vnj->vni", linear, o_orig)
  back = offsets_lib.to_original_frame(jnp.asarray(o_view), jnp.asarray(linear))
  np.testing.assert_allclose(back, o_orig, atol=1e-5)


def test_offset_loss_matches_hand_computation():
  pred = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]], np.float32)
  target = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
  weight = np.array([1.0, 1.0, 0.0], np.float32)  # the third point has no target
  loss, parts = offsets_lib.offset_loss(jnp.asarray(pred), jnp.asarray(target),
                                        jnp.asarray(weight))
  # point 0: L1 = 2, cos = 0 -> 2 + 1; point 1: L1 = 1, cos = 1 -> 1 + 0. Mean = 2.
  np.testing.assert_allclose(parts["l1"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(parts["direction"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(loss, 2.0, rtol=1e-6)


def test_offset_loss_without_targets_is_zero():
  loss, _ = offsets_lib.offset_loss(jnp.ones((4, 3)), jnp.zeros((4, 3)), jnp.zeros((4,)))
  assert float(loss) == 0.0
