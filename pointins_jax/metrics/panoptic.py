"""Panoptic quality (PQ / SQ / RQ), equal to the SemanticKITTI panoptic evaluation.

Computes what `PanopticEval` of PRBonn/semantic-kitti-api (`auxiliary/eval_np.py`, driven by
`evaluate_panoptic.py`) computes, in our label convention (class ids 0..C-1, -1 = unlabelled;
instance -1 = none, the official instance 0); `tests/test_metric_panoptic.py` checks it
against a literal transcription of that code:

* Points whose GT class is -1 (the official "unlabeled" class 0) are removed first, for the
  predictions too. A predicted class of -1 makes a point belong to no predicted segment (and
  counts as a miss in the IoU).
* A segment is a (class, instance id) pair, for every class, stuff included: the official
  code never looks at whether a class is a thing when forming segments. Stuff points carry
  instance -1 in GT (our readers; the official files store 0), so a stuff class is one
  segment per scan, but stuff *predicted* with several ids (or GT stuff with several ids)
  makes several segments, which can turn a perfect stuff prediction into misses. Points of
  a class with instance -1 form one segment of that class, as the official id 0 does.
  `merge_stuff_ids=True` instead makes every stuff point of a class one segment whatever its
  id (the convention of Pointcept-style evaluators that drop stuff instance ids); use it
  only to compare with numbers computed that way.
* Per class, a GT and a predicted segment of that class with IoU > 0.5 are a true positive
  (unique by construction) adding its IoU to the class's sum; unmatched GT segments with
  >= `min_points` points are false negatives and unmatched predicted segments with
  >= `min_points` points false positives (smaller ones are simply not counted).
* Per class: SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2), PQ = SQ * RQ (0 where the
  denominators vanish). PQ / SQ / RQ average all classes (also classes absent from the split,
  which score 0, as in the official script), things and stuff; PQ-dagger uses the IoU instead
  of PQ for stuff classes. mIoU is the official one: per-class IoU over the summed confusion,
  0 for absent classes, averaged over all classes.

Panoptic nuScenes (nuscenes-devkit `eval/panoptic`) runs this same `PanopticEval` code; the
differences are only in the configuration: `min_points` = 15 (its `--min_inst_points`
default) instead of 50, 16 classes (10 things, 6 stuff) with "noise" as the ignored class, and
instance ids given as full panoptic labels (class * 1000 + instance), which is equivalent since
segments are formed per class.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pointins_jax.metrics import semantic

MIN_POINTS = 50  # SemanticKITTI `--min_inst_points`; Panoptic nuScenes uses 15


class PanopticEvaluator:
  """Accumulates scans and computes PQ / SQ / RQ / mIoU (see the module docstring)."""

  def __init__(self, num_classes: int, thing_classes: Sequence[int],
               class_names: Optional[Sequence[str]] = None, min_points: int = MIN_POINTS,
               merge_stuff_ids: bool = False):
    """Args:
      num_classes: C (SemanticKITTI: 19, nuScenes: 16).
      thing_classes: ids of the classes with instances; all others are stuff.
      class_names: C names (defaults to "0".."C-1").
      min_points: unmatched segments smaller than this count neither as FP nor as FN.
      merge_stuff_ids: False (official): every (class, id) pair is a segment, stuff too;
        True: all points of a stuff class form one segment (module docstring).
    """
    bad = [c for c in thing_classes if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f"thing_classes: {bad} not in [0, {num_classes}).")
    self.num_classes = num_classes
    self.is_thing = np.isin(np.arange(num_classes), thing_classes)
    self.class_names = semantic.resolve_class_names(class_names, num_classes)
    self.min_points = int(min_points)
    self.merge_stuff_ids = bool(merge_stuff_ids)
    self._confusion = np.zeros((num_classes, num_classes + 1), np.int64)
    self._true_pos = np.zeros(num_classes, np.int64)
    self._iou_sum = np.zeros(num_classes, np.float64)
    self._false_pos = np.zeros(num_classes, np.int64)
    self._false_neg = np.zeros(num_classes, np.int64)

  def add_scene(self, gt_segment: np.ndarray, gt_instance: np.ndarray,
                pred_segment: np.ndarray, pred_instance: np.ndarray,
                name: str = "scene") -> None:
    """Adds one scan; all arrays int [N] (class ids in [0, C) or -1; instance ids or -1)."""
    gt_segment = semantic.check_labels(f"{name}: gt segment", gt_segment,
                                       num_classes=self.num_classes)
    num_points = gt_segment.shape[0]
    gt_instance = semantic.check_labels(f"{name}: gt instance", gt_instance, num_points)
    pred_segment = semantic.check_labels(f"{name}: segment", pred_segment, num_points,
                                         self.num_classes)
    pred_instance = semantic.check_labels(f"{name}: instance", pred_instance, num_points)
    self._confusion += semantic.confusion_matrix(gt_segment, pred_segment, self.num_classes)

    labelled = gt_segment != -1
    gt_segment, pred_segment = gt_segment[labelled], pred_segment[labelled]
    gt_class, gt_id, gt_size = self._segments(gt_segment, gt_instance[labelled])
    pred_class, pred_id, pred_size = self._segments(pred_segment, pred_instance[labelled])
    # Segments intersect on points whose GT and predicted classes agree (-1 never does here).
    same = gt_segment == pred_segment
    pairs, intersection = np.unique(np.stack([gt_id[same], pred_id[same]]), axis=1,
                                    return_counts=True)
    pair_gt, pair_pred = pairs
    union = gt_size[pair_gt] + pred_size[pair_pred] - intersection
    iou = intersection / union
    hit = iou > 0.5
    hit_class = gt_class[pair_gt[hit]]
    self._true_pos += np.bincount(hit_class, minlength=self.num_classes)
    self._iou_sum += np.bincount(hit_class, weights=iou[hit], minlength=self.num_classes)
    self._false_neg += self._count_unmatched(gt_class, gt_size, pair_gt[hit])
    self._false_pos += self._count_unmatched(pred_class, pred_size, pair_pred[hit])

  def _segments(self, segment: np.ndarray, instance: np.ndarray):
    """(class int64 [S], per-point segment index int64 [N] (-1: none), size int64 [S])."""
    if self.merge_stuff_ids:
      instance = np.where(self.is_thing[np.maximum(segment, 0)], instance, -1)
    key = segment * (np.int64(1) << 32) + (instance + 1)  # instance ids are int32
    has_class = segment != -1
    keys, index, size = np.unique(key[has_class], return_inverse=True, return_counts=True)
    point_segment = np.full(segment.shape, -1, np.int64)
    point_segment[has_class] = index.reshape(-1)
    return keys >> 32, point_segment, size

  def _count_unmatched(self, seg_class, seg_size, matched_index):
    unmatched = np.ones(seg_class.shape, bool)
    unmatched[matched_index] = False
    counted = unmatched & (seg_size >= self.min_points)
    return np.bincount(seg_class[counted], minlength=self.num_classes)

  def result(self) -> dict:
    """Returns {"PQ", "SQ", "RQ", "PQ_things", ..., "RQ_stuff", "PQ_dagger", "mIoU": float,
    "classes": {name: {"PQ", "SQ", "RQ", "IoU"}}}."""
    eps = 1e-15  # the official guard: 0/eps = 0 for classes never seen
    true_pos = self._true_pos.astype(np.float64)
    sq = self._iou_sum / np.maximum(true_pos, eps)
    rq = true_pos / np.maximum(true_pos + 0.5 * self._false_pos + 0.5 * self._false_neg, eps)
    pq = sq * rq
    iou = np.nan_to_num(semantic.iou_from_confusion(self._confusion)["iou"])
    out = {"PQ": pq.mean(), "SQ": sq.mean(), "RQ": rq.mean()}
    for group, members in (("things", self.is_thing), ("stuff", ~self.is_thing)):
      for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
        out[f"{name}_{group}"] = values[members].mean() if members.any() else np.nan
    out["PQ_dagger"] = np.where(self.is_thing, pq, iou).mean()
    out["mIoU"] = iou.mean()
    out = {key: float(value) for key, value in out.items()}
    out["classes"] = {name: {"PQ": float(pq[c]), "SQ": float(sq[c]), "RQ": float(rq[c]),
                             "IoU": float(iou[c])}
                      for c, name in enumerate(self.class_names)}
    return out


def panoptic_quality(gt_segment: np.ndarray, gt_instance: np.ndarray, pred_segment: np.ndarray,
                     pred_instance: np.ndarray, *, num_classes: int,
                     thing_classes: Sequence[int], class_names: Optional[Sequence[str]] = None,
                     min_points: int = MIN_POINTS, merge_stuff_ids: bool = False) -> dict:
  """PQ / SQ / RQ / mIoU of one scan; use `PanopticEvaluator` to accumulate a split."""
  evaluator = PanopticEvaluator(num_classes, thing_classes, class_names, min_points,
                                merge_stuff_ids)
  evaluator.add_scene(gt_segment, gt_instance, pred_segment, pred_instance)
  return evaluator.result()
