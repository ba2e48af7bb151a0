"""Hand-worked cases of the nuScenes detection metric (pointins_jax.metrics.detection).

Conventions used by the numbers below (devkit detection_cvpr_2019): recall grid
r = 0, 0.01, .., 1 (101 points); AP = mean over r = 0.11..1.00 (90 points) of
max(p(r) - 0.1, 0), divided by 0.9; a TP error is the mean over the same points up to the
achieved recall. Positions, sizes and yaws are chosen exact in float32 (Boxes stores
float32), so expected values are exact up to float64 rounding.
"""
import math
import os

import numpy as np
import pytest

from experiments import evaluate
from pointins_jax.data.boxes import DETECTION_CLASSES, BoxError, Boxes
from pointins_jax.metrics import detection, report

CAR, TRUCK, PEDESTRIAN = (DETECTION_CLASSES.index(c) for c in ("car", "truck", "pedestrian"))
CONE, BARRIER = DETECTION_CLASSES.index("traffic_cone"), DETECTION_CLASSES.index("barrier")
EXACT = dict(rtol=0, atol=1e-12)


def boxes(*rows, velocity=True, attribute=True):
  """rows: (x, y, label[, size, yaw, velocity, attribute]) -> Boxes."""
  full = [tuple(r) + ((4.0, 2.0, 1.5), 0.0, (0.0, 0.0), 5)[len(r) - 3:] for r in rows]
  m = len(full)
  return Boxes(np.array([[r[0], r[1], 0.0] for r in full], np.float64).reshape(m, 3),
               np.array([r[3] for r in full], np.float64).reshape(m, 3),
               np.array([r[4] for r in full], np.float64),
               np.array([r[2] for r in full], np.int32),
               np.array([r[5] for r in full], np.float64).reshape(m, 2) if velocity else None,
               np.array([r[6] for r in full], np.int32) if attribute else None)


def metrics(gt, pred, scores, **kwargs):
  return detection.nuscenes_detection_metrics([gt], [pred], [np.asarray(scores, np.float64)],
                                              **kwargs)


def test_one_perfect_box():
  gt = boxes((10, 0, CAR))
  result = metrics(gt, gt, [0.9])
  car = result["classes"]["car"]
  # Precision 1 at every recall: AP = 90 * 0.9 / 90 / 0.9 = 1 at every threshold.
  for key in ("AP@0.5", "AP@1.0", "AP@2.0", "AP@4.0", "AP"):
    np.testing.assert_allclose(car[key], 1.0, **EXACT)
  assert [car[m] for m in detection.TP_METRICS] == [0.0] * 5
  assert (car["num_gt"], car["num_pred"]) == (1, 1)
  # The 9 classes without ground truth: AP 0, TP errors 1 (N/A: cone AOE/AVE/AAE, barrier
  # AVE/AAE), and they count in the means, as in the devkit.
  assert result["classes"]["truck"]["AP"] == 0.0 and result["classes"]["truck"]["ATE"] == 1.0
  assert math.isnan(result["classes"]["traffic_cone"]["AOE"])
  np.testing.assert_allclose(result["mAP"], 0.1, **EXACT)
  np.testing.assert_allclose([result["mATE"], result["mASE"]], [0.9, 0.9], **EXACT)
  np.testing.assert_allclose(result["mAOE"], 8 / 9, **EXACT)  # 9 classes, 8 of them 1
  np.testing.assert_allclose([result["mAVE"], result["mAAE"]], [7 / 8, 7 / 8], **EXACT)
  # NDS = (5 * 0.1 + (1 - 0.9) + (1 - 0.9) + 1/9 + 1/8 + 1/8) / 10.
  np.testing.assert_allclose(result["NDS"], (0.5 + 0.2 + 1 / 9 + 0.25) / 10, **EXACT)


