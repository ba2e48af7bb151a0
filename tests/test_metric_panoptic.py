"""Tests of the SemanticKITTI panoptic metrics against a literal transcription of the official
`PanopticEval` and against the worked example shipped with it.

Production shapes: SemanticKITTI val sweeps have N ~ 1.2e5 points, 4071 sweeps; here N <= 800.
"""
import numpy as np
import pytest

from pointins_jax.metrics import panoptic


class _ReferencePanopticEval:
  """Literal transcription of semantic-kitti-api `auxiliary/eval_np.py` `PanopticEval`
  (prints removed; `np.float` -> `float`, gone from numpy)."""

  def __init__(self, n_classes, ignore=None, offset=2**32, min_points=30):
    self.n_classes = n_classes
    self.ignore = np.array(ignore, dtype=np.int64)
    self.include = np.array([n for n in range(self.n_classes) if n not in self.ignore],
                            dtype=np.int64)
    self.px_iou_conf_matrix = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
    self.pan_tp = np.zeros(self.n_classes, dtype=np.int64)
    self.pan_iou = np.zeros(self.n_classes, dtype=np.double)
    self.pan_fp = np.zeros(self.n_classes, dtype=np.int64)
    self.pan_fn = np.zeros(self.n_classes, dtype=np.int64)
    self.offset = offset
    self.min_points = min_points
    self.eps = 1e-15

  def addBatchSemIoU(self, x_sem, y_sem):  # noqa: N802
    idxs = np.stack([x_sem, y_sem], axis=0)
    np.add.at(self.px_iou_conf_matrix, tuple(idxs), 1)

  def getSemIoUStats(self):  # noqa: N802
    conf = self.px_iou_conf_matrix.copy().astype(np.double)
    conf[:, self.ignore] = 0
    tp = conf.diagonal()
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    return tp, fp, fn

  def getSemIoU(self):  # noqa: N802
    tp, fp, fn = self.getSemIoUStats()
    intersection = tp
    union = tp + fp + fn
    union = np.maximum(union, self.eps)
    iou = intersection.astype(np.double) / union.astype(np.double)
    iou_mean = (intersection[self.include].astype(np.double)
                / union[self.include].astype(np.double)).mean()
    return iou_mean, iou

  def addBatchPanoptic(self, x_sem_row, x_inst_row, y_sem_row, y_inst_row):  # noqa: N802
    x_inst_row = x_inst_row + 1
    y_inst_row = y_inst_row + 1
    for cl in self.ignore:
      gt_not_in_excl_mask = y_sem_row != cl
      x_sem_row = x_sem_row[gt_not_in_excl_mask]
      y_sem_row = y_sem_row[gt_not_in_excl_mask]
      x_inst_row = x_inst_row[gt_not_in_excl_mask]
      y_inst_row = y_inst_row[gt_not_in_excl_mask]
    for cl in self.include:
      x_inst_in_cl_mask = x_sem_row == cl
      y_inst_in_cl_mask = y_sem_row == cl
      x_inst_in_cl = x_inst_row * x_inst_in_cl_mask.astype(np.int64)
      y_inst_in_cl = y_inst_row * y_inst_in_cl_mask.astype(np.int64)
      unique_pred, counts_pred = np.unique(x_inst_in_cl[x_inst_in_cl > 0], return_counts=True)
      id2idx_pred = {id: idx for idx, id in enumerate(unique_pred)}
      matched_pred = np.array([False] * unique_pred.shape[0])
      unique_gt, counts_gt = np.unique(y_inst_in_cl[y_inst_in_cl > 0], return_counts=True)
      id2idx_gt = {id: idx for idx, id in enumerate(unique_gt)}
      matched_gt = np.array([False] * unique_gt.shape[0])
      valid_combos = np.logical_and(x_inst_in_cl > 0, y_inst_in_cl > 0)
      offset_combo = x_inst_in_cl[valid_combos] + self.offset * y_inst_in_cl[valid_combos]
      unique_combo, counts_combo = np.unique(offset_combo, return_counts=True)
      gt_labels = unique_combo // self.offset
      pred_labels = unique_combo % self.offset
      gt_areas = np.array([counts_gt[id2idx_gt[id]] for id in gt_labels])
      pred_areas = np.array([counts_pred[id2idx_pred[id]] for id in pred_labels])
      intersections = counts_combo
      unions = gt_areas + pred_areas - intersections
      ious = intersections.astype(float) / unions.astype(float)
      tp_indexes = ious > 0.5
      self.pan_tp[cl] += np.sum(tp_indexes)
      self.pan_iou[cl] += np.sum(ious[tp_indexes])
      matched_gt[[id2idx_gt[id] for id in gt_labels[tp_indexes]]] = True
      matched_pred[[id2idx_pred[id] for id in pred_labels[tp_indexes]]] = True
      self.pan_fn[cl] += np.sum(np.logical_and(counts_gt >= self.min_points, matched_gt == False))  # noqa: E712,E501
      self.pan_fp[cl] += np.sum(np.logical_and(counts_pred >= self.min_points, matched_pred == False))  # noqa: E712,E501

  def getPQ(self):  # noqa: N802
    sq_all = self.pan_iou.astype(np.double) / np.maximum(self.pan_tp.astype(np.double), self.eps)
    rq_all = self.pan_tp.astype(np.double) / np.maximum(
        self.pan_tp.astype(np.double) + 0.5 * self.pan_fp.astype(np.double)
        + 0.5 * self.pan_fn.astype(np.double), self.eps)
    pq_all = sq_all * rq_all
    SQ = sq_all[self.include].mean()  # noqa: N806
    RQ = rq_all[self.include].mean()  # noqa: N806
    PQ = pq_all[self.include].mean()  # noqa: N806
    return PQ, SQ, RQ, pq_all, sq_all, rq_all

  def addBatch(self, x_sem, x_inst, y_sem, y_inst):  # noqa: N802
    self.addBatchSemIoU(x_sem, y_sem)
    self.addBatchPanoptic(x_sem, x_inst, y_sem, y_inst)


