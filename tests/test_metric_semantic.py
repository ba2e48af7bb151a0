"""Tests of the semantic IoU metrics (hand-worked cases and a brute-force reference).

Production shapes: ScanNet val, ~1e5 points x 312 scenes, 20 classes; here N <= 1000.
"""
import numpy as np
import pytest

from pointins_jax.metrics import semantic


def test_hand_worked_case():
  # gt:   0 0 0 1 1 -1 2      pred: 0 0 1 1 1 1 -1
  # class 0: TP 2, FN 1, FP 0 -> IoU 2/3; class 1: TP 2, FP 1 (index 2; index 5 is ignored)
  # -> IoU 2/3; class 2: TP 0, FN 1 (predicted -1) -> IoU 0. mIoU = 4/9.
  # Acc: 2/3, 1, 0 -> mAcc 5/9; allAcc 4/6.
  gt = np.array([0, 0, 0, 1, 1, -1, 2])
  pred = np.array([0, 0, 1, 1, 1, 1, -1])
  result = semantic.semantic_iou(gt, pred, num_classes=3, class_names=["a", "b", "c"])
  np.testing.assert_allclose(result["iou"], [2 / 3, 2 / 3, 0])
  assert result["mIoU"] == pytest.approx(4 / 9)
  assert result["mAcc"] == pytest.approx(5 / 9)
  assert result["allAcc"] == pytest.approx(4 / 6)
  assert result["classes"]["b"]["IoU"] == pytest.approx(2 / 3)


def test_perfect_empty_and_absent_classes():
  gt = np.array([0, 0, 1, 1, -1])
  perfect = semantic.semantic_iou(gt, np.array([0, 0, 1, 1, 3]), num_classes=4)
  assert perfect["mIoU"] == 1.0  # the prediction on the ignored point does not count
  assert np.isnan(perfect["iou"][2]) and np.isnan(perfect["iou"][3])  # absent: NaN, skipped
  empty = semantic.semantic_iou(gt, np.full(5, -1), num_classes=4)
  assert empty["mIoU"] == 0.0 and empty["allAcc"] == 0.0
  # A class only predicted (absent from GT) has IoU 0, and counts.
  spurious = semantic.semantic_iou(gt, np.array([0, 0, 2, 1, -1]), num_classes=4)
  assert spurious["iou"][2] == 0.0
  assert spurious["mIoU"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_matches_brute_force_and_accumulates_over_scenes():
  rng = np.random.default_rng(0)
  num_classes = 5  # ScanNet: 20
  scenes = [(rng.integers(-1, num_classes, n), rng.integers(-1, num_classes, n))
            for n in (300, 1000, 1)]
  confusion = sum(semantic.confusion_matrix(g, p, num_classes) for g, p in scenes)
  got = semantic.iou_from_confusion(confusion)
  gt = np.concatenate([g for g, _ in scenes])
  pred = np.concatenate([p for _, p in scenes])
  assert got["mIoU"] == pytest.approx(semantic.semantic_iou(gt, pred, num_classes)["mIoU"])
  keep = gt != -1
  for c in range(num_classes):
    inter = np.sum((gt == c) & (pred == c) & keep)
    union = np.sum(((gt == c) | (pred == c)) & keep)
    assert got["iou"][c] == pytest.approx(inter / union)


@pytest.mark.parametrize("gt, pred, message", [
    (np.zeros(4, int), np.zeros(3, int), "length 3, expected 4"),
    (np.zeros(4, int), np.full(4, 9), "out of range"),
    (np.zeros(4, int), np.zeros(4), "integer"),
    (np.full(4, -2), np.zeros(4, int), "below -1"),
    (np.zeros((2, 2), int), np.zeros((2, 2), int), "1-D"),
])
def test_bad_input_raises_clear_error(gt, pred, message):
  with pytest.raises(ValueError, match=message):
    semantic.semantic_iou(gt, pred, num_classes=3)