def test_box_shifted_by_1_5_m():
  result = metrics(boxes((10, 0, CAR)), boxes((11.5, 0, CAR)), [0.9])["classes"]["car"]
  # 1.5 m: not < 0.5 or 1 (missed: AP 0), < 2 and 4 (AP 1); the mean is 0.5.
  assert (result["AP@0.5"], result["AP@1.0"]) == (0.0, 0.0)
  np.testing.assert_allclose([result["AP@2.0"], result["AP@4.0"], result["AP"]],
                             [1.0, 1.0, 0.5], **EXACT)
  assert (result["ATE"], result["ASE"], result["AOE"]) == (1.5, 0.0, 0.0)
  # Exactly 2 m: a match needs distance < threshold, so only the 4 m one; ATE from the 2 m
  # matches: none -> 1.
  truck = metrics(boxes((0, 10, TRUCK)), boxes((0, 12, TRUCK)), [0.9])["classes"]["truck"]
  assert [truck[f"AP@{t}"] for t in (0.5, 1.0, 2.0)] == [0.0] * 3 and truck["ATE"] == 1.0
  np.testing.assert_allclose(truck["AP@4.0"], 1.0, **EXACT)


def test_missed_class_and_far_false_positive():
  gt = boxes((10, 0, CAR), (5, 5, PEDESTRIAN), (-5, 5, TRUCK))
  pred = boxes((10, 0, CAR), (-5, 15, TRUCK))  # the truck 10 m off: a false positive
  result = metrics(gt, pred, [0.9, 0.8])["classes"]
  for name in ("pedestrian", "truck"):  # no prediction / no match: AP 0, all errors 1
    assert [result[name][f"AP@{t}"] for t in (0.5, 1.0, 2.0, 4.0)] == [0.0] * 4
    assert [result[name][m] for m in detection.TP_METRICS] == [1.0] * 5
  assert (result["pedestrian"]["num_gt"], result["pedestrian"]["num_pred"]) == (1, 0)


def test_false_positive_ranked_above_true_positives():
  # GT A (10, 0), B (20, 0). Scores: FP (30, 0) 0.9 (10 m from B: no match), A + 0.25 m 0.8,
  # B + 0.375 m 0.7. Order FP, A, B: precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
  # Interpolated: p(r) = r on [0, .5], 0.5 + (r - .5) / 3 on [.5, 1].
  # AP = [sum_{k=1..40} 0.01 k + sum_{k=1..50} (0.4 + 0.01 k / 3)] / 90 / 0.9
  #    = (8.2 + 20 + 4.25) / 81 = 32.45 / 81.
  gt = boxes((10, 0, CAR), (20, 0, CAR))
  pred = boxes((30, 0, CAR), (10.25, 0, CAR), (20.375, 0, CAR))
  car = metrics(gt, pred, [0.9, 0.8, 0.7])["classes"]["car"]
  for t in (0.5, 1.0, 2.0, 4.0):
    np.testing.assert_allclose(car[f"AP@{t}"], 32.45 / 81, **EXACT)
  # ATE: running mean 0.25, 0.3125 at scores 0.8, 0.7; the score on the grid is
  # c(r) = 0.9 - 0.2 r, so the error is 0.25 for r <= .5 and 0.25 + 0.125 (r - .5) above:
  # [40 * 0.25 + 50 * 0.25 + 0.125 * sum_{k=1..50} 0.01 k] / 90 = 24.09375 / 90.
  np.testing.assert_allclose(car["ATE"], 24.09375 / 90, **EXACT)


def test_curves_and_ap_on_the_grid():
  curves = detection.curves_from_matches(
      np.array([False, True, True]), np.array([0.9, 0.8, 0.7]), 2,
      {m: np.array([0.25, 0.375]) for m in detection.TP_METRICS})
  np.testing.assert_allclose(curves.precision[[0, 25, 50, 75, 100]],
                             [0, 0.25, 0.5, 0.5 + 0.25 / 3, 2 / 3], **EXACT)
  assert curves.max_recall_index == 100
  np.testing.assert_allclose(detection.average_precision(curves, 0.1, 0.1), 32.45 / 81,
                             **EXACT)
  # Below min_recall: recall 1/20 only -> TP error 1 (devkit rule), AP from the one point.
  low = detection.curves_from_matches(np.array([True]), np.array([0.5]), 20,
                                      {m: np.array([0.25]) for m in detection.TP_METRICS})
  assert low.max_recall_index == 5 and detection.tp_error(low, 0.1, "ATE") == 1.0
  assert detection.average_precision(low, 0.1, 0.1) == 0.0


