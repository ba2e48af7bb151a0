"""Instance segmentation AP, a port of the official ScanNet benchmark script.

Ports `evaluate_semantic_instance.py` (ScanNet BenchmarkScripts) as adapted to per-point
`segment` / `instance` arrays by Pointcept's `InsSegEvaluator`, rule for rule:

* Evaluated classes: ids [0, C) minus `ignore_classes` (ScanNet-20: wall, floor -> 18 classes;
  S3DIS: none -> 13). "Void" points are those whose ground-truth class is -1 or ignored.
* GT instances: each instance id != -1 whose *first* point has an evaluated class; its class
  is that point's class and its size counts all its points. All of them take part in the
  association; only those with >= `min_region_size` (100) points are matched / counted.
* Predictions: dropped if their class is ignored or the mask has < `min_region_size` points.
  A prediction is only compared with GT instances of its own class.
* Per IoU threshold t in 0.50, 0.55, ..., 0.90, 0.25 and per class, over all scenes: GT
  instances in ascending id order greedily take their not-yet-taken intersecting predictions
  (in prediction order) with IoU > t; a GT matched several times keeps the highest score as a
  true positive and every lower one becomes a false positive (only the first match marks the
  prediction as taken). A prediction with IoU > t with no GT is a false positive unless more
  than a fraction t of its points lies on void points or on too-small GT instances of its class
  (it is then ignored). Unmatched GT instances are false negatives.
* AP: precision / recall at every distinct score (ties form one step), the artificial point
  (recall 0, precision 1) appended, integrated with step widths from convolving the recalls
  with [-0.5, 0, 0.5]. A class with GT but no predictions has AP 0; one without GT has AP NaN.
* mAP averages classes and thresholds 0.5:0.95 (NaN skipped), AP50 / AP25 the 0.5 / 0.25
  columns. Distance filters of the original script are disabled there too.

Association (intersections, void overlap, ignore fractions) and the AP integration are
vectorised with numpy; only the greedy assignment walks the few (GT, prediction) pairs whose
IoU exceeds the threshold, because its outcome depends on the visiting order.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from pointins_jax.metrics import semantic

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)  # the official thresholds
MIN_REGION_SIZE = 100  # points (mesh vertices in the original script)


@dataclasses.dataclass(frozen=True)
class _SceneAssociation:
  """What the matching needs of one scene; pairs are sorted by (gt, pred).

  gt_class, gt_size: int64 [G] GT instances of evaluated classes (ascending instance id).
  pred_class, pred_size, pred_void: int64 [P] kept predictions (input order).
  pred_score: float64 [P].
  pair_gt, pair_pred, pair_intersection: int64 [K] same-class pairs that intersect.
  """
  gt_class: np.ndarray
  gt_size: np.ndarray
  pred_class: np.ndarray
  pred_score: np.ndarray
  pred_size: np.ndarray
  pred_void: np.ndarray
  pair_gt: np.ndarray
  pair_pred: np.ndarray
  pair_intersection: np.ndarray

  @property
  def pair_iou(self) -> np.ndarray:
    union = self.gt_size[self.pair_gt] + self.pred_size[self.pair_pred] - self.pair_intersection
    return self.pair_intersection / union


def masks_from_instance(pred_instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-point instance ids -> (bool [M, N] masks, int64 [M] ids), ids ascending, -1 skipped."""
  pred_instance = np.asarray(pred_instance)
  ids = np.unique(pred_instance)
  ids = ids[ids != -1]
  return pred_instance[None, :] == ids[:, None], ids.astype(np.int64)


