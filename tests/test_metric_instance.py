"""Tests of the ScanNet-protocol instance AP against a literal transcription of the official
script and against hand-worked cases.

Production shapes: ScanNet val scenes have N ~ 1e5 points, M ~ 100 masks, 312 scenes; here
N <= 600 and min_region_size is scaled down where noted.
"""
import itertools

import numpy as np
import pytest

from pointins_jax.metrics import instance


# ---------------------------------------------------------------------------------------------
# Reference: literal transcription of Pointcept's InsSegEvaluator (associate_instances,
# evaluate_matches incl. compute_averages), itself a port of ScanNet's
# evaluate_semantic_instance.py. Only the trainer/config plumbing is replaced by arguments and
# uuid4() by a counter; the logic is kept line for line on its own dict format.
# ---------------------------------------------------------------------------------------------
class _Reference:

  def __init__(self, names, segment_ignore_index, min_region_sizes=100):
    self.names = names
    self.num_classes = len(names)
    self.segment_ignore_index = segment_ignore_index
    self.instance_ignore_index = -1
    self.valid_class_names = [names[i] for i in range(len(names))
                              if i not in segment_ignore_index]
    self.overlaps = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
    self.min_region_sizes = min_region_sizes
    self.distance_threshes = float("inf")
    self.distance_confs = -float("inf")
    self._uuid = itertools.count()

  def associate_instances(self, pred, segment, instance):
    void_mask = np.isin(segment, self.segment_ignore_index)  # np.in1d: gone in numpy 2
    gt_instances = dict()
    for i in range(self.num_classes):
      if i not in self.segment_ignore_index:
        gt_instances[self.names[i]] = []
    instance_ids, idx, counts = np.unique(instance, return_index=True, return_counts=True)
    segment_ids = segment[idx]
    for i in range(len(instance_ids)):
      if instance_ids[i] == self.instance_ignore_index:
        continue
      if segment_ids[i] in self.segment_ignore_index:
        continue
      gt_inst = dict()
      gt_inst["instance_id"] = instance_ids[i]
      gt_inst["segment_id"] = segment_ids[i]
      gt_inst["dist_conf"] = 0.0
      gt_inst["med_dist"] = -1.0
      gt_inst["vert_count"] = counts[i]
      gt_inst["matched_pred"] = []
      gt_instances[self.names[segment_ids[i]]].append(gt_inst)
    pred_instances = dict()
    for i in range(self.num_classes):
      if i not in self.segment_ignore_index:
        pred_instances[self.names[i]] = []
    instance_id = 0
    for i in range(len(pred["pred_classes"])):
      if pred["pred_classes"][i] in self.segment_ignore_index:
        continue
      pred_inst = dict()
      pred_inst["uuid"] = next(self._uuid)
      pred_inst["instance_id"] = instance_id
      pred_inst["segment_id"] = pred["pred_classes"][i]
      pred_inst["confidence"] = pred["pred_scores"][i]
      pred_inst["mask"] = np.not_equal(pred["pred_masks"][i], 0)
      pred_inst["vert_count"] = np.count_nonzero(pred_inst["mask"])
      pred_inst["void_intersection"] = np.count_nonzero(
          np.logical_and(void_mask, pred_inst["mask"]))
      if pred_inst["vert_count"] < self.min_region_sizes:
        continue
      segment_name = self.names[pred_inst["segment_id"]]
      matched_gt = []
      for gt_idx, gt_inst in enumerate(gt_instances[segment_name]):
        intersection = np.count_nonzero(
            np.logical_and(instance == gt_inst["instance_id"], pred_inst["mask"]))
        if intersection > 0:
          gt_inst_ = gt_inst.copy()
          pred_inst_ = pred_inst.copy()
          gt_inst_["intersection"] = intersection
          pred_inst_["intersection"] = intersection
          matched_gt.append(gt_inst_)
          gt_inst["matched_pred"].append(pred_inst_)
      pred_inst["matched_gt"] = matched_gt
      pred_instances[segment_name].append(pred_inst)
      instance_id += 1
    return gt_instances, pred_instances

  def evaluate_matches(self, scenes):
    overlaps = self.overlaps
    min_region_sizes = [self.min_region_sizes]
    dist_threshes = [self.distance_threshes]
    dist_confs = [self.distance_confs]
    ap_table = np.zeros((len(dist_threshes), len(self.valid_class_names), len(overlaps)), float)
    for di, (min_region_size, distance_thresh, distance_conf) in enumerate(
        zip(min_region_sizes, dist_threshes, dist_confs)):
      for oi, overlap_th in enumerate(overlaps):
        pred_visited = {}
        for scene in scenes:
          for _ in scene["pred"]:
            for label_name in self.valid_class_names:
              for p in scene["pred"][label_name]:
                if "uuid" in p:
                  pred_visited[p["uuid"]] = False
        for li, label_name in enumerate(self.valid_class_names):
          y_true = np.empty(0)
          y_score = np.empty(0)
          hard_false_negatives = 0
          has_gt = False
          has_pred = False
          for scene in scenes:
            pred_instances = scene["pred"][label_name]
            gt_instances = scene["gt"][label_name]
            gt_instances = [gt for gt in gt_instances
                            if gt["vert_count"] >= min_region_size
                            and gt["med_dist"] <= distance_thresh
                            and gt["dist_conf"] >= distance_conf]
            if gt_instances:
              has_gt = True
            if pred_instances:
              has_pred = True
            cur_true = np.ones(len(gt_instances))
            cur_score = np.ones(len(gt_instances)) * (-float("inf"))
            cur_match = np.zeros(len(gt_instances), dtype=bool)
            for gti, gt in enumerate(gt_instances):
              found_match = False
              for pred in gt["matched_pred"]:
                if pred_visited[pred["uuid"]]:
                  continue
                overlap = float(pred["intersection"]) / (
                    gt["vert_count"] + pred["vert_count"] - pred["intersection"])
                if overlap > overlap_th:
                  confidence = pred["confidence"]
                  if cur_match[gti]:
                    max_score = max(cur_score[gti], confidence)
                    min_score = min(cur_score[gti], confidence)
                    cur_score[gti] = max_score
                    cur_true = np.append(cur_true, 0)
                    cur_score = np.append(cur_score, min_score)
                    cur_match = np.append(cur_match, True)
                  else:
                    found_match = True
                    cur_match[gti] = True
                    cur_score[gti] = confidence
                    pred_visited[pred["uuid"]] = True
              if not found_match:
                hard_false_negatives += 1
            cur_true = cur_true[cur_match]
            cur_score = cur_score[cur_match]
            for pred in pred_instances:
              found_gt = False
              for gt in pred["matched_gt"]:
                overlap = float(gt["intersection"]) / (
                    gt["vert_count"] + pred["vert_count"] - gt["intersection"])
                if overlap > overlap_th:
                  found_gt = True
                  break
              if not found_gt:
                num_ignore = pred["void_intersection"]
                for gt in pred["matched_gt"]:
                  if gt["segment_id"] in self.segment_ignore_index:
                    num_ignore += gt["intersection"]
                  if (gt["vert_count"] < min_region_size
                      or gt["med_dist"] > distance_thresh
                      or gt["dist_conf"] < distance_conf):
                    num_ignore += gt["intersection"]
                proportion_ignore = float(num_ignore) / pred["vert_count"]
                if proportion_ignore <= overlap_th:
                  cur_true = np.append(cur_true, 0)
                  confidence = pred["confidence"]
                  cur_score = np.append(cur_score, confidence)
            y_true = np.append(y_true, cur_true)
            y_score = np.append(y_score, cur_score)
          if has_gt and has_pred:
            score_arg_sort = np.argsort(y_score)
            y_score_sorted = y_score[score_arg_sort]
            y_true_sorted = y_true[score_arg_sort]
            y_true_sorted_cumsum = np.cumsum(y_true_sorted)
            (thresholds, unique_indices) = np.unique(y_score_sorted, return_index=True)
            num_prec_recall = len(unique_indices) + 1
            num_examples = len(y_score_sorted)
            num_true_examples = (y_true_sorted_cumsum[-1]
                                 if len(y_true_sorted_cumsum) > 0 else 0)
            precision = np.zeros(num_prec_recall)
            recall = np.zeros(num_prec_recall)
            y_true_sorted_cumsum = np.append(y_true_sorted_cumsum, 0)
            for idx_res, idx_scores in enumerate(unique_indices):
              cumsum = y_true_sorted_cumsum[idx_scores - 1]
              tp = num_true_examples - cumsum
              fp = num_examples - idx_scores - tp
              fn = cumsum + hard_false_negatives
              p = float(tp) / (tp + fp)
              r = float(tp) / (tp + fn)
              precision[idx_res] = p
              recall[idx_res] = r
            precision[-1] = 1.0
            recall[-1] = 0.0
            recall_for_conv = np.copy(recall)
            recall_for_conv = np.append(recall_for_conv[0], recall_for_conv)
            recall_for_conv = np.append(recall_for_conv, 0.0)
            stepWidths = np.convolve(recall_for_conv, [-0.5, 0, 0.5], "valid")  # noqa: N806
            ap_current = np.dot(precision, stepWidths)
          elif has_gt:
            ap_current = 0.0
          else:
            ap_current = float("nan")
          ap_table[di, li, oi] = ap_current
    d_inf = 0
    o50 = np.where(np.isclose(self.overlaps, 0.5))
    o25 = np.where(np.isclose(self.overlaps, 0.25))
    oAllBut25 = np.where(np.logical_not(np.isclose(self.overlaps, 0.25)))  # noqa: N806
    ap_scores = dict()
    ap_scores["all_ap"] = np.nanmean(ap_table[d_inf, :, oAllBut25])
    ap_scores["all_ap_50%"] = np.nanmean(ap_table[d_inf, :, o50])
    ap_scores["all_ap_25%"] = np.nanmean(ap_table[d_inf, :, o25])
    ap_scores["classes"] = {}
    for li, label_name in enumerate(self.valid_class_names):
      ap_scores["classes"][label_name] = {}
      ap_scores["classes"][label_name]["ap"] = np.average(ap_table[d_inf, li, oAllBut25])
      ap_scores["classes"][label_name]["ap50%"] = np.average(ap_table[d_inf, li, o50])
      ap_scores["classes"][label_name]["ap25%"] = np.average(ap_table[d_inf, li, o25])
    return ap_scores