def test_score_ties_follow_the_devkit_order():
  # Equal scores: the devkit sorts (score, index) and reverses, so the later prediction
  # (index 1, 0.125 m off) takes the one GT box; index 0 (0.375 m off) is a false positive.
  # Precision 1 up to recall 1, where it is 1/2: AP = (89 * 0.9 + 0.4) / 90 / 0.9 = 80.5/81.
  gt = boxes((10, 0, CAR))
  car = metrics(gt, boxes((10.375, 0, CAR), (10.125, 0, CAR)), [0.5, 0.5])["classes"]["car"]
  assert car["ATE"] == 0.125
  np.testing.assert_allclose(car["AP@0.5"], 80.5 / 81, **EXACT)
  # Across scenes: scene 0 holds the GT and its match (0.375 m), scene 1 a lone false
  # positive with the same score. The later scene's box comes first: FP then TP, precision
  # 0, 1/2 at recall 0, 1 -> p(r) = r / 2, AP = sum_{k=21..100} (0.005 k - 0.1) / 81
  # = (24.2 - 8) / 81 = 0.2. Scenes swapped: TP first, AP 80.5 / 81 as above.
  pair = [boxes((10.375, 0, CAR)), boxes((10.125, 0, CAR))]
  tie = [np.array([0.5]), np.array([0.5])]
  result = detection.nuscenes_detection_metrics([gt, boxes()], pair, tie)
  np.testing.assert_allclose(result["classes"]["car"]["AP@0.5"], 0.2, **EXACT)
  result = detection.nuscenes_detection_metrics([boxes(), gt], pair[::-1], tie)
  np.testing.assert_allclose(result["classes"]["car"]["AP@0.5"], 80.5 / 81, **EXACT)


def test_class_range_and_zero_point_filters():
  # Pedestrian range 40 m. GT P1 (30, 0), P2 (0, 45), P3 (40, 0) (exactly at the range:
  # dropped, strict <). Predictions: FP (0, 49.5) 0.95, P1 0.9, P2 0.8.
  gt = boxes((30, 0, PEDESTRIAN), (0, 45, PEDESTRIAN), (40, 0, PEDESTRIAN))
  pred = boxes((0, 49.5, PEDESTRIAN), (30, 0, PEDESTRIAN), (0, 45, PEDESTRIAN))
  scores = [0.95, 0.9, 0.8]
  ped = metrics(gt, pred, scores)["classes"]["pedestrian"]
  # From (0, 0) only P1 and its prediction remain: AP 1.
  assert (ped["num_gt"], ped["num_pred"]) == (1, 1) and ped["AP"] == pytest.approx(1, abs=1e-12)
  # From (0, 10): P1 31.6 m, P2 35 m kept (P3 41.2 m dropped), FP 39.5 m kept and 4.5 m from
  # P2: order FP, TP, TP as in test_false_positive_ranked_above_true_positives.
  ped = metrics(gt, pred, scores, origin=(0, 10, 0))["classes"]["pedestrian"]
  assert (ped["num_gt"], ped["num_pred"]) == (2, 3)
  np.testing.assert_allclose(ped["AP"], 32.45 / 81, **EXACT)
  # Per-box ego distances replace the origin for the ground truth.
  ped = metrics(gt, pred, scores, ego_distance=[np.array([30.0, 35.0, 41.0])])
  assert ped["classes"]["pedestrian"]["num_gt"] == 2
  # Zero-point boxes: a 4th GT (5, 0) without prediction lowers recall unless dropped.
  gt4 = boxes((30, 0, PEDESTRIAN), (5, 0, PEDESTRIAN))
  pred4 = boxes((30, 0, PEDESTRIAN))
  kept = metrics(gt4, pred4, [0.9])["classes"]["pedestrian"]
  # recall 1/2 with precision 1: p = 1 up to r = .5, 0 above: AP = 40 * 0.9 / 81 = 4/9.
  np.testing.assert_allclose(kept["AP"], 4 / 9, **EXACT)
  dropped = metrics(gt4, pred4, [0.9], num_points=[np.array([3, 0])])["classes"]
  assert dropped["pedestrian"]["num_gt"] == 1
  np.testing.assert_allclose(dropped["pedestrian"]["AP"], 1.0, **EXACT)


