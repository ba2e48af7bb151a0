"""Scores detection cases with the official nuscenes-devkit (run by its own python).

  NUSCENES_DEVKIT_PYTHON cases.json out.json

Input: a JSON list of cases; a case is a list of scenes {"gt": [...], "pred": [...],
"origin": [x, y, z]}, each box {"center", "size", "yaw", "label", "velocity", "attribute",
"num_points" (gt), "score" (pred)} with velocity null = unknown (NaN in the devkit) and
attribute -1 = none. Output: per case the devkit's DetectionMetrics (per-class APs per
threshold and TP errors, mAP, mTP, NDS) and the curves of every (class, threshold).

The devkit's DetectionEval needs a NuScenes database, so the boxes are built directly
(DetectionBox / EvalBoxes) and the two filters of loaders.filter_eval_boxes that do not
need the database (class range on ego_dist, zero-point ground truth) are applied as there;
then the official DetectionEval.evaluate runs (accumulate, calc_ap, calc_tp,
DetectionMetrics).
"""
import json
import sys

import numpy as np
from pyquaternion import Quaternion

from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.evaluate import DetectionEval

# Our DETECTION_CLASSES / DETECTION_ATTRIBUTES orders.
CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian",
           "motorcycle", "bicycle", "traffic_cone", "barrier")
ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving",
              "pedestrian.sitting_lying_down", "pedestrian.standing", "vehicle.moving",
              "vehicle.parked", "vehicle.stopped")
assert set(CLASSES) == set(DETECTION_NAMES) and set(ATTRIBUTES) == set(ATTRIBUTE_NAMES)


def detection_box(token, box, origin, is_gt):
  center = [float(v) for v in box["center"]]
  velocity = (np.nan, np.nan) if box["velocity"] is None else tuple(
      float(v) for v in box["velocity"])
  return DetectionBox(
      sample_token=token, translation=center, size=[float(v) for v in box["size"]],
      rotation=list(Quaternion(axis=[0, 0, 1], radians=float(box["yaw"])).elements),
      velocity=velocity,
      ego_translation=[c - o for c, o in zip(center, origin)],
      num_pts=int(box["num_points"]) if is_gt else -1,
      detection_name=CLASSES[box["label"]],
      detection_score=-1.0 if is_gt else float(box["score"]),
      attribute_name="" if box["attribute"] < 0 else ATTRIBUTES[box["attribute"]])


def evaluate(case, cfg):
  gt_boxes, pred_boxes = EvalBoxes(), EvalBoxes()
  for s, scene in enumerate(case):
    token = f"sample{s}"
    for boxes, target, is_gt in ((scene["gt"], gt_boxes, True),
                                 (scene["pred"], pred_boxes, False)):
      boxes = [detection_box(token, b, scene["origin"], is_gt) for b in boxes]
      # loaders.filter_eval_boxes: distance first, then zero-point boxes.
      boxes = [b for b in boxes if b.ego_dist < cfg.class_range[b.detection_name]]
      boxes = [b for b in boxes if not b.num_pts == 0]
      target.add_boxes(token, boxes)
  evaluator = DetectionEval.__new__(DetectionEval)  # no NuScenes database needed
  evaluator.cfg, evaluator.verbose = cfg, False
  evaluator.gt_boxes, evaluator.pred_boxes = gt_boxes, pred_boxes
  metrics, data = evaluator.evaluate()
  out = metrics.serialize()
  out["curves"] = {f"{name}@{th}": data[(name, th)].serialize()
                   for name in cfg.class_names for th in cfg.dist_ths}
  return out


def main(in_path, out_path):
  cfg = config_factory("detection_cvpr_2019")
  with open(in_path) as f:
    cases = json.load(f)
  with open(out_path, "w") as f:
    json.dump([evaluate(case, cfg) for case in cases], f, allow_nan=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