class InstanceAPEvaluator:
  """Accumulates scenes and computes ScanNet-protocol AP (see the module docstring)."""

  def __init__(self, num_classes: int, ignore_classes: Sequence[int] = (),
               class_names: Optional[Sequence[str]] = None,
               min_region_size: int = MIN_REGION_SIZE):
    """Args:
      num_classes: C, the dataset's semantic classes (ids 0..C-1).
      ignore_classes: class ids excluded from evaluation and treated as void (ScanNet: 0, 1).
      class_names: C names (defaults to "0".."C-1").
      min_region_size: minimum points of a GT instance / predicted mask.
    """
    bad = [c for c in ignore_classes if not 0 <= c < num_classes]
    if bad:
      raise ValueError(f"ignore_classes: {bad} not in [0, {num_classes}).")
    self.num_classes = num_classes
    self.ignore_classes = tuple(sorted(set(int(c) for c in ignore_classes)))
    names = semantic.resolve_class_names(class_names, num_classes)
    self.eval_classes = np.array([c for c in range(num_classes) if c not in self.ignore_classes])
    self.class_names = [names[c] for c in self.eval_classes]
    self.min_region_size = int(min_region_size)
    self._scenes: list[_SceneAssociation] = []

  def add_scene(self, gt_segment: np.ndarray, gt_instance: np.ndarray, pred_masks: np.ndarray,
                pred_classes: np.ndarray, pred_scores: np.ndarray, name: str = "scene") -> None:
    """Adds one scan.

    Args:
      gt_segment: int [N] GT class, -1 = ignore.
      gt_instance: int [N] GT instance id, -1 = none.
      pred_masks: bool [M, N] (or 0/1 integers) predicted instance masks.
      pred_classes: int [M] class id of each mask, in [0, C).
      pred_scores: float [M] confidence of each mask (finite).
      name: used in error messages (e.g. the prediction file).
    """
    gt_segment = semantic.check_labels(f"{name}: gt segment", gt_segment,
                                       num_classes=self.num_classes)
    num_points = gt_segment.shape[0]
    gt_instance = semantic.check_labels(f"{name}: gt instance", gt_instance, num_points)
    pred_masks = np.asarray(pred_masks)
    if pred_masks.ndim != 2 or pred_masks.shape[1] != num_points:
      raise ValueError(f"{name}: masks must have shape [M, {num_points}] (one row per predicted "
                       f"instance over all GT points), got {pred_masks.shape}.")
    num_masks = pred_masks.shape[0]
    pred_classes = semantic.check_labels(f"{name}: classes", pred_classes, num_masks,
                                         self.num_classes)
    if (pred_classes < 0).any():
      raise ValueError(f"{name}: classes must be in [0, {self.num_classes}); drop masks "
                       "without a class instead of labelling them -1.")
    pred_scores = np.asarray(pred_scores, dtype=np.float64)
    if pred_scores.shape != (num_masks,) or not np.isfinite(pred_scores).all():
      raise ValueError(f"{name}: scores must be {num_masks} finite floats, got shape "
                       f"{pred_scores.shape} with {int((~np.isfinite(pred_scores)).sum())} "
                       "NaN/inf.")
    self._scenes.append(self._associate(gt_segment, gt_instance, pred_masks != 0, pred_classes,
                                        pred_scores))

  def _associate(self, gt_segment, gt_instance, pred_masks, pred_classes, pred_scores):
    void = (gt_segment == -1) | np.isin(gt_segment, self.ignore_classes)
    ids, first, sizes = np.unique(gt_instance, return_index=True, return_counts=True)
    first_class = gt_segment[first]
    keep_gt = (ids != -1) & ~void[first]
    gt_class, gt_size = first_class[keep_gt], sizes[keep_gt]
    # Point -> index of its evaluated GT instance, or G for none.
    slot = np.full(ids.shape, keep_gt.sum(), dtype=np.int64)
    slot[keep_gt] = np.arange(keep_gt.sum())
    point_gt = slot[np.searchsorted(ids, gt_instance)]

    pred_size = pred_masks.sum(axis=1)
    keep_pred = ~np.isin(pred_classes, self.ignore_classes) & (pred_size >= self.min_region_size)
    masks = pred_masks[keep_pred]
    pred_void = (masks & void[None, :]).sum(axis=1)
    rows, cols = np.nonzero(masks)
    num_gt = gt_class.shape[0]
    counts = np.bincount(rows * (num_gt + 1) + point_gt[cols],
                         minlength=masks.shape[0] * (num_gt + 1))
    intersection = counts.reshape(masks.shape[0], num_gt + 1)[:, :num_gt]
    kept_class = pred_classes[keep_pred]
    intersection = intersection * (kept_class[:, None] == gt_class[None, :])
    pair_gt, pair_pred = np.nonzero(intersection.T)  # row-major over gt: sorted by (gt, pred)
    return _SceneAssociation(
        gt_class=gt_class, gt_size=gt_size, pred_class=kept_class,
        pred_score=pred_scores[keep_pred], pred_size=pred_size[keep_pred], pred_void=pred_void,
        pair_gt=pair_gt, pair_pred=pair_pred, pair_intersection=intersection[pair_pred, pair_gt])

  def result(self) -> dict:
    """Returns {"mAP", "AP50", "AP25": float, "classes": {name: {"AP", "AP50", "AP25"}},
    "ap_table": float64 [classes, thresholds], "overlaps": float64 [thresholds]}."""
    ap_table = np.array([[self._class_ap(c, t) for t in OVERLAPS] for c in self.eval_classes])
    ap_table = ap_table.reshape(len(self.eval_classes), len(OVERLAPS))
    main = ~np.isclose(OVERLAPS, 0.25)
    col50, col25 = np.isclose(OVERLAPS, 0.5), np.isclose(OVERLAPS, 0.25)
    per_class = {name: {"AP": float(np.mean(row[main])), "AP50": float(row[col50][0]),
                        "AP25": float(row[col25][0])}
                 for name, row in zip(self.class_names, ap_table)}
    return {"mAP": semantic.nanmean(ap_table[:, main]),
            "AP50": semantic.nanmean(ap_table[:, col50]),
            "AP25": semantic.nanmean(ap_table[:, col25]),
            "classes": per_class, "ap_table": ap_table, "overlaps": OVERLAPS.copy()}

  def _class_ap(self, class_id: int, threshold: float) -> float:
    scores, is_true, misses, has_gt, has_pred = [], [], 0, False, False
    for scene in self._scenes:
      tp_scores, fp_scores, scene_misses, scene_gt, scene_pred = _match_scene(
          scene, class_id, threshold, self.min_region_size)
      scores += [tp_scores, fp_scores]
      is_true += [np.ones_like(tp_scores), np.zeros_like(fp_scores)]
      misses += scene_misses
      has_gt |= scene_gt
      has_pred |= scene_pred
    if not has_gt:
      return float("nan")
    if not has_pred:
      return 0.0
    return average_precision(np.concatenate(scores), np.concatenate(is_true), misses)


