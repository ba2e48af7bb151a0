"""Offset frames and the offset loss against numpy hand computations."""
import numpy as np
import jax.numpy as jnp
from scipy.spatial.transform import Rotation

from configs import pointins_indoor
from pointins_jax.data import batching
from pointins_jax.data import synthetic_indoor
from pointins_jax.data import views as views_lib
from pointins_jax.metrics import offset_quality
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


def test_offset_frame_mapping_is_exact_through_a_batch_with_elastic_distortion():
  """Ground-truth offsets drawn in the offset branch's frame come back to the original
  frame within 1 mm through a real pretraining batch (float32, crops, padding), although
  elastic distortion moves the points by centimetres: it is not part of the frame."""
  config = pointins_indoor.get_config("demo").data
  config.augment.elastic_p = 1.0  # always distort
  scene = synthetic_indoor.generate_room(3, small=True)
  views = views_lib.pretrain_views(scene, config, np.random.default_rng(0))
  batch = batching.collate([views], buckets=config.buckets, grid_size=config.grid_size)
  linear = batch["view_linear"][0]  # f32 [V, 3, 3]
  for v in range(2):
    valid = batch["valid"][0, v]
    origin = batch["origin_coord"][0, v][valid].astype(np.float64)
    centre, has = offset_quality.instance_centres(origin, batch["instance"][0, v][valid])
    target = (centre - origin)[has]  # original frame, metres
    o_view = target @ linear[v].astype(np.float64).T  # what the branch should predict
    back = offsets_lib.to_original_frame(jnp.asarray(o_view, jnp.float32)[None],
                                         jnp.asarray(linear[v])[None])[0]
    assert np.abs(np.asarray(back, np.float64) - target).max() < 1e-3
    # The non-affine displacement the mapping leaves out is centimetres, not noise.
    affine = (batch["coord"][0, v][valid] - batch["view_translation"][0, v]).astype(np.float64)
    displacement = np.linalg.solve(linear[v].astype(np.float64), affine.T).T - origin
    assert np.median(np.linalg.norm(displacement, axis=1)) > 0.01
