"""Tests of `experiments.evaluate` on a tiny Pointcept-layout folder (2 scenes, N = 750;
production: 312 ScanNet val scenes of ~1e5 points)."""
import json
import os

import numpy as np
import pytest

from experiments import evaluate
from pointins_jax import metrics

# 3 classes: 0 is stuff ("floor"), 1 and 2 are things.
PROTOCOL = evaluate.Protocol(class_names=("floor", "chair", "table"), thing_classes=(1, 2),
                             instance_classes=(1, 2))


def _write_gt(root, rng):
  scenes = {}
  for name in ("scene_a", "scene_b"):
    segment = np.repeat([0, 1, 1, 2, -1], 150).astype(np.int32)
    inst = np.repeat([-1, 0, 1, 2, -1], 150).astype(np.int32)
    os.makedirs(os.path.join(root, name))
    np.save(os.path.join(root, name, "segment.npy"), segment)
    np.save(os.path.join(root, name, "instance.npy"), inst)
    scenes[name] = (segment, inst)
  return scenes


def test_all_tasks_agree_with_the_library(tmp_path):
  rng = np.random.default_rng(0)
  gt_dir, pred_dir = str(tmp_path / "gt"), str(tmp_path / "pred")
  os.makedirs(pred_dir)
  scenes = _write_gt(gt_dir, rng)
  ins_eval = metrics.InstanceAPEvaluator(3, (0,), PROTOCOL.class_names, min_region_size=100)
  pan_eval = metrics.PanopticEvaluator(3, (1, 2), PROTOCOL.class_names)
  for name, (segment, inst) in scenes.items():
    pred_segment = np.where(rng.random(750) < 0.2, 1, np.maximum(segment, 0)).astype(np.int32)
    pred_inst = np.where(rng.random(750) < 0.1, -1, inst).astype(np.int32)
    np.savez(os.path.join(pred_dir, name + ".npz"), segment=pred_segment, instance=pred_inst,
             classes=np.array([1, 1, 2], np.int32), scores=np.array([0.9, 0.5, 0.7]))
    masks, _ = metrics.instance.masks_from_instance(pred_inst)
    ins_eval.add_scene(segment, inst, masks, [1, 1, 2], [0.9, 0.5, 0.7])
    pan_eval.add_scene(segment, inst, pred_segment, pred_inst)
  semseg = evaluate.evaluate(pred_dir, gt_dir, "semseg", PROTOCOL)
  insseg = evaluate.evaluate(pred_dir, gt_dir, "insseg", PROTOCOL)
  panseg = evaluate.evaluate(pred_dir, gt_dir, "panseg", PROTOCOL)
  unsup = evaluate.evaluate(pred_dir, gt_dir, "unsupervised", PROTOCOL)
  assert insseg["mAP"] == ins_eval.result()["mAP"] and list(insseg["classes"]) == ["chair", "table"]
  assert panseg["PQ"] == pan_eval.result()["PQ"]
  assert 0 < semseg["mIoU"] < 1 and 0 < unsup["mAP"] <= 1
  text = evaluate.format_report(insseg, "insseg")
  assert "| chair" in text and "mAP" in text
  json.dumps(evaluate._jsonable(panseg))  # pylint: disable=protected-access


def test_clear_errors_name_the_file(tmp_path):
  gt_dir, pred_dir = str(tmp_path / "gt"), str(tmp_path / "pred")
  os.makedirs(pred_dir)
  _write_gt(gt_dir, np.random.default_rng(0))
  with pytest.raises(FileNotFoundError, match="scene_a.npz"):
    evaluate.evaluate(pred_dir, gt_dir, "semseg", PROTOCOL)
  np.savez(os.path.join(pred_dir, "scene_a.npz"), segment=np.zeros(749, np.int32))
  np.savez(os.path.join(pred_dir, "scene_b.npz"), segment=np.full(750, 5, np.int32))
  with pytest.raises(ValueError, match="scene_a.npz: segment: length 749, expected 750"):
    evaluate.evaluate(pred_dir, gt_dir, "semseg", PROTOCOL)
  np.savez(os.path.join(pred_dir, "scene_a.npz"), segment=np.zeros(750, np.int32))
  with pytest.raises(ValueError, match="scene_b.npz: segment: class id 5 out of range"):
    evaluate.evaluate(pred_dir, gt_dir, "semseg", PROTOCOL)
  with pytest.raises(KeyError, match="scene_a.npz: missing array 'instance'"):
    evaluate.evaluate(pred_dir, gt_dir, "panseg", PROTOCOL)
  os.remove(os.path.join(gt_dir, "scene_b", "instance.npy"))
  np.savez(os.path.join(pred_dir, "scene_a.npz"), segment=np.zeros(750, np.int32),
           instance=np.zeros(750, np.int32))
  with pytest.raises(FileNotFoundError, match="scene_b/instance.npy"):
    evaluate.evaluate(pred_dir, gt_dir, "panseg", PROTOCOL)
