"""Full-scan inference: every original point of a scan gets a prediction.

`loader.iterate_eval_fragments` cuts a scan into test-mode grid fragments (one point per
cell each, together covering every point) and spatial chunks that fit the model without
cropping. `full_scan_predictions` runs a model on those batches and averages its per-point
outputs over every fragment a point appears in (Pointcept's test-time voting of logits),
scattering them back to the scan's original point order.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import ml_collections
import numpy as np

from pointins_jax.data import loader as loader_lib
from pointins_jax.data.scene import Scene

# The batch fields a model's forward pass reads.
MODEL_KEYS = ("coord", "feat", "grid", "valid")
CAPACITY_KEYS = ("stage_capacities", "stage_point_counts")


def full_scan_predictions(scene: Scene, data_config,
                          apply_fn: Callable[[dict], Mapping[str, np.ndarray]], *,
                          batch_size: int, stage_capacities_fn=None) -> dict:
  """Per-original-point mean of the model outputs over all test fragments of `scene`.

  Args:
    scene: the full scan (N points, original order).
    data_config: the data config (grid size, buckets, features) the model was trained with.
    apply_fn: {coord, feat, grid, valid} numpy batch [B, P, ...] -> {name: array [B, P, D]}
      (e.g. probabilities [B, P, C] and offsets [B, P, 3]). Offsets come out in the
      fragment's frame; test fragments are only translated (centred), never rotated or
      scaled, so offsets need no change to be in the scan's frame.
    batch_size: rows per batch (B).
    stage_capacities_fn: the model's `stage_capacities` so chunks fit without cropping.
  Returns:
    {name: float32 [N, D] averaged outputs} plus "count" int32 [N], the fragments that
    predicted each point (>= 1 for every point).
  Raises:
    RuntimeError: a point got no prediction (the fragments did not cover the scan).
  """
  n = scene.num_points
  sums: dict[str, np.ndarray] = {}
  count = np.zeros(n, np.int32)
  for batch in loader_lib.iterate_eval_fragments(scene, data_config, batch_size=batch_size,
                                                 stage_capacities_fn=stage_capacities_fn):
    linear = batch["view_linear"][batch["valid"].any(axis=1)]
    if not np.allclose(linear, np.eye(3), atol=1e-6):
      raise RuntimeError("test fragments must be un-rotated for offsets to keep their frame; "
                         "views.fragment_views applied a linear transform.")
    # `stage_capacities` (when the chunks were fitted to the model) travels to apply_fn,
    # which passes it to the model as a static argument.
    outputs = apply_fn({k: batch[k] for k in MODEL_KEYS + CAPACITY_KEYS if k in batch})
    valid = batch["valid"]
    index = batch["index"][valid]
    np.add.at(count, index, 1)
    for name, value in outputs.items():
      value = np.asarray(value, np.float32)[valid]
      if name not in sums:
        sums[name] = np.zeros((n,) + value.shape[1:], np.float32)
      np.add.at(sums[name], index, value)
  missing = np.flatnonzero(count == 0)
  if missing.size:
    raise RuntimeError(f"{scene.source} (scene {scene.name!r}): {missing.size} of {n} points "
                       "got no prediction from loader.iterate_eval_fragments.")
  out = {name: total / count.reshape((n,) + (1,) * (total.ndim - 1))
         for name, total in sums.items()}
  out["count"] = count
  return out


def eval_scenes(data_config, num_scenes: int = -1, split: Optional[str] = None):
  """Yields the first `num_scenes` scenes (-1 = all) of `split` (default data.eval_split).

  One scene is read (or generated) at a time, so a full split never sits in memory.
  """
  source = loader_lib.scene_source(data_config,
                                   data_config.eval_split if split is None else split)
  count = len(source) if num_scenes < 0 else min(int(num_scenes), len(source))
  for i in range(count):
    yield source[i]


def export_model_config(export_config) -> ml_collections.ConfigDict:
  """A fresh copy of an export's `config.model` with tuples restored.

  config.json round trips turn tuples into lists; the model config wants tuples back.
  """
  model = ml_collections.ConfigDict(export_config.model.to_dict())
  for key, value in model.items():
    if isinstance(value, list):
      model[key] = tuple(value)
  return model


def jitted_predictions(predict: Callable, config, params) -> Callable[[dict], Any]:
  """numpy batch -> `predict(params, batch, config=, stage_capacities=)` as numpy, jitted on
  one local device, with the batch's stage capacities chosen by a `CapacityPlanner`.

  Parameters are fetched to the host first, so evaluation needs no other process.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from pointins_jax import compilation  # pylint: disable=import-outside-toplevel
  params = jax.device_get(params)
  jitted = jax.jit(functools.partial(predict, config=config),
                   static_argnames=("stage_capacities",))
  planner = compilation.CapacityPlanner()

  def apply(batch):
    batch = dict(batch)
    caps = planner.pop_and_choose(batch)
    return jax.tree.map(np.asarray, jitted(params, batch, stage_capacities=caps))

  return apply