def _match_scene(scene: _SceneAssociation, class_id: int, threshold: float,
                 min_region_size: int):
  """Greedy matching of one class in one scene -> (tp scores, fp scores, misses, has_gt,
  has_pred)."""
  gt_of_class = scene.gt_class == class_id
  counted_gt = gt_of_class & (scene.gt_size >= min_region_size)
  preds = np.flatnonzero(scene.pred_class == class_id)
  above = scene.pair_iou > threshold
  pair_counted = above & counted_gt[scene.pair_gt]
  taken = np.zeros(scene.pred_class.shape, bool)
  best = np.full(scene.gt_class.shape, -np.inf)
  matched = np.zeros(scene.gt_class.shape, bool)
  duplicate_scores = []
  for gt, pred in zip(scene.pair_gt[pair_counted], scene.pair_pred[pair_counted]):
    if taken[pred]:
      continue
    score = scene.pred_score[pred]
    if matched[gt]:  # the lower of the two scores becomes a false positive
      duplicate_scores.append(min(best[gt], score))
      best[gt] = max(best[gt], score)
    else:
      matched[gt], best[gt], taken[pred] = True, score, True
  # Predictions overlapping no GT of their class above the threshold (small GT included).
  found = np.zeros(scene.pred_class.shape, bool)
  found[scene.pair_pred[above]] = True
  small = ~counted_gt[scene.pair_gt]
  ignored = scene.pred_void + np.bincount(scene.pair_pred[small],
                                          weights=scene.pair_intersection[small],
                                          minlength=scene.pred_class.shape[0])
  false_alarm = preds[~found[preds] & (ignored[preds] / scene.pred_size[preds] <= threshold)]
  fp_scores = np.concatenate([np.asarray(duplicate_scores, np.float64),
                              scene.pred_score[false_alarm]])
  return (best[matched], fp_scores, int((counted_gt & ~matched).sum()), bool(counted_gt.any()),
          bool(preds.size))


def average_precision(scores: np.ndarray, is_true: np.ndarray, misses: int) -> float:
  """ScanNet AP from scored detections.

  Args:
    scores: float [D] detection scores.
    is_true: {0, 1} [D] whether each detection is a true positive.
    misses: GT instances that no detection found (hard false negatives).
  Returns:
    The area under the step precision-recall curve as the official script integrates it.
  """
  order = np.argsort(scores, kind="stable")
  sorted_scores, sorted_true = scores[order], is_true[order]
  cumulative = np.cumsum(sorted_true)
  _, first = np.unique(sorted_scores, return_index=True)  # start of each score tie group
  num_true = cumulative[-1] if cumulative.size else 0.0
  below = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0.0)
  true_pos = num_true - below  # detections scored >= the group's score that are true
  false_pos = len(scores) - first - true_pos
  precision = np.append(true_pos / (true_pos + false_pos), 1.0)
  recall = np.append(true_pos / (num_true + misses), 0.0)
  step_widths = np.convolve(np.concatenate([recall[:1], recall, [0.0]]), [-0.5, 0, 0.5],
                            "valid")
  return float(np.dot(precision, step_widths))


def instance_ap(gt_segment: np.ndarray, gt_instance: np.ndarray, pred_masks: np.ndarray,
                pred_classes: np.ndarray, pred_scores: np.ndarray, *, num_classes: int,
                ignore_classes: Sequence[int] = (), class_names: Optional[Sequence[str]] = None,
                min_region_size: int = MIN_REGION_SIZE) -> dict:
  """ScanNet-protocol AP of one scan; use `InstanceAPEvaluator` to accumulate a split.

  Shapes as in `InstanceAPEvaluator.add_scene`; returns `InstanceAPEvaluator.result()`.
  """
  evaluator = InstanceAPEvaluator(num_classes, ignore_classes, class_names, min_region_size)
  evaluator.add_scene(gt_segment, gt_instance, pred_masks, pred_classes, pred_scores)
  return evaluator.result()
