"""Detection evaluation: per-scene boxes in the scene frame, predictions/*.npz, BEV figures.

A validation scan is cut like the segmentation evaluation (`loader.iterate_eval_fragments`),
but only its first test-mode grid fragment is used (one point per cell: the grid sample a
training view sees). Each chunk is decoded in its own (re-centred) frame, moved back to the
scan's frame, and the candidates of all chunks go through one score threshold, per-group
circle NMS and the detection cap (`detection.postprocess`), so boxes cut by a chunk border
are merged.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import ml_collections
import numpy as np

from pointins_jax.data import loader as loader_lib
from pointins_jax.data import pointcept_io
from pointins_jax.data import transforms
from pointins_jax.data.boxes import (DETECTION_ATTRIBUTES, DETECTION_CLASSES, NO_ATTRIBUTE,
                                     Boxes)
from pointins_jax.data.scene import Scene
from pointins_jax.metrics import detection as detection_metrics
from pointins_jax.model import configs as model_configs
from pointins_jax.probe import detection as det
from pointins_jax.probe import detection_train
from pointins_jax.probe import inference


def make_predict_fn(config, params) -> Callable[[dict], dict]:
  """numpy batch -> top-k candidates per row and group (numpy), jitted on one device."""
  return inference.jitted_predictions(detection_train.predict, config, params)


def _eval_data_config(data_config):
  """Evaluation batches need no boxes (scenes of a test split have none)."""
  data = ml_collections.ConfigDict(data_config.to_dict())
  data.with_boxes = False
  return data


def scene_detections(scene: Scene, config, predict_fn: Callable[[dict], dict]) -> dict:
  """The detector's boxes of one scan, in the scan's own frame (numpy, best first).

  Returns {center [K, 3], size [K, 3], yaw [K], label [K] (class id), score [K]
  [, velocity [K, 2]]}.
  """
  spec = det.spec_from_config(config.detection)
  d = config.detection
  # The chunks' frame: x_chunk = origin + t with origin = scene.coord - shift (`views.centred`).
  shift = transforms.center_shift_offset(scene.coord).astype(np.float64)
  pieces = []
  capacities = functools.partial(model_configs.stage_capacities, config.model)
  for batch in loader_lib.iterate_eval_fragments(
      scene, _eval_data_config(config.data), batch_size=config.train.batch_size,
      stage_capacities_fn=capacities, max_fragments=1):
    rows = np.flatnonzero(batch["valid"].any(axis=1))
    if not np.allclose(batch["view_linear"][rows], np.eye(3), atol=1e-6):
      raise RuntimeError("test fragments must be un-rotated; views.fragment_views applied a "
                         "linear transform.")
    out = predict_fn({k: batch[k] for k in inference.MODEL_KEYS + inference.CAPACITY_KEYS
                      if k in batch})
    for r in rows:
      flat = {k: v[r].reshape((-1,) + v.shape[3:]) for k, v in out.items()}
      keep = flat["score"] > d.score_threshold
      flat = {k: v[keep] for k, v in flat.items()}
      flat["center"] = (flat["center"].astype(np.float64) - batch["view_translation"][r]
                        + shift)
      pieces.append(flat)
  candidates = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
  return det.postprocess(candidates, spec, score_threshold=d.score_threshold,
                         nms_min_radius=d.nms_min_radius, post_max_size=d.post_max_size,
                         max_detections=d.max_detections)


def write_predictions(path: str, boxes: dict) -> None:
  """predictions/<scene>.npz: box_center, box_size, box_yaw, box_label, box_score,
  box_attribute [, box_velocity] (the `metrics.detection.PRED_FILES` layout)."""
  np.savez(path, **{f"box_{k}": np.asarray(v) for k, v in boxes.items()})


def evaluate(config, params, *, out_dir: Optional[str] = None, num_figures: int = 0,
             log=print, predictions_fn: Optional[Callable[[Scene], dict]] = None) -> dict:
  """Detects boxes on the first `train.num_eval_scenes` val scans and scores them.

  Writes `out_dir/predictions/<scene>.npz` and `out_dir/figures/bev_<i>_<scene>.png`
  (the first `num_figures` scenes) when `out_dir` is given.

  Returns:
    {"num_scenes", "num_predictions", "num_gt_boxes", "predictions" (folder), "figures"}
    "class_counts" and the nuScenes metric (`pointins_jax.metrics.detection`: mAP, NDS,
    mATE..mAAE, "per_class" AP and TP errors); without ground-truth boxes "metric" says so.
  """
  if predictions_fn is None:
    predict = make_predict_fn(config, params)
    predictions_fn = lambda scene: scene_detections(scene, config, predict)
  pred_dir = fig_dir = None
  if out_dir is not None:
    pred_dir = os.path.join(out_dir, "predictions")
    os.makedirs(pred_dir, exist_ok=True)
  gts, preds, figures, names = [], [], [], []  # boxes only: scans are not kept
  evaluator = detection_metrics.DetectionEvaluator()
  for i, scene in enumerate(inference.eval_scenes(config.data, config.train.num_eval_scenes)):
    boxes = predictions_fn(scene)
    boxes["attribute"] = predicted_attributes(boxes["label"], boxes.get("velocity"))
    names.append(scene.name)
    preds.append({k: boxes[k] for k in ("label", "score")})
    gts.append(scene.boxes)
    if scene.boxes is not None:
      add_scene(evaluator, scene, boxes)
    if pred_dir is not None:
      write_predictions(os.path.join(pred_dir, f"{scene.name}.npz"), boxes)
    if out_dir is not None and i < num_figures:
      fig_dir = os.path.join(out_dir, "figures")
      os.makedirs(fig_dir, exist_ok=True)
      figures.append(bev_figure(os.path.join(fig_dir, f"bev_{i:03d}_{scene.name}.png"),
                                scene, boxes))
    log(f"eval scene {i + 1} ({scene.name}): {len(boxes['score'])} boxes, "
        f"{0 if scene.boxes is None else len(scene.boxes)} ground truth")
  if not names:
    raise ValueError("config.train.num_eval_scenes selects no validation scene.")
  result = dict(num_scenes=len(names), num_predictions=int(sum(len(p["score"]) for p in preds)),
                num_gt_boxes=int(sum(0 if g is None else len(g) for g in gts)),
                predictions=pred_dir, figures=figures, class_counts=class_counts(gts, preds))
  if any(g is None for g in gts):
    result["metric"] = "not computed: the evaluation split has no ground-truth boxes"
  else:
    metric = evaluator.result()
    result.update({k: v for k, v in metric.items() if k not in ("classes", "num_scenes")},
                  per_class=metric["classes"])
  return result


# CenterPoint's (mmdetection3d's) nuScenes attribute rule for predictions: by speed
# (> 0.2 m/s = moving) and class, else the class default.
_DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "pedestrian": "pedestrian.moving",
                      "trailer": "vehicle.parked", "truck": "vehicle.parked",
                      "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
                      "construction_vehicle": "vehicle.parked",
                      "bicycle": "cycle.without_rider", "barrier": None, "traffic_cone": None}
_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")


def predicted_attributes(label: np.ndarray, velocity: Optional[np.ndarray]) -> np.ndarray:
  """Attribute ids of predicted boxes (CenterPoint's rule; speed 0 without velocity)."""
  speed = (np.zeros(len(label)) if velocity is None
           else np.linalg.norm(np.asarray(velocity, np.float64), axis=1))
  out = np.full(len(label), NO_ATTRIBUTE, np.int32)
  for k, (c, v) in enumerate(zip(label, speed)):
    name = DETECTION_CLASSES[int(c)]
    attr = None
    if v > 0.2:
      attr = ("vehicle.moving" if name in _VEHICLES else
              "cycle.with_rider" if name in ("bicycle", "motorcycle") else None)
    else:
      attr = ("pedestrian.standing" if name == "pedestrian" else
              "vehicle.stopped" if name == "bus" else None)
    attr = attr or _DEFAULT_ATTRIBUTE[name]
    if attr is not None:
      out[k] = DETECTION_ATTRIBUTES.index(attr)
  return out


def _as_boxes(boxes: dict) -> Boxes:
  return Boxes(center=boxes["center"], size=boxes["size"], yaw=boxes["yaw"],
               label=boxes["label"], velocity=boxes.get("velocity"),
               attribute=boxes.get("attribute"))


def add_scene(evaluator, scene: Scene, boxes: dict) -> None:
  """Adds one scan's predictions to a nuScenes `DetectionEvaluator`.

  Ground-truth extras of prepared scene folders (`pointcept_io.read_box_extras`: LiDAR +
  radar points per box, known velocities, ego distances) are used when present; the
  sensor (the scene frame's origin) is the ego position otherwise.
  """
  extras = {}
  if os.path.isdir(scene.source):
    extras = pointcept_io.read_box_extras(scene.source, len(scene.boxes))
  num_points = extras.get("num_points")
  if num_points is not None and "num_radar_points" in extras:
    num_points = num_points + extras["num_radar_points"]
  evaluator.add_scene(scene.boxes, _as_boxes(boxes), boxes["score"], num_points=num_points,
                      velocity_known=extras.get("velocity_known"),
                      ego_distance=extras.get("ego_distance"), name=scene.name)


def bev_figure(path: str, scene: Scene, boxes: dict, max_points: int = 30_000) -> str:
  """Top view: the scan's points, ground-truth boxes (green) and predictions (red, alpha =
  score), each with a heading tick."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  extent = np.ptp(scene.coord[:, :2], axis=0) + 1.0
  width = 12.0
  fig, ax = plt.subplots(figsize=(width, float(np.clip(width * extent[1] / extent[0] + 1, 4, 14))))
  coord = scene.coord
  if len(coord) > max_points:
    coord = coord[np.random.default_rng(0).choice(len(coord), max_points, replace=False)]
  ax.scatter(coord[:, 0], coord[:, 1], s=0.3, c="0.6", linewidths=0)

  def draw(center, size, yaw, color, alpha, label=None):
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1], [1, 1]]) * size[:2] / 2
    xy = corners @ np.array([[c, s], [-s, c]]) + center[:2]
    ax.plot(xy[:, 0], xy[:, 1], color=color, alpha=alpha, lw=1.5, label=label)
    ax.plot([center[0], center[0] + c * size[0] / 2], [center[1], center[1] + s * size[0] / 2],
            color=color, alpha=alpha, lw=1.2)

  gt = scene.boxes
  if gt is not None:
    for k in range(len(gt)):
      draw(gt.center[k], gt.size[k], gt.yaw[k], "tab:green", 1.0,
           "ground truth" if k == 0 else None)
  for k in range(len(boxes["score"])):
    draw(boxes["center"][k], boxes["size"][k], boxes["yaw"][k], "tab:red",
         float(np.clip(boxes["score"][k], 0.15, 1.0)), "predicted" if k == 0 else None)
  ax.set_aspect("equal")
  ax.set_title(f"{scene.name}: {0 if gt is None else len(gt)} GT (green), "
               f"{len(boxes['score'])} predicted (red, alpha = score)")
  handles = ax.get_legend_handles_labels()
  if handles[0]:
    ax.legend(loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def format_result(result: dict) -> str:
  """mAP / NDS and a per-class table (boxes, AP, TP errors) as text."""
  lines = [f"detection: {result['num_scenes']} scenes, {result['num_predictions']} predicted, "
           f"{result['num_gt_boxes']} ground-truth boxes"]
  per_class = result.get("per_class", {})
  if "mAP" in result:
    lines.append(f"mAP {result['mAP']:.4f}  NDS {result['NDS']:.4f}  " + "  ".join(
        f"m{m} {result['m' + m]:.3f}" for m in ("ATE", "ASE", "AOE", "AVE", "AAE")))
  else:
    lines.append(f"metric {result.get('metric', '')}")
  lines += ["| class | predicted | ground truth | AP | ATE | ASE | AOE | AVE | AAE |",
            "|---|---|---|---|---|---|---|---|---|"]
  fmt = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.3f}"
  for name in DETECTION_CLASSES:
    counts = result["class_counts"].get(name, {})
    row = per_class.get(name, {})
    lines.append(f"| {name} | {counts.get('predicted', 0)} | {counts.get('gt', 0)} | " +
                 " | ".join(fmt(row.get(k)) for k in ("AP", "ATE", "ASE", "AOE", "AVE", "AAE"))
                 + " |")
  return "\n".join(lines)


def class_counts(gts, preds) -> dict:
  """Per class name: {"predicted": n, "gt": n} over the evaluated scenes."""
  out = {}
  for i, name in enumerate(DETECTION_CLASSES):
    out[name] = dict(predicted=int(sum(np.sum(p["label"] == i) for p in preds)),
                     gt=int(sum(0 if g is None else np.sum(g.label == i) for g in gts)))
  return out
