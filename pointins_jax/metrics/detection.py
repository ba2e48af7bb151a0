"""nuScenes detection metric: per-class AP at 4 centre distances, TP errors, mAP and NDS.

Numpy only, no model needed. A re-implementation of the official devkit's protocol
(nuscenes-devkit `nuscenes/eval/detection`: algo.accumulate / calc_ap / calc_tp,
DetectionMetrics, configs/detection_cvpr_2019.json), step by step:

1. Filtering (devkit loaders.filter_eval_boxes). Ground truth and predictions farther than
   their class range (`DETECTION_CLASS_RANGE`, BEV distance from the ego, strict `<`) are
   dropped; so are ground-truth boxes with zero points (`num_points == 0`; the devkit's
   num_lidar_pts + num_radar_pts) when point counts are given. The ego position is the
   `origin` argument (default: the scene frame's origin, i.e. the sensor), or per-box
   distances (`ego_distance`) for the ground truth. For nuScenes scenes in the LIDAR_TOP
   frame the devkit measures from the ego pose (rear axle), about 0.94 m behind the LiDAR:
   pass that origin for exact filtering of predictions. (The devkit works in the global
   frame; BEV distances, yaw and velocity differences are the same in a sensor frame up
   to the sensor's small tilt, as long as both sides use that frame.) Not reproduced: the
   devkit's bike-rack filter (bicycles/motorcycles inside a `static_object.bicycle_rack`
   box), which needs annotations this project does not keep. More than
   `max_boxes_per_sample` (500) predictions in a scene is an error, as in the devkit.
2. Matching (accumulate), per class and distance threshold: predictions of the class over
   all scenes in descending score; equal scores in the devkit's order, which is
   `sorted((score, index))[::-1]`, i.e. the one later in the scene-by-scene, box-by-box
   order first. Each takes the nearest (BEV centre distance; the first in ground-truth
   order on ties) not yet matched ground truth of its class in its scene; a match needs
   distance `< threshold` (strict), otherwise the prediction is a false positive.
3. Curves: cumulative precision/recall, interpolated with `np.interp` onto the 101 recall
   points 0, 0.01, .., 1 (0 beyond the achieved recall), and the score the same way.
4. AP = mean over the recall points above `min_recall` (indices 11..100) of
   max(precision - min_precision, 0), divided by 1 - min_precision. A class without
   ground truth (or without any match) has AP 0 and TP errors 1, and still counts in mAP.
5. TP errors at `dist_th_tp` = 2 m, per match: ATE BEV centre distance (m), ASE
   1 - IoU of the sizes with centres and yaw aligned, AOE smallest yaw difference (rad;
   period 2 pi, barrier pi), AVE BEV velocity L2 (m/s), AAE 1 - attribute accuracy. Each
   is a running mean over the matches in score order (NaN entries left out; all NaN ->
   1), interpolated onto the recall grid through the scores, then averaged over the recall
   points from index 11 up to the achieved recall (1 when that is below `min_recall`).
   N/A (NaN): AOE, AVE, AAE of traffic_cone; AVE, AAE of barrier.
6. mAP = mean over classes of the mean AP over thresholds; mTP = NaN-ignoring mean over
   classes; NDS = (5 mAP + sum over the 5 TP metrics of max(0, 1 - mTP)) / 10.

Missing data (a deliberate extension; the devkit always has velocity and attributes).
A ground-truth box whose velocity is unknown (`velocity_known` False; nuScenes' NaN box
velocity) or without an attribute (-1) gives a NaN error, left out of the running mean as
in the devkit; so does a scene without `velocity` on either side (all NaN -> 1, as
there). When no scene has `velocity` on both sides (the ground truth or the predictions
have none), AVE is reported N/A (NaN) for every class and mAVE is NaN; likewise
`attribute` and AAE. NDS then scores that metric 0, which is the devkit's own arithmetic
for a NaN mTP (`max(0.0, 1 - nan)` is 0.0) and equals what it gives for all-missing
errors (error 1).

Saved predictions (`experiments.evaluate --task detection`): one `PRED_DIR/<scene>.npz`
per ground-truth scene folder, in the scene's frame (as its box_*.npy files):
  box_center   float32 [P, 3] m          box_size  float32 [P, 3] (length, width, height) m
  box_yaw      float32 [P] rad about +z  box_label int [P] index into DETECTION_CLASSES
  box_score    float32 [P] confidence (higher = more confident; at most 500 per scene)
  box_velocity float32 [P, 2] m/s        optional (else AVE is N/A)
  box_attribute int [P], -1 = none       optional (else AAE is N/A)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Optional, Sequence

import numpy as np

from pointins_jax.data.boxes import (BOX_FILES, DETECTION_CLASS_RANGE, DETECTION_CLASSES,
                                     NO_ATTRIBUTE, BoxError, Boxes)

RECALL_POINTS = 101  # the devkit's DetectionMetricData.nelem
TP_METRICS = ("ATE", "ASE", "AOE", "AVE", "AAE")  # devkit trans/scale/orient/vel/attr_err
# The devkit's N/A TP metrics per class (DetectionEval.evaluate).
NOT_APPLICABLE = {"traffic_cone": ("AOE", "AVE", "AAE"), "barrier": ("AVE", "AAE")}
PRED_FILES = {**{k: "box_" + k for k in BOX_FILES}, "score": "box_score"}  # npz keys


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
  """The evaluation settings; defaults are the devkit's detection_cvpr_2019.json."""

  class_range: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: dict(DETECTION_CLASS_RANGE))
  dist_ths: tuple = (0.5, 1.0, 2.0, 4.0)  # m, BEV centre distance
  dist_th_tp: float = 2.0  # m, the threshold whose matches give the TP errors
  min_recall: float = 0.1
  min_precision: float = 0.1
  max_boxes_per_sample: Optional[int] = 500  # predictions per scene; None = no limit
  mean_ap_weight: float = 5.0


