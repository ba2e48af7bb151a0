"""Semantic segmentation metrics: confusion matrix, per-class IoU, mIoU, accuracies.

Protocol (ScanNet / S3DIS / Pointcept `SemSegEvaluator`): points whose ground truth is the
ignore index (-1) are left out entirely; every other point counts once. A prediction of -1
("no class") on a labelled point is a miss for the true class. Scores accumulate over scenes
by summing confusion matrices (IoU over all points of the split, not a mean over scenes).
A class absent from both ground truth and predictions has IoU NaN and is left out of mIoU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

IGNORE_INDEX = -1


def check_labels(name: str, labels: np.ndarray, num_points: Optional[int] = None,
                 num_classes: Optional[int] = None) -> np.ndarray:
  """Returns `labels` as int64 [N] after checking shape, dtype and range.

  Args:
    name: what the array is (e.g. "scene0000_00.npz: segment"), used in error messages.
    labels: integer [N]; -1 = ignore / none.
    num_points: expected N, or None.
    num_classes: labels must lie in [-1, num_classes), or None for no upper bound.
  Raises:
    ValueError naming `name` and the fix.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"{name}: expected a 1-D per-point array, got shape {labels.shape}.")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{name}: expected integer labels, got dtype {labels.dtype}; "
                     "cast class ids / instance ids to int32.")
  if num_points is not None and labels.shape[0] != num_points:
    raise ValueError(f"{name}: length {labels.shape[0]}, expected {num_points} (per-point "
                     "arrays cover every point of the scan in order; per-instance arrays have "
                     "one entry per predicted instance).")
  labels = labels.astype(np.int64, copy=False)
  if labels.size and labels.min() < IGNORE_INDEX:
    raise ValueError(f"{name}: ids below -1 (min {labels.min()}); use -1 for ignore / none.")
  if num_classes is not None and labels.size and labels.max() >= num_classes:
    raise ValueError(f"{name}: class id {labels.max()} out of range for {num_classes} classes "
                     f"(valid ids 0..{num_classes - 1}, -1 = ignore).")
  return labels


def confusion_matrix(gt_segment: np.ndarray, pred_segment: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """Counts points per (true class, predicted class).

  Args:
    gt_segment: int [N] true class in [0, C) or -1 (ignored: not counted).
    pred_segment: int [N] predicted class in [0, C) or -1 (counted as a miss).
    num_classes: C.
  Returns:
    int64 [C, C + 1]; entry [t, p] counts points of true class t predicted as p, the last
    column counts points predicted -1.
  """
  gt = check_labels("gt_segment", gt_segment, num_classes=num_classes)
  pred = check_labels("pred_segment", pred_segment, num_points=gt.shape[0],
                      num_classes=num_classes)
  labelled = gt != IGNORE_INDEX
  pred = np.where(pred[labelled] == IGNORE_INDEX, num_classes, pred[labelled])
  flat = gt[labelled] * (num_classes + 1) + pred
  counts = np.bincount(flat, minlength=num_classes * (num_classes + 1))
  return counts.reshape(num_classes, num_classes + 1)


def iou_from_confusion(confusion: np.ndarray,
                       class_names: Optional[Sequence[str]] = None) -> dict:
  """Per-class IoU, mIoU and accuracies from a (summed) confusion matrix.

  Args:
    confusion: int [C, C + 1] from `confusion_matrix` (summed over scenes).
    class_names: C names for the per-class entries; defaults to "0".."C-1".
  Returns:
    {"mIoU", "mAcc", "allAcc": float, "iou": float64 [C], "acc": float64 [C],
     "classes": {name: {"IoU", "Acc"}}}; per-class values are NaN where undefined.
  """
  confusion = np.asarray(confusion, dtype=np.float64)
  num_classes = confusion.shape[0]
  if confusion.shape != (num_classes, num_classes + 1):
    raise ValueError(f"confusion: expected shape [C, C + 1], got {confusion.shape}.")
  names = resolve_class_names(class_names, num_classes)
  true_positive = np.diag(confusion[:, :num_classes])
  gt_count = confusion.sum(axis=1)
  pred_count = confusion[:, :num_classes].sum(axis=0)
  union = gt_count + pred_count - true_positive
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, true_positive / union, np.nan)
    acc = np.where(gt_count > 0, true_positive / gt_count, np.nan)
  total = gt_count.sum()
  return {
      "mIoU": nanmean(iou),
      "mAcc": nanmean(acc),
      "allAcc": float(true_positive.sum() / total) if total else float("nan"),
      "iou": iou,
      "acc": acc,
      "classes": {name: {"IoU": float(iou[c]), "Acc": float(acc[c])}
                  for c, name in enumerate(names)},
  }


def semantic_iou(gt_segment: np.ndarray, pred_segment: np.ndarray, num_classes: int,
                 class_names: Optional[Sequence[str]] = None) -> dict:
  """mIoU and per-class IoU of one scan (or of concatenated scans); see `iou_from_confusion`."""
  return iou_from_confusion(confusion_matrix(gt_segment, pred_segment, num_classes),
                            class_names)


def resolve_class_names(class_names: Optional[Sequence[str]], num_classes: int) -> list[str]:
  if class_names is None:
    return [str(c) for c in range(num_classes)]
  if len(class_names) != num_classes:
    raise ValueError(f"class_names: got {len(class_names)} names for {num_classes} classes.")
  return list(class_names)


def nanmean(values: np.ndarray) -> float:
  values = np.asarray(values, dtype=np.float64)
  finite = ~np.isnan(values)
  return float(values[finite].mean()) if finite.any() else float("nan")