def test_orientation_error_wrap_and_barrier_period():
  size = (1.0, 1.0, 1.0)
  gt = boxes((10, 0, CAR, size, 3.0), (0, 10, TRUCK, size, 0.5), (-10, 0, BARRIER, size, 0.5),
             (0, -10, CONE, size, 0.5))
  pred = boxes((10, 0, CAR, size, -3.0), (0, 10, TRUCK, size, -2.5),
               (-10, 0, BARRIER, size, -2.5), (0, -10, CONE, size, -2.5))
  result = metrics(gt, pred, [0.9] * 4)["classes"]
  np.testing.assert_allclose(result["car"]["AOE"], 2 * np.pi - 6, **EXACT)  # across 2 pi
  np.testing.assert_allclose(result["truck"]["AOE"], 3.0, **EXACT)
  np.testing.assert_allclose(result["barrier"]["AOE"], np.pi - 3, **EXACT)  # period pi
  assert math.isnan(result["traffic_cone"]["AOE"])
  np.testing.assert_allclose(detection.yaw_difference(np.array([0.1, -3.1]),
                                                      np.array([2 * np.pi + 0.1, 3.1]),
                                                      2 * np.pi), [0, 2 * np.pi - 6.2],
                             atol=1e-12)


def test_scale_velocity_and_attribute_errors():
  # Sizes (4, 2, 1.5) vs (2, 2, 3), aligned: intersection 2*2*1.5 = 6, volumes 12 and 12,
  # union 18: IoU 1/3, ASE 2/3. Velocity (1, 0) vs (4, 4): AVE |(3, 4)| = 5. Attribute 5
  # vs 6: AAE 1.
  gt = boxes((10, 0, CAR, (4, 2, 1.5), 0.0, (1, 0), 5))
  pred = boxes((10, 0, CAR, (2, 2, 3), 0.0, (4, 4), 6))
  car = metrics(gt, pred, [0.9])["classes"]["car"]
  np.testing.assert_allclose(car["ASE"], 2 / 3, **EXACT)
  assert (car["AVE"], car["AAE"]) == (5.0, 1.0)
  # Unknown GT velocity / no GT attribute: that match's error is NaN and left out; with no
  # other match the running mean is all NaN -> 1 (the devkit's cummean).
  car = metrics(boxes((10, 0, CAR, (4, 2, 1.5), 0.0, (1, 0), -1)), pred, [0.9],
                velocity_known=[np.array([False])])["classes"]["car"]
  assert (car["AVE"], car["AAE"]) == (1.0, 1.0)


def test_missing_velocity_and_attributes_are_not_applicable():
  gt = boxes((10, 0, CAR))
  result = metrics(gt, boxes((10, 0, CAR), velocity=False, attribute=False), [0.9])
  assert all(math.isnan(row["AVE"]) and math.isnan(row["AAE"])
             for row in result["classes"].values())
  assert math.isnan(result["mAVE"]) and math.isnan(result["mAAE"])
  assert result["tp_scores"]["AVE"] == result["tp_scores"]["AAE"] == 0.0
  # NDS as the perfect box's, with the AVE / AAE scores 1/8 each replaced by 0.
  np.testing.assert_allclose(result["NDS"], (0.5 + 0.2 + 1 / 9) / 10, **EXACT)


