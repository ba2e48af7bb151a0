"""Our nuScenes detection metric against the official nuscenes-devkit on random cases.

`nuscenes_devkit_reference.py` runs the devkit's DetectionEval.evaluate (accumulate,
calc_ap, calc_tp, DetectionMetrics / NDS) in a separate python that has the devkit, which
is not a dependency of this project. Skipped unless that python is named:

  python3 -m venv /tmp/nusc && /tmp/nusc/bin/pip install nuscenes-devkit
  NUSCENES_DEVKIT_PYTHON=/tmp/nusc/bin/python JAX_PLATFORMS=cpu \
  .venv/bin/python -m pytest -q tests/test_metric_detection_devkit.py
"""
import json
import os
import subprocess

import numpy as np
import pytest

from pointins_jax.data.boxes import DETECTION_ATTRIBUTES, DETECTION_CLASSES, Boxes
from pointins_jax.metrics import detection

DEVKIT_PYTHON = os.environ.get("NUSCENES_DEVKIT_PYTHON")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "nuscenes_devkit_reference.py")
TOLERANCE = 1e-9

pytestmark = pytest.mark.skipif(
    not DEVKIT_PYTHON, reason="set NUSCENES_DEVKIT_PYTHON (a python with nuscenes-devkit)")


def random_case(rng, num_scenes):
  """Scenes of boxes: a few classes, near/far, ties, misses, FPs, unknown velocities."""
  classes = rng.choice(len(DETECTION_CLASSES), size=4, replace=False)
  classes[0] = DETECTION_CLASSES.index("barrier")  # pi-periodic AOE, N/A AVE/AAE
  scenes = []
  for _ in range(num_scenes):
    origin = [float(v) for v in rng.uniform(-2, 2, 3)]
    gt, pred = [], []
    for _ in range(rng.integers(0, 12)):
      label = int(rng.choice(classes))
      box = {"center": list(rng.uniform(-60, 60, 2)) + [float(rng.uniform(-2, 2))],
             "size": list(rng.uniform(0.3, 5, 3)), "yaw": float(rng.uniform(-4, 4)),
             "label": label,
             "velocity": None if rng.random() < 0.2 else list(rng.normal(0, 3, 2)),
             "attribute": int(rng.integers(-1, len(DETECTION_ATTRIBUTES))),
             "num_points": int(rng.integers(0, 4))}
      gt.append(box)
      for _ in range(rng.integers(0, 3)):  # 0-2 detections near each box
        noise = rng.choice([0.2, 0.8, 1.5, 3.0])
        pred.append({**box, "center": list(np.array(box["center"]) + rng.normal(0, noise, 3)),
                     "size": list(np.array(box["size"]) * rng.uniform(0.7, 1.3, 3)),
                     "yaw": float(box["yaw"] + rng.normal(0, 1)),
                     "velocity": list(rng.normal(0, 3, 2)),
                     "attribute": int(rng.integers(-1, len(DETECTION_ATTRIBUTES))),
                     "score": float(np.round(rng.random(), 1))})  # rounded: ties
    for _ in range(rng.integers(0, 5)):  # false positives
      pred.append({"center": list(rng.uniform(-50, 50, 3)), "size": list(rng.uniform(0.3, 5, 3)),
                   "yaw": float(rng.uniform(-4, 4)), "label": int(rng.choice(classes)),
                   "velocity": list(rng.normal(0, 3, 2)),
                   "attribute": int(rng.integers(-1, len(DETECTION_ATTRIBUTES))),
                   "score": float(np.round(rng.random(), 1))})
    scenes.append({"gt": gt, "pred": pred, "origin": origin})
  return _float32(scenes)


def _float32(value):
  """Floats rounded to float32, which Boxes stores: both sides see the same numbers."""
  if isinstance(value, dict):
    return {k: _float32(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_float32(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(np.float32(value))
  return value


def to_boxes(boxes, with_score=False):
  def column(key, shape, dtype):
    return np.array([b[key] for b in boxes], dtype).reshape(shape)
  m = len(boxes)
  out = Boxes(column("center", (m, 3), np.float64), column("size", (m, 3), np.float64),
              column("yaw", (m,), np.float64), column("label", (m,), np.int32),
              np.array([b["velocity"] or [0.0, 0.0] for b in boxes], np.float64).reshape(m, 2),
              column("attribute", (m,), np.int32))
  return out


def ours(case, use_ego_distance):
  evaluator = detection.DetectionEvaluator()
  for s, scene in enumerate(case):
    gt, pred = to_boxes(scene["gt"]), to_boxes(scene["pred"])
    ego = None
    if use_ego_distance:  # the devkit's ego_dist, given per ground-truth box
      ego = detection.center_distance(gt.center, np.array(scene["origin"]))
    evaluator.add_scene(
        gt, pred, np.array([b["score"] for b in scene["pred"]], np.float64),
        num_points=np.array([b["num_points"] for b in scene["gt"]], np.int64),
        velocity_known=np.array([b["velocity"] is not None for b in scene["gt"]], bool),
        ego_distance=ego, origin=scene["origin"], name=f"scene {s}")
  return evaluator.result(), evaluator.curves()


def test_matches_nuscenes_devkit(tmp_path):
  rng = np.random.default_rng(0)
  cases = [random_case(rng, num_scenes=int(rng.integers(1, 8))) for _ in range(40)]
  with open(tmp_path / "cases.json", "w") as f:
    json.dump(cases, f)
  subprocess.run([DEVKIT_PYTHON, SCRIPT, str(tmp_path / "cases.json"),
                  str(tmp_path / "devkit.json")], check=True)
  with open(tmp_path / "devkit.json") as f:
    reference = json.load(f)
  names = {"ATE": "trans_err", "ASE": "scale_err", "AOE": "orient_err", "AVE": "vel_err",
           "AAE": "attr_err"}
  worst, compared, nonzero_ap = 0.0, 0, 0
  for c, (case, ref) in enumerate(zip(cases, reference)):
    result, curves = ours(case, use_ego_distance=c % 2 == 1)
    pairs = [(result["mAP"], ref["mean_ap"]), (result["NDS"], ref["nd_score"])]
    for metric, key in names.items():
      pairs.append((result["m" + metric], ref["tp_errors"][key]))
      pairs.append((result["tp_scores"][metric], ref["tp_scores"][key]))
    for name, row in result["classes"].items():
      for th in (0.5, 1.0, 2.0, 4.0):
        pairs.append((row[f"AP@{th}"], ref["label_aps"][name][str(th)]))
        nonzero_ap += row[f"AP@{th}"] > 0
        md = ref["curves"][f"{name}@{th}"]
        ours_md = curves[name, th]
        pairs += list(zip(ours_md.precision, md["precision"]))
        pairs += list(zip(ours_md.confidence, md["confidence"]))
        for metric, key in names.items():
          pairs += list(zip(ours_md.errors[metric], md[key]))
      for metric, key in names.items():
        pairs.append((row[metric], ref["label_tp_errors"][name][key]))
    for a, b in pairs:
      a, b = float(a), float("nan") if b is None else float(b)
      assert np.isnan(a) == np.isnan(b), (c, a, b)
      if not np.isnan(a):
        worst = max(worst, abs(a - b))
    compared += len(pairs)
  print(f"devkit comparison: {compared} values over {len(cases)} cases, "
        f"{nonzero_ap} non-zero APs, max |difference| {worst:.3g}")
  assert nonzero_ap > 100  # the cases exercise matching, not only empty classes
  assert worst < TOLERANCE