def _reference_scores(scenes, names, ignore_classes, min_region_size):
  ref = _Reference(names, (-1,) + tuple(ignore_classes), min_region_size)
  matches = []
  for segment, inst, masks, classes, scores in scenes:
    gt, pred = ref.associate_instances(
        dict(pred_classes=classes, pred_scores=scores, pred_masks=masks), segment, inst)
    matches.append(dict(gt=gt, pred=pred))
  return ref.evaluate_matches(matches)


def _random_scene(rng, num_points, num_classes, min_size):
  """GT instances as contiguous runs; predictions that perturb, merge, split and duplicate
  them, plus noise masks, with tied scores on purpose."""
  segment = rng.integers(-1, num_classes, num_points)
  inst = np.full(num_points, -1)
  start, gid = 0, 0
  while start < num_points:
    length = int(rng.integers(min_size // 3, 3 * min_size))
    label = rng.integers(-1, num_classes)
    if rng.random() < 0.8:
      inst[start:start + length] = gid
      segment[start:start + length] = label
      gid += 1
    start += length
  masks, classes = [], []
  for g in range(gid):
    where = np.flatnonzero(inst == g)
    cls = segment[where[0]] if rng.random() < 0.85 else rng.integers(0, num_classes)
    for _ in range(rng.integers(0, 3)):  # 0..2 predictions per GT (duplicates)
      lo = where[0] + rng.integers(-min_size // 2, min_size // 2)
      hi = where[-1] + rng.integers(-min_size // 2, min_size // 2)
      mask = np.zeros(num_points, bool)
      mask[max(lo, 0):max(hi, 0)] = True
      masks.append(mask)
      classes.append(max(cls, 0))
  for _ in range(rng.integers(0, 4)):  # noise masks (may straddle GT instances / void)
    mask = rng.random(num_points) < rng.uniform(0.05, 0.6)
    masks.append(mask)
    classes.append(rng.integers(0, num_classes))
  masks = np.array(masks, bool).reshape(-1, num_points)
  scores = np.round(rng.random(len(masks)), 1)  # one decimal: ties happen
  return segment, inst, masks, np.array(classes, np.int64), scores


@pytest.mark.parametrize("seed", range(8))
def test_matches_official_script_on_random_scenes(seed):
  rng = np.random.default_rng(seed)
  num_classes, min_size = 5, 20  # ScanNet: 20 classes, min 100 points
  ignore = (0,) if seed % 2 else ()
  names = [f"c{i}" for i in range(num_classes)]
  scenes = [_random_scene(rng, int(rng.integers(200, 600)), num_classes, min_size)
            for _ in range(3)]
  expected = _reference_scores(scenes, names, ignore, min_size)
  evaluator = instance.InstanceAPEvaluator(num_classes, ignore, names, min_size)
  for scene in scenes:
    evaluator.add_scene(*scene)
  got = evaluator.result()
  np.testing.assert_allclose(got["mAP"], expected["all_ap"], atol=1e-4, equal_nan=True)
  np.testing.assert_allclose(got["AP50"], expected["all_ap_50%"], atol=1e-4, equal_nan=True)
  np.testing.assert_allclose(got["AP25"], expected["all_ap_25%"], atol=1e-4, equal_nan=True)
  for name in expected["classes"]:
    ref, ours = expected["classes"][name], got["classes"][name]
    np.testing.assert_allclose([ours["AP"], ours["AP50"], ours["AP25"]],
                               [ref["ap"], ref["ap50%"], ref["ap25%"]], atol=1e-4,
                               equal_nan=True, err_msg=name)


def _one_class(sizes):
  """Class-0 GT instances of the given sizes laid out contiguously."""
  inst = np.repeat(np.arange(len(sizes)), sizes)
  return np.zeros(len(inst), np.int64), inst


def _mask(n, lo, hi):
  mask = np.zeros(n, bool)
  mask[lo:hi] = True
  return mask


def test_perfect_prediction_is_one():
  segment, inst = _one_class([150, 120, 200])
  masks, ids = instance.masks_from_instance(inst)
  result = instance.instance_ap(segment, inst, masks, np.zeros(len(ids), int), np.ones(3),
                                num_classes=2)
  assert result["mAP"] == result["AP50"] == result["AP25"] == 1.0
  assert np.isnan(result["classes"]["1"]["AP"])  # class 1 has no GT: NaN, skipped by the mean


def test_empty_prediction_is_zero():
  segment, inst = _one_class([150, 120])
  result = instance.instance_ap(segment, inst, np.zeros((0, 270), bool), [], [],
                                num_classes=1)
  assert result["mAP"] == result["AP50"] == result["AP25"] == 0.0


def test_duplicate_detection_hand_worked():
  # GT A = points 0..199, GT B = 200..399 (class 0). Predictions:
  #   p0 = A exactly, score 0.9 -> TP;  p1 = A exactly, score 0.8 -> duplicate -> FP (0.8);
  #   p2 = points 150..299 (150 points: 50 of A, IoU 1/6; 100 of B, IoU 100/250 = 0.4),
  #        score 0.7.
  # At t >= 0.5: B missed; detections by score: 0.9 TP, 0.8 FP, 0.7 FP (p2 overlaps no GT
  # above t, nothing ignored). Groups: >=0.9: P=1, R=1/2; >=0.8: P=1/2, R=1/2; >=0.7: P=1/3,
  # R=1/2. Curve (sorted low->high score): recall [1/2, 1/2, 1/2, 0], precision
  # [1/3, 1/2, 1, 1]; step widths (r[i-1] - r[i+1]) / 2 over the recalls padded as
  # [1/2, 1/2, 1/2, 1/2, 0, 0]: [0, 0, 1/4, 1/4] -> AP = 1 * 1/4 + 1 * 1/4 = 1/2.
  # At t = 0.25: p2 matches B (IoU 0.4 > 0.25): 0.9 TP, 0.8 FP, 0.7 TP. Groups: >=0.9 P=1,
  # R=1/2; >=0.8 P=1/2, R=1/2; >=0.7 P=2/3, R=1. Recall [1, 1/2, 1/2, 0], precision
  # [2/3, 1/2, 1, 1]; widths [(1-1/2)/2, (1-1/2)/2, (1/2-0)/2, (1/2-0)/2] = [1/4,1/4,1/4,1/4]
  # -> AP25 = (2/3 + 1/2 + 1 + 1) / 4 = 19/24.
  segment, inst = _one_class([200, 200])
  masks = np.stack([_mask(400, 0, 200), _mask(400, 0, 200), _mask(400, 150, 300)])
  result = instance.instance_ap(segment, inst, masks, [0, 0, 0], [0.9, 0.8, 0.7],
                                num_classes=1)
  assert result["AP50"] == pytest.approx(0.5)
  assert result["mAP"] == pytest.approx(0.5)
  assert result["AP25"] == pytest.approx(19 / 24)


def test_void_and_small_instances_are_ignored_not_false_positives():
  # GT: A = 0..149 (150 points, class 0), S = 150..199 (50 points, below the 100 minimum),
  # points 200..399 unlabelled (-1). Predictions (class 0):
  #   p0 = A, score 0.5 -> TP.
  #   p1 = 150..349: 50 on S + 150 on void = 200 ignored of 200 -> ignored at every t.
  #   p2 = 100..299: 50 on A (IoU 50/300 = 1/6), 50 on S, 100 void -> 150/200 = 0.75 ignored:
  #       ignored for t < 0.75 (0.25 .. 0.70), a false positive for t = 0.75 .. 0.90.
  # p2's score 0.9 is above p0's, so where it is a FP: P = [1/2 (>=0.5), 0 (>=0.9), 1],
  # R = [1, 0, 0] -> widths [(1-0)/2, (1-0)/2, 0] -> AP = 1/2 * 1/2 + 0 = 1/4.
  # mAP = (5 thresholds 0.5..0.7 at 1 + 4 thresholds 0.75..0.9 at 1/4) / 9 = 6/9.
  segment = np.concatenate([np.zeros(200, int), np.full(200, -1)])
  inst = np.concatenate([np.zeros(150, int), np.ones(50, int), np.full(200, -1)])
  masks = np.stack([_mask(400, 0, 150), _mask(400, 150, 350), _mask(400, 100, 300)])
  result = instance.instance_ap(segment, inst, masks, [0, 0, 0], [0.5, 0.1, 0.9],
                                num_classes=1)
  assert result["AP50"] == 1.0 and result["AP25"] == 1.0
  assert result["mAP"] == pytest.approx(6 / 9)


def test_small_predictions_and_ignored_classes_are_dropped():
  # A 99-point mask (below the minimum) and a mask of an ignored class are not detections;
  # the class with GT then has no prediction -> AP 0; the ignored class is not reported.
  segment, inst = _one_class([150])
  segment = segment + 1  # GT class 1; class 0 ignored
  masks = np.stack([_mask(150, 0, 99), _mask(150, 0, 150)])
  result = instance.instance_ap(segment, inst, masks, [1, 0], [1.0, 1.0], num_classes=2,
                                ignore_classes=(0,), class_names=["wall", "chair"])
  assert list(result["classes"]) == ["chair"]
  assert result["mAP"] == 0.0


def test_wrong_class_is_a_false_positive_and_a_miss():
  segment, inst = _one_class([150])
  result = instance.instance_ap(segment, inst, _mask(150, 0, 150)[None], [1], [1.0],
                                num_classes=2)
  assert result["classes"]["0"]["AP"] == 0.0
  assert np.isnan(result["classes"]["1"]["AP"])  # predictions but no GT: NaN
  assert result["mAP"] == 0.0


def test_average_precision_closed_form():
  # Two TPs at distinct scores, no misses -> the curve is (1, 1): AP 1.
  assert instance.average_precision(np.array([0.2, 0.7]), np.array([1.0, 1.0]), 0) == 1.0
  # One TP, one miss -> recall 1/2 at precision 1: AP 1/2.
  assert instance.average_precision(np.array([0.3]), np.array([1.0]), 1) == 0.5


@pytest.mark.parametrize("bad, message", [
    (dict(masks=np.ones((1, 10), bool)), "masks must have shape"),
    (dict(classes=[7]), "out of range"),
    (dict(scores=[np.nan]), "finite"),
    (dict(gt_segment=np.full(150, 3)), "out of range"),
])
def test_bad_input_raises_clear_error(bad, message):
  segment, inst = _one_class([150])
  args = dict(gt_segment=segment, masks=np.ones((1, 150), bool), classes=[0], scores=[1.0])
  args.update(bad)
  with pytest.raises(ValueError, match=message):
    instance.instance_ap(args["gt_segment"], inst, args["masks"], args["classes"],
                         args["scores"], num_classes=2)


def test_prediction_is_taken_by_one_gt_only():
  # GT A = 0..199, B = 200..399; one prediction 100..299 has IoU 100/300 = 1/3 with each.
  # At t = 0.25, A (lower id, visited first) takes it; B may not reuse it -> 1 TP, 1 miss:
  # recall 1/2 at precision 1 -> AP25 = 1/2. At t >= 0.5 it is a plain FP -> AP 0.
  segment, inst = _one_class([200, 200])
  result = instance.instance_ap(segment, inst, _mask(400, 100, 300)[None], [0], [1.0],
                                num_classes=1)
  assert result["AP25"] == 0.5
  assert result["AP50"] == 0.0 and result["mAP"] == 0.0
