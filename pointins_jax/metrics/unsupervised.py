"""Class-agnostic instance AP with Hungarian matching (PointINS Appendix C, Table 13).

The paper states only that predicted clusters are "matched to ground-truth instances via
Hungarian assignment"; this module fixes the rest of the protocol as follows:

* GT instances: ids != -1 with >= `min_size` points (100, as the ScanNet benchmark). Points of
  smaller GT instances and points with id -1 are "void".
* Predicted instances: ids != -1 with >= `min_size` points; smaller ones are not proposals.
  Each has a score (default: its point count, so larger clusters rank first).
* Per scene, one one-to-one assignment maximising the summed IoU over all (GT, prediction)
  pairs (`scipy.optimize.linear_sum_assignment`), independent of the IoU threshold.
* At threshold t (0.50:0.95:0.05 and 0.25): an assigned pair with IoU > t is a true positive
  scored with the prediction's score; its GT is found. Every other prediction is a false
  positive, except (with `ignore_void=True`, the ScanNet rule) one with more than a fraction t
  of its points on void points, which is left out. GT instances not found are misses.
* Detections of all scenes are pooled and AP is integrated exactly as the ScanNet script does
  (`instance.average_precision`); mAP averages t = 0.50..0.90, AP50 / AP25 are single columns.
  Splits without GT instances give NaN.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import scipy.optimize

from pointins_jax.metrics import instance, semantic

MIN_SIZE = 100  # points


@dataclasses.dataclass(frozen=True)
class _SceneMatch:
  """Per prediction (float64 [P]): score, IoU with its assigned GT (0 if none), void fraction;
  and the number of GT instances."""
  score: np.ndarray
  matched_iou: np.ndarray
  void_fraction: np.ndarray
  num_gt: int


def hungarian_match(gt_instance: np.ndarray, pred_instance: np.ndarray,
                    min_size: int = MIN_SIZE) -> dict:
  """One-to-one GT / prediction assignment maximising the summed IoU.

  Args:
    gt_instance, pred_instance: int [N] instance ids, -1 = none.
    min_size: instances with fewer points are left out (GT ones become void).
  Returns:
    {"gt_ids": int64 [G], "pred_ids": int64 [P], "iou": float64 [G, P],
     "pred_size": int64 [P], "pred_void": int64 [P] (points of each prediction on void),
     "assigned_gt": int64 [P] (row of the assigned GT, -1 where none / IoU 0)}.
  """
  gt = semantic.check_labels("gt_instance", gt_instance)
  pred = semantic.check_labels("pred_instance", pred_instance, gt.shape[0])
  gt_ids, gt_index, gt_size = _instances(gt, min_size)
  pred_ids, pred_index, pred_size = _instances(pred, min_size)
  num_gt, num_pred = len(gt_ids), len(pred_ids)
  on_pred = pred_index < num_pred
  # Contingency table with an extra "void" row for points of no (kept) GT instance.
  counts = np.bincount(gt_index[on_pred] * num_pred + pred_index[on_pred],
                       minlength=(num_gt + 1) * num_pred).reshape(num_gt + 1, num_pred)
  intersection = counts[:num_gt]
  union = gt_size[:, None] + pred_size[None, :] - intersection
  iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
  rows, cols = scipy.optimize.linear_sum_assignment(iou, maximize=True)
  assigned_gt = np.full(num_pred, -1, np.int64)
  positive = iou[rows, cols] > 0
  assigned_gt[cols[positive]] = rows[positive]
  return {"gt_ids": gt_ids, "pred_ids": pred_ids, "iou": iou, "pred_size": pred_size,
          "pred_void": counts[num_gt], "assigned_gt": assigned_gt}


def _instances(ids: np.ndarray, min_size: int):
  """(kept ids [K], per-point index into them or K, sizes [K]) for ids != -1 with >= min_size
  points."""
  unique, inverse, size = np.unique(ids, return_inverse=True, return_counts=True)
  keep = (unique != -1) & (size >= min_size)
  slot = np.full(unique.shape, keep.sum(), np.int64)
  slot[keep] = np.arange(keep.sum())
  return unique[keep].astype(np.int64), slot[inverse.reshape(-1)], size[keep]


class UnsupervisedAPEvaluator:
  """Accumulates scenes; `result()` gives class-agnostic mAP / AP50 / AP25."""

  def __init__(self, min_size: int = MIN_SIZE, ignore_void: bool = True):
    self.min_size = int(min_size)
    self.ignore_void = ignore_void
    self._scenes: list[_SceneMatch] = []

  def add_scene(self, gt_instance: np.ndarray, pred_instance: np.ndarray,
                scores: Optional[np.ndarray] = None) -> None:
    """Adds one scan.

    Args:
      gt_instance, pred_instance: int [N], -1 = none.
      scores: float [M] per distinct predicted id != -1 in ascending order (scores of
        instances under min_size are unused), or None to score by size.
    """
    match = hungarian_match(gt_instance, pred_instance, self.min_size)
    num_pred = len(match["pred_ids"])
    if scores is None:
      scores = match["pred_size"].astype(np.float64)
    else:
      pred_ids = np.unique(pred_instance)
      pred_ids = pred_ids[pred_ids != -1]
      scores = np.asarray(scores, np.float64)
      if scores.shape != pred_ids.shape or not np.isfinite(scores).all():
        raise ValueError(f"scores: expected {len(pred_ids)} finite values (one per predicted "
                         f"instance id != -1, ascending), got shape {scores.shape}.")
      scores = scores[np.searchsorted(pred_ids, match["pred_ids"])]
    assigned = match["assigned_gt"]
    matched_iou = np.where(assigned >= 0,
                           match["iou"][np.maximum(assigned, 0), np.arange(num_pred)], 0.0)
    self._scenes.append(_SceneMatch(score=scores, matched_iou=matched_iou,
                                    void_fraction=match["pred_void"] / match["pred_size"],
                                    num_gt=len(match["gt_ids"])))

  def result(self) -> dict:
    """Returns {"mAP", "AP50", "AP25": float, "ap": float64 [T], "overlaps": float64 [T]}."""
    ap = np.array([self._ap(t) for t in instance.OVERLAPS])
    main = ~np.isclose(instance.OVERLAPS, 0.25)
    return {"mAP": float(np.mean(ap[main])),
            "AP50": float(ap[np.isclose(instance.OVERLAPS, 0.5)][0]),
            "AP25": float(ap[np.isclose(instance.OVERLAPS, 0.25)][0]),
            "ap": ap, "overlaps": instance.OVERLAPS.copy()}

  def _ap(self, threshold: float) -> float:
    scores, is_true, misses = [], [], 0
    for scene in self._scenes:
      hit = scene.matched_iou > threshold
      counted = hit | ~(self.ignore_void & (scene.void_fraction > threshold))
      scores.append(scene.score[counted])
      is_true.append(hit[counted].astype(np.float64))
      misses += scene.num_gt - int(hit.sum())
    is_true = np.concatenate(is_true) if is_true else np.zeros(0)
    if is_true.sum() + misses == 0:
      return float("nan")  # no GT instance in the split
    return instance.average_precision(np.concatenate(scores), is_true, misses)


def unsupervised_instance_ap(gt_instance: np.ndarray, pred_instance: np.ndarray,
                             scores: Optional[np.ndarray] = None, *, min_size: int = MIN_SIZE,
                             ignore_void: bool = True) -> dict:
  """Class-agnostic Hungarian AP of one scan; `UnsupervisedAPEvaluator` accumulates a split."""
  evaluator = UnsupervisedAPEvaluator(min_size, ignore_void)
  evaluator.add_scene(gt_instance, pred_instance, scores)
  return evaluator.result()