def _to_ours(sem, inst):
  """Official encoding (class 0 = unlabeled, instance 0 = none) -> ours (-1 unlabelled,
  instance -1 = none), id for id: stuff ids are kept, the official code counts them."""
  return sem - 1, inst - 1


def test_official_worked_example():
  # The example at the bottom of eval_np.py (from Kirillov et al.): classes ignore, grass, sky,
  # person, dog; min_points 1. Official printed totals: PQ 0.47916666666666663,
  # SQ 0.5520833333333333, RQ 0.6666666666666666, IoU 0.5476190476190476; person PQ
  # 0.5833333333333333 (SQ 0.875, RQ 2/3), grass / sky PQ 2/3, dog 0.
  sem_pred, inst_pred, sem_gt, inst_gt = [], [], [], []
  def add(sp, ip, sg, ig, n):
    sem_pred.extend([sp] * n)
    inst_pred.extend([ip] * n)
    sem_gt.extend([sg] * n)
    inst_gt.extend([ig] * n)
  add(0, 0, 0, 0, 50)                            # unlabeled
  add(1, 0, 1, 0, 40), add(2, 0, 1, 0, 10)       # grass: 40 right, 10 as sky
  add(2, 0, 2, 0, 40), add(1, 0, 2, 0, 10)       # sky: 40 right, 10 as grass
  add(3, 35, 4, 22, 50)                          # a dog predicted as a person
  add(3, 8, 3, 33, 150), add(3, 8, 3, 42, 50)    # persons: pred 8 covers gt 33 and 42
  add(3, 95, 3, 11, 100)                         # pred 95 = gt 11
  sem_pred, inst_pred, sem_gt, inst_gt = map(np.array, (sem_pred, inst_pred, sem_gt, inst_gt))
  # Ours: classes grass(0), sky(1) stuff; person(2), dog(3) things.
  gt_segment, gt_instance = _to_ours(sem_gt, inst_gt)
  pred_segment, pred_instance = _to_ours(sem_pred, inst_pred)
  result = panoptic.panoptic_quality(gt_segment, gt_instance, pred_segment, pred_instance,
                                     num_classes=4, thing_classes=[2, 3], min_points=1,
                                     class_names=["grass", "sky", "person", "dog"])
  assert result["PQ"] == pytest.approx(0.47916666666666663)
  assert result["SQ"] == pytest.approx(0.5520833333333333)
  assert result["RQ"] == pytest.approx(0.6666666666666666)
  assert result["mIoU"] == pytest.approx(0.5476190476190476)
  assert result["classes"]["person"]["PQ"] == pytest.approx(0.5833333333333333)
  assert result["classes"]["person"]["SQ"] == pytest.approx(0.875)
  assert result["classes"]["grass"]["PQ"] == pytest.approx(2 / 3)
  assert result["classes"]["dog"]["PQ"] == 0.0
  assert result["PQ_things"] == pytest.approx((0.5833333333333333 + 0) / 2)
  assert result["PQ_stuff"] == pytest.approx(2 / 3)
  # PQ-dagger: things' PQ and stuff IoU (grass and sky IoU 40 / 60 = 2/3).
  assert result["PQ_dagger"] == pytest.approx((0.5833333333333333 + 0 + 2 / 3 + 2 / 3) / 4)


