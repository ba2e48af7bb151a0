"""Offset quality while pretraining: do predicted centroids move towards instance centres?

Every `train.eval_every` steps (0 = never) the pretraining loop scores the exported weights
(`train.export_weights`: teacher or student) on the first `train.num_eval_scenes` full
validation scans of `config.data`:

* the centroid distances of `metrics.offset_quality` over points inside ground-truth
  instances: median / mean |x + o - c| next to the zero-offset baseline |x - c|, and the
  fraction of points the offsets moved closer to their centre;
* Table 13's unsupervised instance AP of the offsets (class-agnostic grouping
  `probe.unsupervised.pointins_instances` on the pretraining grid, Hungarian AP).

Ground-truth labels are read here only: the train step never sees them (it reads
`train.BATCH_KEYS`, which hold no labels). Scores go to metrics.jsonl / TensorBoard under
`KEYS` and are drawn over training by `plot` (PNG).
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import numpy as np

from pointins_jax import metric_writer
from pointins_jax.metrics import offset_quality
from pointins_jax.metrics import unsupervised as unsup_metrics
from pointins_jax.model import configs as model_configs
from pointins_jax.pointins import train as train_lib
from pointins_jax.probe import inference
from pointins_jax.probe import unsupervised

# metrics.jsonl keys: distances in metres, fraction and APs in [0, 1].
KEYS = ("offset_dist_median", "offset_dist_mean", "offset_baseline_median",
        "offset_baseline_mean", "offset_closer_fraction", "offset_unsup_mAP",
        "offset_unsup_AP50", "offset_unsup_AP25")
PLOT_NAME = "offset_quality.png"


def evaluate(config, params, offsets_fn=None, *, log=print) -> dict:
  """The `KEYS` figures of `params` (network params, host or device) on validation scans.

  Args:
    offsets_fn: `train.make_offsets_fn(config)` (pass one to reuse its compilation).
  Returns:
    {key: float} for every key of `KEYS`, plus "offset_eval_scenes".
  """
  offsets_fn = train_lib.make_offsets_fn(config) if offsets_fn is None else offsets_fn
  params = jax.device_get(params)
  apply = lambda batch: {"offsets": np.asarray(offsets_fn(params, batch))}
  capacities = functools.partial(model_configs.stage_capacities, config.model)
  distances, baselines = [], []
  ap = unsup_metrics.UnsupervisedAPEvaluator(unsup_metrics.MIN_SIZE)
  count = 0
  for scene in inference.eval_scenes(config.data, int(config.train.num_eval_scenes)):
    if scene.instance is None:
      raise ValueError(f"{scene.source} (scene {scene.name!r}): train.eval_every needs "
                       "instance labels in the validation split (or set it to 0).")
    offsets = inference.full_scan_predictions(
        scene, config.data, apply, batch_size=config.train.batch_size,
        stage_capacities_fn=capacities)["offsets"]
    d, b = offset_quality.centroid_distances(scene.coord, offsets, scene.instance)
    distances.append(d)
    baselines.append(b)
    ap.add_scene(scene.instance, unsupervised.pointins_instances(
        scene, offsets, voxel_size=float(config.data.grid_size)))
    count += 1
  if count == 0:
    raise ValueError("train.num_eval_scenes selects no validation scene for train.eval_every.")
  quality = offset_quality.summarize(np.concatenate(distances), np.concatenate(baselines))
  result = {f"offset_{k}": quality[k] for k in ("dist_median", "dist_mean", "baseline_median",
                                                 "baseline_mean", "closer_fraction")}
  result.update({f"offset_unsup_{k}": v for k, v in ap.result().items()
                 if k in ("mAP", "AP50", "AP25")})
  result["offset_eval_scenes"] = count
  log(f"offset quality: median |x+o-c| {100 * result['offset_dist_median']:.1f} cm "
      f"(zero offsets {100 * result['offset_baseline_median']:.1f} cm), closer "
      f"{result['offset_closer_fraction']:.2f}, unsup AP25 {result['offset_unsup_AP25']:.3f}")
  return result


def due(step: int, total_steps: int, eval_every: int) -> bool:
  """Whether to evaluate after `step` optimizer steps: step 0 (before training), every
  `eval_every` steps and at the end; never when eval_every <= 0."""
  return eval_every > 0 and (step % eval_every == 0 or step == total_steps)


def history(workdir: str) -> list[dict]:
  """The offset-quality records of `workdir/metrics.jsonl`, in step order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  records = [r for r in metric_writer.read_metrics(workdir) if KEYS[0] in r]
  return sorted(records, key=lambda r: r["step"])


def final(workdir: str) -> Optional[dict]:
  """{key: float} of the last offset-quality record of a pretraining run, or None."""
  records = history(workdir)
  return {k: float(records[-1][k]) for k in KEYS} if records else None


def plot(workdir: str, path: Optional[str] = None) -> Optional[str]:
  """PNG of the offset-quality figures over training (None when none were logged)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  records = history(workdir)
  if not records:
    return None
  steps = [r["step"] for r in records]
  series = lambda key: [float(r[key]) for r in records]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for key, style, label in (("offset_dist_median", "-o", "median |x+o-c|"),
                            ("offset_dist_mean", "-s", "mean |x+o-c|"),
                            ("offset_baseline_median", "--", "median |x-c| (zero offsets)"),
                            ("offset_baseline_mean", ":", "mean |x-c| (zero offsets)")):
    left.plot(steps, [100 * v for v in series(key)], style, label=label)
  left.set(xlabel="step", ylabel="cm", title="predicted centroid to instance centre")
  left.legend(fontsize=8)
  for key, label in (("offset_closer_fraction", "fraction moved closer"),
                     ("offset_unsup_AP25", "unsup AP25"), ("offset_unsup_AP50", "unsup AP50"),
                     ("offset_unsup_mAP", "unsup mAP")):
    right.plot(steps, series(key), "-o", label=label)
  right.set(xlabel="step", ylim=(-0.02, 1.02), title="offsets vs instances (val scans)")
  right.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(workdir, PLOT_NAME) if path is None else path
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
