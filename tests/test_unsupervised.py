"""Tests of class-agnostic Hungarian AP and the HDBSCAN / Felzenszwalb baselines.

Production shapes: ScanNet val scans, N ~ 1e5 points, min_size 100; here N <= 600.
"""
import itertools

import numpy as np
import pytest

from pointins_jax.metrics import baselines, unsupervised


def _brute_force_assignment(iou):
  """Best one-to-one assignment by enumerating all permutations (tiny matrices only)."""
  num_gt, num_pred = iou.shape
  best, best_value = None, -1.0
  for perm in itertools.permutations(range(max(num_gt, num_pred)), num_gt):
    value = sum(iou[g, p] for g, p in enumerate(perm) if p < num_pred)
    if value > best_value + 1e-12:
      best, best_value = perm, value
  return best_value, best


def test_hungarian_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n = 60
    gt = rng.integers(-1, 4, n)
    pred = rng.integers(-1, 5, n)
    match = unsupervised.hungarian_match(gt, pred, min_size=1)
    iou = match["iou"]
    # IoU against a direct count.
    for g, gid in enumerate(match["gt_ids"]):
      for p, pid in enumerate(match["pred_ids"]):
        inter = np.sum((gt == gid) & (pred == pid))
        assert iou[g, p] == pytest.approx(inter / np.sum((gt == gid) | (pred == pid)))
    best_value, _ = _brute_force_assignment(iou)
    assigned = match["assigned_gt"]
    value = sum(iou[g, p] for p, g in enumerate(assigned) if g >= 0)
    assert value == pytest.approx(best_value)
    assert len(set(assigned[assigned >= 0])) == np.sum(assigned >= 0)  # one-to-one


def test_perfect_empty_and_hand_worked_ap():
  gt = np.repeat([0, 1, 2, -1], 120)
  perfect = unsupervised.unsupervised_instance_ap(gt, gt)
  assert perfect["mAP"] == perfect["AP50"] == perfect["AP25"] == 1.0
  empty = unsupervised.unsupervised_instance_ap(gt, np.full_like(gt, -1))
  assert empty["mAP"] == 0.0 and empty["AP25"] == 0.0
  # Relabelled ids do not matter (class-agnostic, Hungarian).
  assert unsupervised.unsupervised_instance_ap(gt, np.where(gt >= 0, 7 - gt, -1))["mAP"] == 1.0
  # Hand-worked: pred 0 = GT 0 + GT 1 merged (240 points; IoU 1/2 with either), pred 1 = GT 2.
  # Hungarian: pred 0 -> GT 0 or GT 1 (IoU 0.5), pred 1 -> GT 2 (IoU 1). Scores = sizes
  # (240, 120). At t < 0.5 (0.25): two TPs, one GT missed -> detections 240 TP, 120 TP,
  # recall 2/3 at precision 1 -> AP 2/3. At t >= 0.5 (IoU 0.5 is not > 0.5): 240 FP,
  # 120 TP, one TP of three GT: groups >=120: P 1/2, R 1/3; >=240: P 0, R 0 -> recalls
  # [1/3, 0, 0] padded [1/3, 1/3, 0, 0, 0]: widths [1/6, 1/6, 0] -> AP = 1/2 * 1/6 + 0 = 1/12.
  merged = np.where(gt == 1, 0, gt)
  result = unsupervised.unsupervised_instance_ap(gt, merged)
  assert result["AP25"] == pytest.approx(2 / 3)
  assert result["AP50"] == pytest.approx(1 / 12)
  assert result["mAP"] == pytest.approx(1 / 12)


def test_void_predictions_and_small_instances():
  # GT: one 150-point instance, a 50-point instance (under min_size 100: void) and 200
  # unlabelled points. A prediction covering only unlabelled points is ignored by default
  # and a false positive with ignore_void=False.
  gt = np.concatenate([np.zeros(150, int), np.ones(50, int), np.full(200, -1)])
  pred = np.concatenate([np.zeros(150, int), np.full(50, -1), np.full(200, 5)])
  assert unsupervised.unsupervised_instance_ap(gt, pred)["mAP"] == 1.0
  strict = unsupervised.unsupervised_instance_ap(gt, pred, ignore_void=False)
  # Scores = sizes: the void prediction (200 points) outranks the TP (150): AP 1/2 as in the
  # ScanNet duplicate case (P [1/2, 0, 1], R [1, 0, 0], widths [1/2, 1/2, 0]) = 1/4.
  assert strict["AP50"] == pytest.approx(0.25)
  # Explicit scores reverse the ranking: the TP first -> AP 1.
  ranked = unsupervised.unsupervised_instance_ap(gt, pred, scores=[1.0, 0.1], ignore_void=False)
  assert ranked["AP50"] == 1.0


