"""CenterPoint-style detection pieces: targets, BEV scatter, focal loss, decoding, circle NMS."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.data.boxes import DETECTION_CLASSES
from pointins_jax.probe import detection as det

CAR, TRUCK, PED = (DETECTION_CLASSES.index(n) for n in ("car", "truck", "pedestrian"))


def _spec(with_velocity=False, **kw):
  groups = ((CAR,), (TRUCK,), (PED,))
  return det.DetectionSpec(x_min=-8.0, y_min=-8.0, cell=0.5, height=32, width=32,
                           groups=groups, with_velocity=with_velocity, **kw)


def _batch(centers, sizes, yaws, labels, velocity=None, m=6):
  n = len(centers)
  batch = dict(box_center=np.zeros((1, m, 3), np.float32), box_size=np.ones((1, m, 3), np.float32),
               box_yaw=np.zeros((1, m), np.float32), box_label=np.zeros((1, m), np.int32),
               box_valid=np.zeros((1, m), bool), box_velocity=np.zeros((1, m, 2), np.float32))
  batch["box_center"][0, :n] = centers
  batch["box_size"][0, :n] = sizes
  batch["box_yaw"][0, :n] = yaws
  batch["box_label"][0, :n] = labels
  batch["box_valid"][0, :n] = True
  if velocity is not None:
    batch["box_velocity"][0, :n] = velocity
  return batch


def _centerpoint_gaussian_radius(det_size, min_overlap=0.5):
  # Verbatim from CenterPoint det3d/core/utils/center_utils.py.
  height, width = det_size
  a1 = 1
  b1 = (height + width)
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  sq1 = np.sqrt(b1 ** 2 - 4 * a1 * c1)
  r1 = (b1 + sq1) / 2
  a2 = 4
  b2 = 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  sq2 = np.sqrt(b2 ** 2 - 4 * a2 * c2)
  r2 = (b2 + sq2) / 2
  a3 = 4 * min_overlap
  b3 = -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  sq3 = np.sqrt(b3 ** 2 - 4 * a3 * c3)
  r3 = (b3 + sq3) / 2
  return min(r1, r2, r3)


def test_gaussian_radius_matches_centerpoint():
  for size in [(1.0, 1.0), (9.0, 2.5), (0.3, 0.7), (30.0, 4.0)]:
    for overlap in (0.1, 0.5, 0.7):
      assert det.gaussian_radius(size, overlap) == pytest.approx(
          _centerpoint_gaussian_radius(size, overlap), rel=1e-12)


def test_draw_gaussian_peak_and_clipping():
  hm = np.zeros((10, 12), np.float32)
  det.draw_gaussian(hm, (0, 9), 2)  # corner: clipped, no error
  assert hm[9, 0] == 1.0 and hm.max() == 1.0
  assert hm[9, 1] == pytest.approx(np.exp(-1 / (2 * (5 / 6) ** 2)), rel=1e-6)
  assert hm[9, 3] == 0 and hm[6, 0] == 0  # radius 2
  assert np.count_nonzero(hm) == 9


def test_targets_peak_at_centre_cell_and_radius():
  spec = _spec()
  # A 4.5 x 1.8 m car at (1.3, -2.2): cell ((1.3 + 8) / 0.5, (-2.2 + 8) / 0.5) = (18.6, 11.6).
  batch = _batch([[1.3, -2.2, 0.8]], [[4.5, 1.8, 1.5]], [0.3], [CAR])
  t = det.build_targets(batch, spec)
  hm = t["heatmap"][0, :, :, 0]
  assert hm[11, 18] == 1.0 and np.count_nonzero(hm == 1.0) == 1
  radius = max(2, int(det.gaussian_radius((9.0, 3.6), 0.1)))
  ys, xs = np.nonzero(hm)
  assert xs.min() == 18 - radius and xs.max() == 18 + radius
  assert t["heatmap"][..., 1:].max() == 0  # other groups empty
  assert t["reg_mask"][0].tolist() == [True] + [False] * 5
  assert t["reg_index"][0, 0] == 11 * 32 + 18 and t["reg_group"][0, 0] == 0
  np.testing.assert_allclose(t["reg_target"][0, 0], [0.6, 0.6, 0.8, np.log(4.5), np.log(1.8),
                                                     np.log(1.5), np.sin(0.3), np.cos(0.3)],
                             rtol=1e-5, atol=1e-5)


def test_targets_skip_boxes_outside_grid_or_groups():
  spec = _spec()
  bicycle = DETECTION_CLASSES.index("bicycle")  # in no group of this spec
  batch = _batch([[20.0, 0, 0], [0, 0, 0]], [[1, 1, 1]] * 2, [0, 0], [CAR, bicycle])
  t = det.build_targets(batch, spec)
  assert t["boxes_outside"][0] == 2 and not t["reg_mask"].any() and t["heatmap"].max() == 0


def _reg_map(t, spec):
  """A regression map holding every target at its centre cell: [1, H, W, G, R]."""
  reg = np.zeros((1, spec.height * spec.width, len(spec.groups), spec.reg_dim), np.float32)
  for k in np.flatnonzero(t["reg_mask"][0]):
    reg[0, t["reg_index"][0, k], t["reg_group"][0, k]] = t["reg_target"][0, k]
  return reg.reshape(1, spec.height, spec.width, len(spec.groups), spec.reg_dim)


@pytest.mark.parametrize("with_velocity", [False, True])
def test_decode_of_encode_recovers_boxes(with_velocity):
  spec = _spec(with_velocity=with_velocity)
  centers = [[1.3, -2.2, 0.8], [-6.1, 5.3, 1.2], [4.0, 4.0, -0.5]]
  sizes = [[4.5, 1.8, 1.5], [9.0, 2.6, 3.1], [0.6, 0.7, 1.8]]
  yaws = [0.3, -2.5, 3.0]
  labels = [CAR, TRUCK, PED]
  vel = [[1.0, -2.0], [0.5, 0.0], [0.0, 0.3]]
  t = det.build_targets(_batch(centers, sizes, yaws, labels, vel), spec)
  # Logits from the target heatmap: peaks exactly at the centres.
  logits = jnp.asarray(np.where(t["heatmap"] == 1, 5.0, -5.0))
  out = det.decode_topk({"heatmap": logits, "reg": jnp.asarray(_reg_map(t, spec))}, spec, k=4)
  assert out["score"].shape == (1, 3, 4)
  for g in range(3):
    assert out["score"][0, g, 0] > 0.99 and out["score"][0, g, 1] < 0.01
    assert out["label"][0, g, 0] == labels[g]
    np.testing.assert_allclose(out["center"][0, g, 0], centers[g], atol=1e-5)
    np.testing.assert_allclose(out["size"][0, g, 0], sizes[g], rtol=1e-5)
    assert np.cos(out["yaw"][0, g, 0] - yaws[g]) == pytest.approx(1.0, abs=1e-6)
    if with_velocity:
      np.testing.assert_allclose(out["velocity"][0, g, 0], vel[g], atol=1e-6)
  assert ("velocity" in out) == with_velocity


def test_peak_scores_keep_local_maxima_only():
  hm = np.full((1, 5, 5, 1), -5.0, np.float32)
  hm[0, 2, 2, 0], hm[0, 2, 3, 0], hm[0, 0, 0, 0] = 3.0, 2.0, 1.0
  s = np.asarray(det.peak_scores(jnp.asarray(hm)))[0, :, :, 0]
  assert s[2, 2] > 0.9 and s[2, 3] == 0 and s[0, 0] > 0.7


def test_bev_scatter_max_vs_loop():
  spec = _spec()
  rng = np.random.default_rng(0)
  coord = rng.uniform(-9, 9, (2, 200, 3)).astype(np.float32)
  feat = rng.uniform(0, 1, (2, 200, 4)).astype(np.float32)
  valid = rng.random((2, 200)) < 0.8
  got = np.asarray(det.bev_scatter_max(jnp.asarray(coord), jnp.asarray(feat),
                                       jnp.asarray(valid), spec))
  want = np.zeros((2, spec.height, spec.width, 4), np.float32)
  for b in range(2):
    for p in range(200):
      ix, iy = int(np.floor((coord[b, p, 0] + 8) / 0.5)), int(np.floor((coord[b, p, 1] + 8) / 0.5))
      if valid[b, p] and 0 <= ix < 32 and 0 <= iy < 32:
        want[b, iy, ix] = np.maximum(want[b, iy, ix], feat[b, p])
  np.testing.assert_allclose(got, want)
  # Differentiable: the gradient reaches the features of the cells' maxima.
  g = jax.grad(lambda f: det.bev_scatter_max(jnp.asarray(coord), f, jnp.asarray(valid),
                                             spec).sum())(jnp.asarray(feat))
  assert np.asarray(g).sum() == pytest.approx(np.count_nonzero(want), abs=1e-3)


def test_focal_loss_matches_reference_formula():
  rng = np.random.default_rng(1)
  target = np.zeros((1, 6, 6, 2), np.float32)
  det.draw_gaussian(target[0, :, :, 0], (2, 3), 2)
  logits = rng.normal(size=target.shape).astype(np.float32)
  pred = np.clip(1 / (1 + np.exp(-logits.astype(np.float64))), 1e-4, 1 - 1e-4)
  pos = target == 1
  ref = -(np.sum(np.log(pred) * (1 - pred) ** 2 * pos)
          + np.sum(np.log(1 - pred) * pred ** 2 * (1 - target) ** 4 * ~pos)) / pos.sum()
  assert float(det.focal_loss(jnp.asarray(logits), jnp.asarray(target))) == pytest.approx(
      ref, rel=1e-5)


def test_detection_losses_zero_reg_at_targets():
  spec = _spec()
  t = det.build_targets(_batch([[1.3, -2.2, 0.8]], [[4.5, 1.8, 1.5]], [0.3], [CAR]), spec)
  out = {"heatmap": jnp.zeros(t["heatmap"].shape), "reg": jnp.asarray(_reg_map(t, spec))}
  loss, m = det.detection_losses(out, {k: jnp.asarray(v) for k, v in t.items()}, spec,
                                 (1.0,) * 8, 0.25)
  assert float(m["loss_reg"]) == pytest.approx(0.0, abs=1e-6) and float(m["num_boxes"]) == 1
  out["reg"] = out["reg"] + 1.0  # every dim off by 1 -> per-dim 1 (normalised), summed = 8
  _, m = det.detection_losses(out, {k: jnp.asarray(v) for k, v in t.items()}, spec,
                              (1.0,) * 8, 0.25)
  assert float(m["loss_reg"]) == pytest.approx(8.0, rel=1e-3)


def _brute_circle_nms(xy, scores, thresh):
  order = scores.argsort()[::-1]
  suppressed = np.zeros(len(xy), int)
  keep = []
  for _i in range(len(xy)):
    i = order[_i]
    if suppressed[i] == 1:
      continue
    keep.append(i)
    for _j in range(_i + 1, len(xy)):
      j = order[_j]
      if suppressed[j] == 1:
        continue
      if (xy[i, 0] - xy[j, 0]) ** 2 + (xy[i, 1] - xy[j, 1]) ** 2 <= thresh:
        suppressed[j] = 1
  return keep


def test_circle_nms_matches_brute_force():
  rng = np.random.default_rng(2)
  for thresh in (0.175, 1.0, 4.0):
    xy = rng.uniform(0, 6, (80, 2))
    scores = rng.permutation(80) / 80.0  # distinct
    assert det.circle_nms(xy, scores, thresh).tolist() == _brute_circle_nms(xy, scores, thresh)


def test_postprocess_threshold_nms_and_caps():
  spec = _spec()
  cand = dict(score=np.array([0.9, 0.85, 0.05, 0.6, 0.7]),
              label=np.array([CAR, CAR, CAR, PED, TRUCK]),
              center=np.array([[0, 0, 0], [1, 0, 0], [5, 5, 0], [0.1, 0, 0], [0, 0, 0.0]]),
              size=np.ones((5, 3)), yaw=np.zeros(5))
  out = det.postprocess(cand, spec, score_threshold=0.1, nms_min_radius=(4.0, 12.0, 0.175),
                        post_max_size=83, max_detections=500)
  # car 0.85 is 1 m (squared 1 <= 4) from car 0.9: suppressed; the car at 0.05 is below the
  # threshold; the pedestrian and the truck are other groups.
  assert out["score"].tolist() == [0.9, 0.7, 0.6]
  out = det.postprocess(cand, spec, score_threshold=0.1, nms_min_radius=(0.1, 12.0, 0.175),
                        post_max_size=1, max_detections=2)
  assert out["score"].tolist() == [0.9, 0.7]


def test_center_head_shapes():
  spec = _spec(with_velocity=True)
  head = det.CenterHead(spec, bev_channels=8, neck_channels=8, head_channels=8)
  coord = jnp.zeros((2, 16, 3))
  params = head.init(jax.random.key(0), coord, jnp.ones((2, 16, 5)), jnp.ones((2, 16), bool))
  out = head.apply(params, coord, jnp.ones((2, 16, 5)), jnp.ones((2, 16), bool))
  assert out["heatmap"].shape == (2, 32, 32, 3) and out["reg"].shape == (2, 32, 32, 3, 10)
  np.testing.assert_allclose(np.asarray(out["heatmap"]).mean(), det.HEATMAP_BIAS, atol=1.0)


def test_probe_batches_carry_padded_boxes():
  from pointins_jax.data import batching
  from pointins_jax.data import config as data_config_lib
  from pointins_jax.data import loader as loader_lib
  from pointins_jax.data import synthetic_outdoor
  from pointins_jax.data import views
  config = data_config_lib.data_config("outdoor")
  config.update(num_scenes=2, synthetic_small=True, buckets=(2048,), with_boxes=True,
                max_boxes=4)
  config.augment.rotate_xy_p = 0.0
  batch = next(loader_lib.make_probe_iterator(config, seed=0, batch_size=2))
  assert batch["box_center"].shape == (2, 4, 3) and batch["box_valid"].shape == (2, 4)
  assert batch["box_label"][~batch["box_valid"]].tolist() == [-1] * int((~batch["box_valid"]).sum())
  assert batch["boxes_dropped"].shape == (2,) and batch["box_valid"].any()
  # One view by hand: the first max_boxes boxes, the rest counted as dropped.
  scene = synthetic_outdoor.generate_sweep(0, azimuth_steps=300)
  view = views.probe_view(scene, config, np.random.default_rng(0), augment=False)
  n, dropped = len(view["boxes"]), view["boxes_dropped"]
  out = batching.collate([[view]], buckets=(8192,), grid_size=0.05, with_views=False,
                         max_boxes=4)
  assert out["box_valid"][0].sum() == min(n, 4)
  assert out["boxes_dropped"][0] == dropped + max(n - 4, 0)
  np.testing.assert_allclose(out["box_center"][0, :min(n, 4)], view["boxes"].center[:4])
  np.testing.assert_allclose(out["box_yaw"][0, :min(n, 4)], view["boxes"].yaw[:4])


def test_eval_chunk_boxes_map_back_to_the_scan_frame(tmp_path):
  """A fake model putting one box on a point of every chunk: the scan-frame boxes must lie
  on scan points (chunks are re-centred, each in its own frame), and files/figures follow."""
  from configs import probe_outdoor
  from pointins_jax.data import synthetic_outdoor
  from pointins_jax.probe import detection_eval
  config = probe_outdoor.get_config("decoder_detection,demo")
  config.data.update(num_scenes=1, buckets=(1024,))
  config.train.update(batch_size=2, num_eval_scenes=1)
  from pointins_jax.model import configs as model_configs
  config.model = model_configs.model_config("tiny")
  config.model.in_channels = 4
  scene = synthetic_outdoor.generate_sweep(1_000_000, azimuth_steps=300)
  rows_seen = []

  def fake_predict(batch):
    b = batch["coord"].shape[0]
    out = {k: np.zeros((b, 1, 1) + s, np.float32) for k, s in
           (("center", (3,)), ("size", (3,)), ("yaw", ()), ("score", ()))}
    out["label"] = np.zeros((b, 1, 1), np.int32)
    for r in range(b):
      if batch["valid"][r].any():
        out["center"][r, 0, 0] = batch["coord"][r, np.flatnonzero(batch["valid"][r])[0]]
        out["score"][r, 0, 0] = 0.5 + 0.01 * len(rows_seen)
        out["size"][r, 0, 0] = 1.0
        rows_seen.append(r)
    return out

  boxes = detection_eval.scene_detections(scene, config, fake_predict)
  assert len(rows_seen) >= 3 and len(boxes["score"]) >= 2  # several chunks (NMS may merge)
  for center in boxes["center"]:
    assert np.min(np.linalg.norm(scene.coord - center, axis=1)) < 1e-3
  path = detection_eval.bev_figure(str(tmp_path / "bev.png"), scene, boxes)
  assert os.path.getsize(path) > 10_000
  detection_eval.write_predictions(str(tmp_path / "p.npz"), boxes)
  with np.load(tmp_path / "p.npz") as f:
    np.testing.assert_array_equal(f["box_center"], boxes["center"])


def test_ground_truth_predictions_score_perfectly():
  """The evaluation path (attributes, Boxes conversion, metric) with GT boxes as predictions."""
  from pointins_jax.data import synthetic_outdoor
  from pointins_jax.metrics import detection as detection_metrics
  from pointins_jax.probe import detection_eval
  scene = synthetic_outdoor.generate_sweep(1_000_000, azimuth_steps=300)
  gt = scene.boxes
  boxes = dict(center=gt.center, size=gt.size, yaw=gt.yaw, label=gt.label,
               score=np.linspace(0.9, 0.5, len(gt)))
  boxes["attribute"] = detection_eval.predicted_attributes(boxes["label"], None)
  evaluator = detection_metrics.DetectionEvaluator()
  detection_eval.add_scene(evaluator, scene, boxes)
  result = evaluator.result()
  present = {DETECTION_CLASSES[c] for c in gt.label}
  for name in present:
    assert result["classes"][name]["AP"] == pytest.approx(1.0)
    assert result["classes"][name]["ATE"] == pytest.approx(0.0, abs=1e-6)
  # Default attributes: a standing pedestrian, a parked car.
  attrs = detection_eval.predicted_attributes(np.array([PED, CAR]), None)
  from pointins_jax.data.boxes import DETECTION_ATTRIBUTES
  assert [DETECTION_ATTRIBUTES[a] for a in attrs] == ["pedestrian.standing", "vehicle.parked"]
  attrs = detection_eval.predicted_attributes(np.array([CAR]), np.array([[1.0, 0.0]]))
  assert DETECTION_ATTRIBUTES[attrs[0]] == "vehicle.moving"


def test_points_in_boxes_and_empty_boxes_get_no_target():
  center, size, yaw = np.array([[0.0, 0, 0]]), np.array([[4.0, 2.0, 2.0]]), np.array([np.pi / 2])
  pts = np.array([[0.0, 1.9, 0], [0.9, 0, 0], [1.9, 0, 0], [0, 0, 1.1]])  # rotated: y is long
  assert det.points_in_boxes(pts, center, size, yaw).tolist() == [2]
  spec = _spec(min_box_points=1)
  batch = _batch([[1.3, -2.2, 0.8], [-4.0, 4.0, 0.5]], [[4.5, 1.8, 1.5]] * 2, [0.3, 0.0],
                 [CAR, CAR])
  batch["coord"] = np.array([[[1.3, -2.0, 0.9], [9.0, 9.0, 0.0], [-4.0, 4.0, 0.5]]], np.float32)
  batch["valid"] = np.array([[True, True, False]])  # the point in box 2 is padding
  t = det.build_targets(batch, spec)
  assert t["reg_mask"][0, :2].tolist() == [True, False] and t["boxes_outside"][0] == 1
  assert np.count_nonzero(t["heatmap"] == 1) == 1