def test_bad_input_errors_name_the_field():
  gt = boxes((10, 0, CAR))
  evaluator = detection.DetectionEvaluator()
  with pytest.raises(BoxError, match="s1 \\(predictions\\): box_score must have shape"):
    evaluator.add_scene(gt, gt, np.array([0.5, 0.5]), name="s1")
  with pytest.raises(BoxError, match="s1 \\(predictions\\): box_score has NaN"):
    evaluator.add_scene(gt, gt, np.array([np.nan]), name="s1")
  bad = boxes((10, 0, CAR))
  bad.center[0, 1] = np.nan
  with pytest.raises(BoxError, match="s1 \\(ground truth\\): box_center.npy has NaN"):
    evaluator.add_scene(bad, gt, np.array([0.5]), name="s1")
  unknown = boxes((10, 0, CAR))
  unknown.label[0] = 10
  with pytest.raises(BoxError, match="s1 \\(predictions\\): box_label.npy has ids outside"):
    evaluator.add_scene(gt, unknown, np.array([0.5]), name="s1")
  with pytest.raises(BoxError, match="num_points must have shape \\(1,\\)"):
    evaluator.add_scene(gt, gt, np.array([0.5]), num_points=np.array([1, 2]), name="s1")
  many = boxes(*[(10, 0, CAR)] * 501)
  with pytest.raises(ValueError, match="501 boxes, the protocol allows at most 500"):
    evaluator.add_scene(gt, many, np.full(501, 0.5), name="s1")
  with pytest.raises(ValueError, match="same scenes"):
    detection.nuscenes_detection_metrics([gt], [], [])
  assert evaluator.result()["num_scenes"] == 0


def _write_scene(folder, b, extras=()):
  os.makedirs(folder)
  for field in ("center", "size", "yaw", "label", "velocity", "attribute"):
    np.save(os.path.join(folder, f"box_{field}.npy"), getattr(b, field))
  for name, value in dict(extras).items():
    np.save(os.path.join(folder, name), value)


def test_evaluate_cli_detection(tmp_path, capsys):
  gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
  os.makedirs(pred_dir)
  gt_a = boxes((10, 0, CAR), (20, 0, CAR), (5, 0, PEDESTRIAN))
  _write_scene(str(gt_dir / "a"), gt_a, {"box_num_points.npy": np.array([5, 5, 0]),
                                         "box_num_radar_points.npy": np.array([0, 0, 0])})
  gt_b = boxes((0, 45, PEDESTRIAN))
  _write_scene(str(gt_dir / "b"), gt_b)
  pred_a = boxes((30, 0, CAR), (10.25, 0, CAR), (20.375, 0, CAR))
  arrays = {f"box_{k}": getattr(pred_a, k) for k in ("center", "size", "yaw", "label",
                                                     "velocity", "attribute")}
  np.savez(pred_dir / "a.npz", box_score=np.array([0.9, 0.8, 0.7], np.float32), **arrays)
  np.savez(pred_dir / "b.npz", **{k: v[:0] for k, v in arrays.items()},
           box_score=np.zeros(0, np.float32))
  output = tmp_path / "eval.json"
  result = evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--task", "detection",
                          "--output", str(output)])
  # Same numbers as test_false_positive_ranked_above_true_positives (scores float32 here,
  # equal spacing kept up to float32 rounding); the pedestrian (0 points; 45 m) is dropped.
  expected = metrics(gt_a, pred_a, np.array([0.9, 0.8, 0.7], np.float32),
                     num_points=[np.array([5, 5, 0])])
  assert result["NDS"] == expected["NDS"]
  np.testing.assert_allclose(result["classes"]["car"]["AP"], 32.45 / 81, atol=1e-6)
  assert result["classes"]["pedestrian"]["num_gt"] == 0
  assert output.exists() and "| car" in (tmp_path / "eval.md").read_text()
  assert "NDS" in capsys.readouterr().out
  assert report.format_result(result, "detection").startswith("| class")
  np.savez(pred_dir / "b.npz", box_center=np.zeros((0, 3)))
  with pytest.raises(KeyError, match="b.npz: missing array"):
    evaluate.evaluate_detection(str(pred_dir), str(gt_dir))
  os.remove(pred_dir / "b.npz")
  with pytest.raises(FileNotFoundError, match="b.npz: missing prediction file"):
    evaluate.evaluate_detection(str(pred_dir), str(gt_dir))
  os.remove(gt_dir / "a" / "box_yaw.npy")
  with pytest.raises(FileNotFoundError, match="a/box_yaw.npy: missing"):
    evaluate.evaluate_detection(str(pred_dir), str(gt_dir))