@pytest.mark.parametrize("seed", range(6))
def test_matches_official_script_on_random_scans(seed):
  rng = np.random.default_rng(seed)
  num_classes = 6  # ours; official adds class 0 = unlabeled. SemanticKITTI: 19
  is_thing = np.array([True, True, True, False, False, False])
  min_points = 15  # SemanticKITTI: 50
  ours = panoptic.PanopticEvaluator(num_classes, np.flatnonzero(is_thing), None, min_points)
  ref = _ReferencePanopticEval(num_classes + 1, ignore=[0], min_points=min_points)
  for _ in range(3):
    n = int(rng.integers(300, 800))
    sem_gt = rng.integers(0, num_classes + 1, n)
    sem_gt = np.sort(sem_gt)  # class blocks, so instances are large enough to match
    inst_gt = np.where(is_thing[np.maximum(sem_gt - 1, 0)] & (sem_gt > 0),
                       np.arange(n) // rng.integers(10, 60), 0)
    # Predictions: GT with a fraction of points relabelled and re-instanced at random.
    noisy = rng.random(n) < rng.uniform(0.05, 0.5)
    sem_pred = np.where(noisy, rng.integers(0, num_classes + 1, n), sem_gt)
    # Noisy points keep random ids whatever their class: stuff predicted with thing ids.
    inst_pred = np.where(noisy, rng.integers(0, 4, n), inst_gt + (np.arange(n) % 7 == 0))
    if seed % 2:  # and GT stuff with several ids (official files store 0; others may not)
      stuff_gt = (sem_gt > 0) & ~is_thing[np.maximum(sem_gt - 1, 0)]
      inst_gt = np.where(stuff_gt, np.arange(n) // 97 % 3, inst_gt)
    ref.addBatch(sem_pred, inst_pred, sem_gt, inst_gt)
    gt_segment, gt_instance = _to_ours(sem_gt, inst_gt)
    pred_segment, pred_instance = _to_ours(sem_pred, inst_pred)
    ours.add_scene(gt_segment, gt_instance, pred_segment, pred_instance)
  pq, sq, rq, pq_all, sq_all, rq_all = ref.getPQ()
  miou, iou_all = ref.getSemIoU()
  got = ours.result()
  np.testing.assert_allclose([got["PQ"], got["SQ"], got["RQ"], got["mIoU"]], [pq, sq, rq, miou],
                             atol=1e-12)
  per_class = np.array([[v["PQ"], v["SQ"], v["RQ"], v["IoU"]] for v in got["classes"].values()])
  expected = np.stack([pq_all, sq_all, rq_all, iou_all], axis=1)[1:]
  np.testing.assert_allclose(per_class, expected, atol=1e-12)
  assert 0 < got["PQ"] < 1  # a non-trivial case


def test_stuff_with_several_ids_counts_as_the_official_evaluator():
  # One stuff class (building, 120 points) and nothing else; min_points 1.
  # GT ids: A = points 0..59, B = 60..119. Predicted ids: 1 = 0..49, 2 = 50..89, 3 = 90..119.
  # Official segments are (class, id) pairs, stuff too: IoU(A, 1) = 50/60 > 0.5 is the only
  # match (IoU(B, 2) = 30/70, IoU(B, 3) = 30/60 = 0.5 is not > 0.5); B is a false negative,
  # 2 and 3 false positives. SQ = 5/6, RQ = 1 / (1 + 2/2 + 1/2) = 0.4, PQ = 1/3.
  segment = np.zeros(120, int)
  gt_instance = np.repeat([0, 1], 60)
  pred_instance = np.repeat([0, 1, 2], [50, 40, 30])
  official = panoptic.panoptic_quality(segment, gt_instance, segment, pred_instance,
                                       num_classes=1, thing_classes=[], min_points=1)
  assert official["SQ"] == pytest.approx(5 / 6)
  assert official["RQ"] == pytest.approx(0.4)
  assert official["PQ"] == official["PQ_stuff"] == pytest.approx(1 / 3)
  assert official["mIoU"] == 1.0  # the semantics are perfect
  ref = _ReferencePanopticEval(2, ignore=[0], min_points=1)
  ref.addBatch(segment + 1, pred_instance + 1, segment + 1, gt_instance + 1)
  assert ref.getPQ()[0] == pytest.approx(1 / 3)
  # Two GT ids and three predicted ids with no match at all: PQ 0 officially.
  pred_instance = np.arange(120) % 3
  assert panoptic.panoptic_quality(segment, gt_instance, segment, pred_instance,
                                   num_classes=1, thing_classes=[])["PQ"] == 0.0
  # The Pointcept-style option merges each stuff class into one segment: PQ 1.
  merged = panoptic.panoptic_quality(segment, gt_instance, segment, pred_instance,
                                     num_classes=1, thing_classes=[], merge_stuff_ids=True)
  assert merged["PQ"] == 1.0


def test_perfect_and_empty_predictions():
  segment = np.repeat([0, 0, 1, -1], 60)
  instance = np.repeat([0, 1, -1, -1], 60)
  perfect = panoptic.panoptic_quality(segment, instance, segment, instance, num_classes=2,
                                      thing_classes=[0])
  assert perfect["PQ"] == perfect["SQ"] == perfect["RQ"] == perfect["mIoU"] == 1.0
  empty = panoptic.panoptic_quality(segment, instance, np.full(240, -1), np.full(240, -1),
                                    num_classes=2, thing_classes=[0])
  assert empty["PQ"] == empty["RQ"] == empty["mIoU"] == 0.0


def test_min_points_and_unlabelled_points():
  # GT: car 0 (100 points), car 1 (30 points, under min_points 50), 100 unlabelled points.
  # Prediction: car 0 right; car 1 predicted as class -1 (missed); the unlabelled points
  # predicted as car instance 7, which is removed with the GT-unlabelled points, so no false
  # positive. Car: TP 1 (IoU 1), FN 0 (car 1 is under min_points), FP 0 -> PQ 1.
  segment = np.concatenate([np.zeros(130, int), np.full(100, -1)])
  instance = np.concatenate([np.zeros(100, int), np.ones(30, int), np.full(100, -1)])
  pred_segment = np.concatenate([np.zeros(100, int), np.full(30, -1), np.zeros(100, int)])
  pred_instance = np.concatenate([np.zeros(100, int), np.full(30, -1), np.full(100, 7)])
  result = panoptic.panoptic_quality(segment, instance, pred_segment, pred_instance,
                                     num_classes=1, thing_classes=[0])
  assert result["PQ"] == 1.0
  # ...but the 30 missed car points still lower the IoU: 100 / 130.
  assert result["mIoU"] == pytest.approx(100 / 130)
  # With min_points 10 the small car is a false negative: RQ = 1 / (1 + 0.5).
  strict = panoptic.panoptic_quality(segment, instance, pred_segment, pred_instance,
                                     num_classes=1, thing_classes=[0], min_points=10)
  assert strict["RQ"] == pytest.approx(2 / 3)


def test_bad_input_raises_clear_error():
  segment = np.zeros(10, int)
  with pytest.raises(ValueError, match="length 9, expected 10"):
    panoptic.panoptic_quality(segment, segment, segment[:9], segment[:9], num_classes=1,
                              thing_classes=[0])
  with pytest.raises(ValueError, match="out of range"):
    panoptic.panoptic_quality(segment, segment, segment + 1, segment, num_classes=1,
                              thing_classes=[0])
  with pytest.raises(ValueError, match="thing_classes"):
    panoptic.PanopticEvaluator(2, thing_classes=[2])
