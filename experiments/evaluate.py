"""Scores saved per-scene predictions against Pointcept-layout ground truth, without a model.

  python -m experiments.evaluate --pred PRED_DIR --gt DATASET_DIR/val --task insseg \
      --dataset scannet [--output result.json]
  python -m experiments.evaluate --pred PRED_DIR --gt DATASET_DIR/val --task detection \
      [--ego-origin X Y Z] [--output eval.json]

Ground truth: every sub-folder `DATASET_DIR/<scene>/` holds `segment.npy` (ScanNet:
`segment20.npy`, ScanNet200: `segment200.npy`) int [N] class ids (-1 = ignore) and
`instance.npy` int [N] instance ids (-1 = none), as written by `pointins_jax.data.pointcept_io`.

Predictions: one `PRED_DIR/<scene>.npz` per GT scene (`np.savez`), over the same N points in
the same order:
* semseg: `segment` int32 [N] predicted class (-1 = no prediction, counted as a miss).
* insseg: `masks` bool [M, N], `classes` int32 [M], `scores` float32 [M]; or instead of
  `masks`, `instance` int32 [N] (-1 = none) with `classes` / `scores` given per distinct id
  in ascending order.
* panseg: `segment` int32 [N] and `instance` int32 [N] (-1 = none). As in the official
  evaluators every (class, id) pair is a segment, stuff included: give stuff points -1.
* unsupervised (class-agnostic, PointINS Table 13): `instance` int32 [N], optional `scores`
  float32 [M] per instance with >= 100 points in ascending id order (default: size).
* detection (nuScenes mAP / NDS): boxes, not points: `box_center`, `box_size`, `box_yaw`,
  `box_label`, `box_score`, optional `box_velocity`, `box_attribute`
  (`pointins_jax.metrics.detection`). Ground truth: the scene folders' box_*.npy files
  (`pointins_jax.data.boxes`), with the optional per-box box_num_points.npy (+
  box_num_radar_points.npy; boxes with 0 points in total are dropped),
  box_velocity_known.npy and box_ego_distance.npy (class ranges). `--ego-origin` is the
  ego position in the scene frame that prediction ranges (and ground-truth ones without
  box_ego_distance.npy) are measured from; for nuScenes LIDAR_TOP scenes about 0 -0.94 0.

Protocols: `pointins_jax.metrics` (ScanNet instance AP with the 18 thing classes of ScanNet-20,
all 13 for S3DIS; SemanticKITTI PQ with min 50 points, Panoptic nuScenes with 15). Prints a
per-class Markdown table and the summary; `--output` also writes the numbers as JSON. A
missing prediction file, a point-count mismatch or an out-of-range label stops the run with an
error naming the file. `--output X.json` also writes the report to X.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.data.boxes import BOX_FILES, Boxes
from pointins_jax.metrics import detection, instance, panoptic, report, semantic, unsupervised
from pointins_jax.metrics.protocol import Protocol, protocol_for  # noqa: F401  (re-exported)

TASKS = ("semseg", "insseg", "panseg", "unsupervised", "detection")
DATASETS = ("scannet", "scannet200", "s3dis", "semantickitti", "nuscenes", "synthetic-indoor",
            "synthetic-outdoor")
def _load_npy(path: str) -> np.ndarray:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: missing ground-truth file (Pointcept layout "
                            "DATASET_DIR/<scene>/{segment*.npy, instance.npy}).")
  return np.load(path).reshape(-1)


def read_ground_truth(folder: str, protocol: Protocol, task: str):
  """(segment int64 [N] or None, instance int64 [N] or None), checked."""
  segment = instance_ids = None
  if task != "unsupervised":
    path = os.path.join(folder, protocol.segment_file)
    segment = semantic.check_labels(path, _load_npy(path), num_classes=protocol.num_classes)
  if task != "semseg":
    path = os.path.join(folder, "instance.npy")
    num_points = None if segment is None else segment.shape[0]
    instance_ids = semantic.check_labels(path, _load_npy(path), num_points)
  return segment, instance_ids


def read_detection_ground_truth(folder: str) -> tuple[Boxes, dict]:
  """(Boxes [G], per-box extras) of a scene folder; extras keyed as `add_scene`'s arguments.

  A stand-in for `pointcept_io.read_boxes` / `read_box_extras` (same files), to be swapped
  for them once they land.
  """
  def load(name, required=True):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      if required:
        raise FileNotFoundError(f"{path}: missing ground-truth box file (detection needs "
                                "box_center/size/yaw/label.npy in every scene folder).")
      return None
    return np.load(path)
  values = {field: load(name, field not in ("velocity", "attribute"))
            for field, name in BOX_FILES.items()}
  boxes = Boxes(**values).validate(folder)
  extras = {}
  num_points, radar = load("box_num_points.npy", False), load("box_num_radar_points.npy", False)
  if num_points is not None:
    extras["num_points"] = num_points if radar is None else num_points + radar
  for key, name in (("velocity_known", "box_velocity_known.npy"),
                    ("ego_distance", "box_ego_distance.npy")):
    if (value := load(name, False)) is not None:
      extras[key] = value
  return boxes, extras


def evaluate_detection(pred_dir: str, gt_dir: str,
                       origin: Sequence[float] = (0.0, 0.0, 0.0)) -> dict:
  """nuScenes detection metrics of `pred_dir/<scene>.npz` against `gt_dir/<scene>/`."""
  evaluator = detection.DetectionEvaluator()
  for name in scene_names(gt_dir):
    folder, path = os.path.join(gt_dir, name), os.path.join(pred_dir, name + ".npz")
    gt, extras = read_detection_ground_truth(folder)
    pred, scores = detection.read_predictions(path)
    evaluator.add_scene(gt, pred, scores, origin=origin, name=path, gt_name=folder, **extras)
  return evaluator.result()


def _array(prediction, path: str, key: str) -> np.ndarray:
  if key not in prediction:
    raise KeyError(f"{path}: missing array {key!r} (has {sorted(prediction.files)}); see "
                   "`python -m experiments.evaluate --help` for the prediction format.")
  return prediction[key]


def scene_names(gt_dir: str) -> list[str]:
  if not os.path.isdir(gt_dir):
    raise FileNotFoundError(f"--gt {gt_dir}: no such directory.")
  names = sorted(d for d in os.listdir(gt_dir) if os.path.isdir(os.path.join(gt_dir, d)))
  if not names:
    raise FileNotFoundError(f"--gt {gt_dir}: no scene folders (expected DATASET_DIR/<scene>/).")
  return names


def evaluate(pred_dir: str, gt_dir: str, task: str, protocol: Protocol) -> dict:
  """Scores every scene of `gt_dir`; returns the metric's result dict."""
  if task == "detection":
    return evaluate_detection(pred_dir, gt_dir)
  names = scene_names(gt_dir)
  missing = [n for n in names if not os.path.isfile(os.path.join(pred_dir, n + ".npz"))]
  if missing:
    raise FileNotFoundError(f"--pred {pred_dir}: no prediction for {len(missing)} of "
                            f"{len(names)} scenes, e.g. {os.path.join(pred_dir, missing[0])}.npz")
  num_classes = protocol.num_classes
  confusion = np.zeros((num_classes, num_classes + 1), np.int64)
  ignore = protocol.instance_ignore_classes
  evaluator = {
      "insseg": lambda: instance.InstanceAPEvaluator(num_classes, ignore, protocol.class_names),
      "panseg": lambda: panoptic.PanopticEvaluator(num_classes, protocol.thing_classes,
                                                   protocol.class_names,
                                                   protocol.panoptic_min_points),
      "unsupervised": unsupervised.UnsupervisedAPEvaluator,
      "semseg": lambda: None,
  }[task]()
  for name in names:
    gt_segment, gt_instance = read_ground_truth(os.path.join(gt_dir, name), protocol, task)
    path = os.path.join(pred_dir, name + ".npz")
    num_points = (gt_segment if gt_segment is not None else gt_instance).shape[0]
    with np.load(path) as prediction:
      if task == "semseg":
        pred = semantic.check_labels(f"{path}: segment", _array(prediction, path, "segment"),
                                     num_points, num_classes)
        confusion += semantic.confusion_matrix(gt_segment, pred, num_classes)
      elif task == "insseg":
        if "masks" in prediction:
          masks = _array(prediction, path, "masks")
        else:
          ids = semantic.check_labels(f"{path}: instance", _array(prediction, path, "instance"),
                                      num_points)
          masks, _ = instance.masks_from_instance(ids)
        evaluator.add_scene(gt_segment, gt_instance, masks, _array(prediction, path, "classes"),
                            _array(prediction, path, "scores"), name=path)
      elif task == "panseg":
        evaluator.add_scene(gt_segment, gt_instance, _array(prediction, path, "segment"),
                            _array(prediction, path, "instance"), name=path)
      else:
        ids = semantic.check_labels(f"{path}: instance", _array(prediction, path, "instance"),
                                    num_points)
        scores = prediction["scores"] if "scores" in prediction else None
        try:
          evaluator.add_scene(gt_instance, ids, scores)
        except ValueError as error:
          raise ValueError(f"{path}: {error}") from error
  if task == "semseg":
    return semantic.iou_from_confusion(confusion, protocol.class_names)
  return evaluator.result()


format_report = report.format_result  # kept under its old name
_jsonable = report.jsonable


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pred", required=True, help="folder of <scene>.npz predictions")
  parser.add_argument("--gt", required=True, help="folder of Pointcept <scene>/ folders")
  parser.add_argument("--task", required=True, choices=TASKS)
  parser.add_argument("--dataset", default="scannet", choices=DATASETS)
  parser.add_argument("--ego-origin", type=float, nargs=3, default=(0.0, 0.0, 0.0),
                      metavar=("X", "Y", "Z"),
                      help="detection: ego position (m) in the scene frame for class ranges")
  parser.add_argument("--output", help="also write the results to this JSON file (and the "
                      "report to the same name with .md)")
  args = parser.parse_args(argv)
  if args.task == "detection":
    result = evaluate_detection(args.pred, args.gt, args.ego_origin)
  else:
    result = evaluate(args.pred, args.gt, args.task, protocol_for(args.dataset))
  text = format_report(result, args.task)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(_jsonable(result), f, indent=2, allow_nan=True)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
      f.write(text + "\n")
  return result


if __name__ == "__main__":
  sys.exit(cli.run(main, name="evaluate"))