def test_accumulates_over_scenes_and_rejects_bad_scores():
  gt = np.repeat([0, 1], 120)
  evaluator = unsupervised.UnsupervisedAPEvaluator()
  evaluator.add_scene(gt, gt)
  evaluator.add_scene(gt, np.full_like(gt, -1))  # 2 of 4 GT found, no FP -> AP 1/2
  assert evaluator.result()["AP50"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match="scores"):
    evaluator.add_scene(gt, gt, scores=[1.0])
  with pytest.raises(ValueError, match="length 3, expected 240"):
    evaluator.add_scene(gt, gt[:3])


def _blobs(rng, centres, n_per_blob, sigma):
  coord = np.concatenate([c + sigma * rng.standard_normal((n_per_blob, 3)) for c in centres])
  return coord, np.repeat(np.arange(len(centres)), n_per_blob)


def _same_partition(labels, truth):
  """Whether labels and truth induce the same partition (up to renaming)."""
  pairs = np.unique(np.stack([labels, truth]), axis=1)
  return (len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1])))


def test_felzenszwalb_two_separated_clusters():
  rng = np.random.default_rng(0)
  coord, truth = _blobs(rng, [np.zeros(3), np.array([5.0, 0, 0])], 150, 0.2)
  labels = baselines.felzenszwalb_instances(coord, k_neighbors=8, scale=10.0, min_size=20)
  assert labels.dtype == np.int32
  assert _same_partition(labels, truth) and (labels >= 0).all()
  assert labels[0] == 0  # numbered by first point


def test_felzenszwalb_hand_worked_chain():
  # x = 0, 0.1, 0.2, 1.0, 1.1 on a line, 2-NN graph: edges 0.1 (x3), 0.2 (x2), 0.8, 0.9.
  # scale 0.5: {0, .1, .2} merge (0.1 <= 0.5, then 0.1 <= min(0.1 + 0.25, 0.5)); {1.0, 1.1}
  # merge; the 0.2 edges are inside; 0.8 > min(0.1 + 0.5/3, 0.1 + 0.25) -> two segments.
  # scale 0.05: 0.1 > 0.05, no merge -> five singletons. scale 5: everything merges.
  coord = np.zeros((5, 3))
  coord[:, 0] = [0, 0.1, 0.2, 1.0, 1.1]
  two = baselines.felzenszwalb_instances(coord, k_neighbors=2, scale=0.5, min_size=1)
  np.testing.assert_array_equal(two, [0, 0, 0, 1, 1])
  five = baselines.felzenszwalb_instances(coord, k_neighbors=2, scale=0.05, min_size=1)
  np.testing.assert_array_equal(five, [0, 1, 2, 3, 4])
  one = baselines.felzenszwalb_instances(coord, k_neighbors=2, scale=5.0, min_size=1)
  np.testing.assert_array_equal(one, [0, 0, 0, 0, 0])
  # min_size 3 merges the singletons at scale 0.05 along the cheapest edges into >= 3 groups
  # only where an edge exists; all five points end in components of >= 3 points.
  merged = baselines.felzenszwalb_instances(coord, k_neighbors=2, scale=0.05, min_size=3)
  assert (np.bincount(merged[merged >= 0]) >= 3).all() and (merged >= 0).all()


def test_hdbscan_recovers_blobs_and_is_deterministic():
  rng = np.random.default_rng(1)
  centres = [np.zeros(3), np.array([4.0, 0, 0]), np.array([0, 4.0, 0])]
  coord, truth = _blobs(rng, centres, 120, 0.15)
  labels = baselines.hdbscan_instances(coord, min_cluster_size=30)
  kept = labels >= 0
  assert kept.mean() > 0.9  # a few outliers may be noise (-1), never reassigned silently
  assert len(np.unique(labels[kept])) == 3 and _same_partition(labels[kept], truth[kept])
  np.testing.assert_array_equal(labels, baselines.hdbscan_instances(coord, min_cluster_size=30))


@pytest.mark.parametrize("coord", [np.zeros((0, 3)), np.zeros((4, 2)),
                                   np.array([[0.0, np.nan, 0.0]])])
def test_baselines_reject_bad_coordinates(coord):
  with pytest.raises(ValueError, match="coord"):
    baselines.felzenszwalb_instances(coord)
  with pytest.raises(ValueError, match="coord"):
    baselines.hdbscan_instances(coord)