@dataclasses.dataclass
class Curves:
  """One class at one threshold on the 101-point recall grid (devkit DetectionMetricData).

  All float64 [101]: recall 0..1, precision, confidence (the interpolated score; 0 beyond
  the achieved recall) and `errors` {TP metric: running-mean error}.
  """

  recall: np.ndarray
  precision: np.ndarray
  confidence: np.ndarray
  errors: dict

  @classmethod
  def no_predictions(cls) -> "Curves":
    ones = np.ones(RECALL_POINTS)
    return cls(np.linspace(0, 1, RECALL_POINTS), np.zeros(RECALL_POINTS),
               np.zeros(RECALL_POINTS), {m: ones.copy() for m in TP_METRICS})

  @property
  def max_recall_index(self) -> int:
    """Index of the last non-zero confidence (the achieved recall); 0 without matches."""
    nonzero = np.nonzero(self.confidence)[0]
    return int(nonzero[-1]) if nonzero.size else 0


# ----------------------------------------------------------------------------------------
# Per-pair quantities (vectorised over pairs).

def center_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """BEV (xy) distance (m) between centres a [..., >=2] and b [..., >=2]."""
  d = np.asarray(a, np.float64)[..., :2] - np.asarray(b, np.float64)[..., :2]
  return np.sqrt(np.sum(d * d, axis=-1))


def scale_iou(size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
  """3D IoU of boxes [..., 3] (m) with the same centre and yaw: prod(min) / union."""
  size_a, size_b = np.asarray(size_a, np.float64), np.asarray(size_b, np.float64)
  inter = np.prod(np.minimum(size_a, size_b), axis=-1)
  return inter / (np.prod(size_a, axis=-1) + np.prod(size_b, axis=-1) - inter)


def yaw_difference(yaw_gt: np.ndarray, yaw_pred: np.ndarray, period: float) -> np.ndarray:
  """Smallest |yaw_gt - yaw_pred| (rad) modulo `period` (2 pi; pi for barriers): [0, pi]."""
  diff = (np.asarray(yaw_gt, np.float64) - np.asarray(yaw_pred, np.float64)
          + period / 2) % period - period / 2
  diff = np.where(diff > np.pi, diff - 2 * np.pi, diff)
  return np.abs(diff)


def cumulative_mean(x: np.ndarray) -> np.ndarray:
  """Running mean of x [K] ignoring NaN (0 before the first value); all NaN -> ones."""
  x = np.asarray(x, np.float64)
  valid = ~np.isnan(x)
  if not valid.any():
    return np.ones(x.shape[0])
  total, count = np.cumsum(np.where(valid, x, 0.0)), np.cumsum(valid)
  return np.divide(total, count, out=np.zeros_like(total), where=count != 0)


# ----------------------------------------------------------------------------------------
# Curves, AP and TP errors.

def average_precision(curves: Curves, min_recall: float, min_precision: float) -> float:
  """Mean of max(precision - min_precision, 0) over recall > min_recall, / (1 - min_prec)."""
  if not (0 <= min_precision < 1 and 0 <= min_recall <= 1):
    raise ValueError(f"min_precision {min_precision} must be in [0, 1) and min_recall "
                     f"{min_recall} in [0, 1].")
  precision = curves.precision[round(100 * min_recall) + 1:] - min_precision
  return float(np.mean(np.maximum(precision, 0.0))) / (1.0 - min_precision)


def tp_error(curves: Curves, min_recall: float, metric: str) -> float:
  """Mean error over recall points min_recall (excluded) .. achieved recall; 1 if below."""
  first, last = round(100 * min_recall) + 1, curves.max_recall_index
  if last < first:
    return 1.0
  return float(np.mean(curves.errors[metric][first:last + 1]))


def curves_from_matches(is_tp: np.ndarray, scores: np.ndarray, num_gt: int,
                        match_errors: Mapping[str, np.ndarray]) -> Curves:
  """The recall-grid curves of one class (devkit accumulate, after matching).

  Args:
    is_tp: bool [P], the predictions in matching (descending-score) order, True = matched.
    scores: float [P], their scores in that order.
    num_gt: ground-truth boxes of the class (> 0).
    match_errors: {TP metric: float [T]} per match (T = is_tp.sum()), in order; NaN = N/A.
  """
  is_tp = np.asarray(is_tp, bool)
  if num_gt == 0 or not is_tp.any():
    return Curves.no_predictions()
  tp = np.cumsum(is_tp).astype(np.float64)
  fp = np.cumsum(~is_tp).astype(np.float64)
  scores = np.asarray(scores, np.float64)
  recall_grid = np.linspace(0, 1, RECALL_POINTS)
  recall = tp / float(num_gt)
  precision = np.interp(recall_grid, recall, tp / (tp + fp), right=0)
  confidence = np.interp(recall_grid, recall, scores, right=0)
  match_scores = scores[is_tp]
  errors = {}
  for metric in TP_METRICS:
    running = cumulative_mean(match_errors[metric])
    # np.interp needs increasing x: reverse the descending scores and back.
    errors[metric] = np.interp(confidence[::-1], match_scores[::-1], running[::-1])[::-1]
  return Curves(recall_grid, precision, confidence, errors)


# ----------------------------------------------------------------------------------------
# Scenes and matching.

@dataclasses.dataclass
class _Scene:
  """One scene after filtering; float64 arrays, labels int."""

  gt: Boxes
  gt_velocity_known: np.ndarray  # bool [G]
  pred: Boxes
  scores: np.ndarray  # float64 [P]
  name: str


def _check_boxes(boxes: Boxes, source: str, num_classes: int) -> Boxes:
  if not isinstance(boxes, Boxes):
    raise TypeError(f"{source}: expected a boxes.Boxes, got {type(boxes).__name__}.")
  return dataclasses.replace(boxes).validate(source, num_classes)


def _check_per_box(value, num_boxes: int, source: str, field: str, kind) -> np.ndarray:
  value = np.asarray(value)
  if value.shape != (num_boxes,):
    raise BoxError(f"{source}: {field} must have shape ({num_boxes},) (one per box), got "
                   f"{value.shape}.")
  if not np.issubdtype(value.dtype, kind):
    raise BoxError(f"{source}: {field} must be {kind.__name__}, got {value.dtype}.")
  if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
    raise BoxError(f"{source}: {field} has NaN/inf values.")
  return value


class DetectionEvaluator:
  """Accumulates scenes of a split; `result()` gives the nuScenes detection metrics.

  Scene order matters only for equal scores (module docstring, step 2).
  """

  def __init__(self, config: DetectionConfig = DetectionConfig(),
               class_names: Sequence[str] = DETECTION_CLASSES):
    missing = [c for c in class_names if c not in config.class_range]
    if missing:
      raise ValueError(f"config.class_range has no range for classes {missing}.")
    if config.dist_th_tp not in config.dist_ths:
      raise ValueError(f"dist_th_tp {config.dist_th_tp} must be one of dist_ths "
                       f"{config.dist_ths}.")
    self.config = config
    self.class_names = tuple(class_names)
    self._ranges = np.array([config.class_range[c] for c in self.class_names], np.float64)
    self._scenes: list[_Scene] = []

  def add_scene(self, gt: Boxes, pred: Boxes, scores: np.ndarray, *,
                num_points: Optional[np.ndarray] = None,
                velocity_known: Optional[np.ndarray] = None,
                ego_distance: Optional[np.ndarray] = None,
                origin: Sequence[float] = (0.0, 0.0, 0.0), name: str = "<scene>",
                gt_name: Optional[str] = None) -> None:
    """Adds one scene (a nuScenes sample).

    Args:
      gt: ground-truth boxes [G] in the scene frame (label: index into `class_names`).
      pred: predicted boxes [P], same frame; at most `config.max_boxes_per_sample`.
      scores: float [P] confidences.
      num_points: int [G] points in each ground-truth box; boxes with 0 are dropped
        (nuScenes: num_lidar_pts + num_radar_pts). None: none dropped.
      velocity_known: bool [G]; False = the box's velocity is unknown (left out of AVE).
      ego_distance: float [G] m, BEV distance of each ground-truth box from the ego, used
        for the class ranges instead of the distance from `origin`.
      origin: the ego position (m) in the scene frame; class ranges are BEV distances from
        it (for predictions always, for ground truth without `ego_distance`).
      name: names the scene (e.g. its prediction file) in error messages.
      gt_name: names its ground truth (e.g. the scene folder); default f"{name} (ground
        truth)".
    Raises:
      BoxError / ValueError: naming `name` and the field (shape, NaN, class id, too many
        predictions).
    """
    num_classes = len(self.class_names)
    pred_name = f"{name} (predictions)" if gt_name is None else name
    gt_name = f"{name} (ground truth)" if gt_name is None else gt_name
    gt = _check_boxes(gt, gt_name, num_classes)
    pred = _check_boxes(pred, pred_name, num_classes)
    scores = _check_per_box(scores, len(pred), pred_name, PRED_FILES["score"],
                            np.number).astype(np.float64)
    limit = self.config.max_boxes_per_sample
    if limit is not None and len(pred) > limit:
      raise ValueError(f"{pred_name}: {len(pred)} boxes, the protocol allows at most "
                       f"{limit} per scene; keep the {limit} highest-scoring.")
    origin = np.asarray(origin, np.float64).reshape(-1)
    if origin.shape[0] not in (2, 3) or not np.isfinite(origin).all():
      raise ValueError(f"{name}: origin must be a finite (x, y[, z]), got {origin}.")
    known = np.ones(len(gt), bool)
    if velocity_known is not None:
      known = _check_per_box(velocity_known, len(gt), gt_name, "velocity_known", np.bool_)
    if ego_distance is None:
      gt_distance = center_distance(gt.center, origin)
    else:
      gt_distance = _check_per_box(ego_distance, len(gt), gt_name, "ego_distance",
                                   np.floating).astype(np.float64)
    keep_gt = gt_distance < self._ranges[gt.label]
    if num_points is not None:
      num_points = _check_per_box(num_points, len(gt), gt_name, "num_points", np.integer)
      keep_gt &= num_points != 0
    keep_pred = center_distance(pred.center, origin) < self._ranges[pred.label]
    self._scenes.append(_Scene(gt.subset(keep_gt), known[keep_gt], pred.subset(keep_pred),
                               scores[keep_pred], name))

  def _match(self, label: int, dist_th: float):
    """Greedy matching of one class at one threshold: (is_tp [P], scores [P], errors)."""
    class_name = self.class_names[label]
    period = np.pi if class_name == "barrier" else 2 * np.pi
    preds, num_gt = [], 0
    for s, scene in enumerate(self._scenes):
      g = np.nonzero(scene.gt.label == label)[0]
      p = np.nonzero(scene.pred.label == label)[0]
      num_gt += g.size
      preds += [(s, j, g) for j in p]
    scores = np.array([self._scenes[s].scores[j] for s, j, _ in preds], np.float64)
    # The devkit's order: sorted((score, index))[::-1].
    order = np.lexsort((np.arange(len(preds)), scores))[::-1]
    taken = {s: np.zeros(len(scene.gt), bool) for s, scene in enumerate(self._scenes)}
    is_tp = np.zeros(len(preds), bool)
    errors = {m: [] for m in TP_METRICS}
    for rank, k in enumerate(order):
      s, j, g = preds[k]
      scene = self._scenes[s]
      g = g[~taken[s][g]]
      if g.size == 0:
        continue
      dist = center_distance(scene.gt.center[g], scene.pred.center[j])
      best = int(np.argmin(dist))
      if not dist[best] < dist_th:
        continue
      i = g[best]
      taken[s][i] = True
      is_tp[rank] = True
      gt, pred = scene.gt, scene.pred
      errors["ATE"].append(dist[best])
      errors["ASE"].append(1.0 - scale_iou(gt.size[i], pred.size[j]))
      errors["AOE"].append(yaw_difference(gt.yaw[i], pred.yaw[j], period))
      velocity = np.nan
      if gt.velocity is not None and pred.velocity is not None and scene.gt_velocity_known[i]:
        velocity = float(np.linalg.norm(pred.velocity[j].astype(np.float64)
                                        - gt.velocity[i].astype(np.float64)))
      errors["AVE"].append(velocity)
      attribute = np.nan
      if gt.attribute is not None and gt.attribute[i] != NO_ATTRIBUTE \
          and pred.attribute is not None:
        attribute = float(gt.attribute[i] != pred.attribute[j])
      errors["AAE"].append(attribute)
    return is_tp, scores[order], num_gt, {m: np.array(v, np.float64)
                                          for m, v in errors.items()}

  def curves(self) -> dict:
    """{(class name, threshold): Curves} for every class and distance threshold."""
    out = {}
    for label, name in enumerate(self.class_names):
      for dist_th in self.config.dist_ths:
        is_tp, scores, num_gt, errors = self._match(label, dist_th)
        out[name, dist_th] = curves_from_matches(is_tp, scores, num_gt, errors)
    return out

  def result(self) -> dict:
    """The metrics of the scenes added so far.

    Returns:
      {"classes": {class: {"AP@0.5", "AP@1.0", "AP@2.0", "AP@4.0", "AP" (their mean),
        "ATE", "ASE", "AOE", "AVE", "AAE" (NaN = N/A), "num_gt", "num_pred" (after the
        range / point filters)}}, "mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE",
        "tp_scores" {metric: max(0, 1 - mTP), 0 for NaN}, "NDS", "num_scenes"}.
    """
    cfg = self.config
    curves = self.curves()
    has = {"AVE": any(s.gt.velocity is not None and s.pred.velocity is not None
                      for s in self._scenes),
           "AAE": any(s.gt.attribute is not None and s.pred.attribute is not None
                      for s in self._scenes)}
    classes = {}
    for label, name in enumerate(self.class_names):
      row = {}
      for dist_th in cfg.dist_ths:
        row[f"AP@{dist_th}"] = average_precision(curves[name, dist_th], cfg.min_recall,
                                                 cfg.min_precision)
      row["AP"] = float(np.mean([row[f"AP@{t}"] for t in cfg.dist_ths]))
      for metric in TP_METRICS:
        if metric in NOT_APPLICABLE.get(name, ()) or not has.get(metric, True):
          row[metric] = float("nan")
        else:
          row[metric] = tp_error(curves[name, cfg.dist_th_tp], cfg.min_recall, metric)
      row["num_gt"] = int(sum((s.gt.label == label).sum() for s in self._scenes))
      row["num_pred"] = int(sum((s.pred.label == label).sum() for s in self._scenes))
      classes[name] = row
    result = {"classes": classes,
              "mAP": float(np.mean([row["AP"] for row in classes.values()]))}
    tp_scores = {}
    for metric in TP_METRICS:
      values = np.array([row[metric] for row in classes.values()], np.float64)
      mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
      result["m" + metric] = mean
      # The devkit's max(0.0, 1 - nan) is 0.0: an N/A metric scores 0.
      tp_scores[metric] = 0.0 if np.isnan(mean) else max(0.0, 1.0 - mean)
    result["tp_scores"] = tp_scores
    result["NDS"] = (cfg.mean_ap_weight * result["mAP"] + sum(tp_scores.values())) / (
        cfg.mean_ap_weight + len(TP_METRICS))
    result["num_scenes"] = len(self._scenes)
    return result


def read_predictions(path: str, num_classes: int = len(DETECTION_CLASSES)
                     ) -> tuple[Boxes, np.ndarray]:
  """(Boxes [P], scores float64 [P]) from a saved `<scene>.npz` (module docstring).

  Raises:
    FileNotFoundError / KeyError / BoxError: naming `path` and the missing or bad array.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing prediction file (one <scene>.npz per scene).")
  with np.load(path) as arrays:
    missing = [PRED_FILES[k] for k in ("center", "size", "yaw", "label", "score")
               if PRED_FILES[k] not in arrays]
    if missing:
      raise KeyError(f"{path}: missing array(s) {missing} (has {sorted(arrays.files)}); "
                     "see pointins_jax.metrics.detection for the prediction format.")
    values = {k: arrays[key] if key in arrays else None for k, key in PRED_FILES.items()}
  scores = values.pop("score")
  boxes = Boxes(**values).validate(path, num_classes)
  scores = _check_per_box(scores, len(boxes), path, PRED_FILES["score"], np.number)
  return boxes, scores.astype(np.float64)


def nuscenes_detection_metrics(gt: Sequence[Boxes], pred: Sequence[Boxes],
                               scores: Sequence[np.ndarray], *,
                               num_points: Optional[Sequence[np.ndarray]] = None,
                               velocity_known: Optional[Sequence[np.ndarray]] = None,
                               ego_distance: Optional[Sequence[np.ndarray]] = None,
                               origin: Sequence[float] = (0.0, 0.0, 0.0),
                               config: DetectionConfig = DetectionConfig(),
                               class_names: Sequence[str] = DETECTION_CLASSES) -> dict:
  """The metrics of a split given scene by scene (see `DetectionEvaluator.add_scene`).

  Args:
    gt, pred, scores: per scene (same length S): ground-truth Boxes [G_s], predicted Boxes
      [P_s] and their scores [P_s].
    num_points, velocity_known, ego_distance: None or per scene per-GT-box arrays.
    origin: the ego position (m) in every scene's frame, or [S, 3] one per scene.
  Returns:
    `DetectionEvaluator.result()`.
  """
  if not len(gt) == len(pred) == len(scores):
    raise ValueError(f"gt, pred and scores must list the same scenes, got {len(gt)}, "
                     f"{len(pred)} and {len(scores)}.")
  origin = np.asarray(origin, np.float64)
  origins = origin if origin.ndim == 2 else np.broadcast_to(origin, (len(gt),) + origin.shape)
  if origins.shape[0] != len(gt):
    raise ValueError(f"origin must be (3,) or ({len(gt)}, 3), got {origin.shape}.")
  evaluator = DetectionEvaluator(config, class_names)
  for s in range(len(gt)):
    def extra(values):
      return None if values is None else values[s]
    evaluator.add_scene(gt[s], pred[s], scores[s], num_points=extra(num_points),
                        velocity_known=extra(velocity_known),
                        ego_distance=extra(ego_distance), origin=origins[s],
                        name=f"scene {s}")
  return evaluator.result()
