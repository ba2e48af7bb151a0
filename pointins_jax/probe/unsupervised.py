"""Unsupervised instance segmentation with a pretrained PointINS network (paper Table 13).

No training: the exported backbone + offset head predict a 3D offset per point (full-scan
inference, `inference.full_scan_predictions`); points are shifted by them, and connected
components of the radius graph over the shifted points (class-agnostic, `grouping.
offset_components`) are the instances. They are scored with the class-agnostic Hungarian AP
(`metrics.unsupervised`) next to two classical baselines on the raw coordinates: HDBSCAN
and Felzenszwalb graph segmentation (`metrics.baselines`), and the pipeline's ceiling:
ground-truth offsets (`probe.oracle`) through the same grouping ("Oracle"), which tells a
grouping that cannot find instances from offsets that do not point at them.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import ml_collections
import numpy as np

from pointins_jax import export as export_lib
from pointins_jax.data import visualize
from pointins_jax.data.scene import Scene
from pointins_jax.metrics import baselines
from pointins_jax.metrics import unsupervised as unsup_metrics
from pointins_jax.model import configs as model_configs
from pointins_jax.pointins import train as pointins_train
from pointins_jax.probe import grouping
from pointins_jax.probe import inference
from pointins_jax.probe import oracle

METHODS = ("PointINS", "HDBSCAN", "Felzenszwalb", "Oracle")
SYNTHETIC = ("synthetic-indoor", "synthetic-outdoor")


def load_pointins(export_dir: str):
  """(export config with tuple model fields, apply_fn: numpy batch -> {"offsets": [B, P, 3]})."""
  config, params = export_lib.load_export(export_dir)
  with config.unlocked():
    config.model = inference.export_model_config(config)
  offsets = pointins_train.make_offsets_fn(config)
  return config, lambda batch: {"offsets": np.asarray(offsets(params, batch))}


def data_config_for(export_config, data: str, *, num_scenes: Optional[int], split: str,
                    dataset: str = "") -> ml_collections.ConfigDict:
  """The export's data config pointed at `data` (a synthetic dataset name or a Pointcept root).

  Features, grid size and buckets stay the pretraining ones: the network expects them.
  """
  config = ml_collections.ConfigDict(export_config.data.to_dict())
  config.buckets = tuple(config.buckets)
  config.feat_keys = tuple(config.feat_keys)
  config.eval_split = split
  if data in SYNTHETIC:
    config.dataset, config.root = data, ""
    if num_scenes is not None:
      config.num_scenes = int(num_scenes)  # the synthetic val split has this many scenes
  else:
    if not os.path.isdir(data):
      raise FileNotFoundError(f"--data {data}: neither {' / '.join(SYNTHETIC)} nor a folder "
                              "(a Pointcept root holding SPLIT/<scene>/coord.npy).")
    config.root = data
    config.extra_roots = ()
    config.dataset = dataset or (config.dataset if config.dataset not in SYNTHETIC else "")
  return config


def pointins_instances(scene: Scene, offsets: np.ndarray, *, voxel_size: float,
                       radius: Optional[float] = None, k_neighbors: int = 64) -> np.ndarray:
  """int32 [N] class-agnostic components of coord + offsets (-1: none).

  Args:
    scene: the full scan (N points); offsets: float [N, 3] metres, the scan's frame.
    voxel_size: grouping grid in metres (the pretraining grid size).
    radius: smallest linking distance in metres (default 1.5 voxels); the radius used also
      follows the scan's sampling spacing (`grouping`, module docstring).
  """
  n = scene.num_points
  radius = grouping.VOXEL_FACTOR * float(voxel_size) if radius is None else float(radius)
  return grouping.offset_components(scene.coord, offsets, np.zeros(n, np.int32),
                                    np.ones(n, bool), voxel_size=voxel_size, radius=radius,
                                    k_neighbors=k_neighbors)


def baseline_methods(min_size: int, felzenszwalb_k: int = 10, felzenszwalb_scale: float = 1.0
                     ) -> dict[str, Callable[[Scene], np.ndarray]]:
  """name -> scene -> int32 [N] instance ids on raw coordinates."""
  return {
      "HDBSCAN": lambda s: baselines.hdbscan_instances(s.coord, min_cluster_size=min_size),
      "Felzenszwalb": lambda s: baselines.felzenszwalb_instances(
          s.coord, k_neighbors=felzenszwalb_k, scale=felzenszwalb_scale, min_size=min_size),
  }


def run(export_dir: str, data: str, *, out_dir: str, num_scenes: Optional[int] = None,
        split: str = "val", dataset: str = "", radius: Optional[float] = None,
        k_neighbors: int = 64, min_size: int = unsup_metrics.MIN_SIZE, batch_size: int = 2,
        log=print) -> dict:
  """Scores PointINS offsets + grouping and the two baselines on `num_scenes` scenes.

  Args:
    export_dir: `export/` folder of experiments.pretrain.
    data: 'synthetic-indoor' / 'synthetic-outdoor' (val scenes generated in memory) or a
      Pointcept root (its `split` folder is read).
    num_scenes: scenes to score (None: the whole split; synthetic: the export's num_scenes).
    radius: smallest linking distance in metres of the shifted points (default 1.5 voxels;
      the radius used also follows the scan's sampling spacing, see `grouping`).
    k_neighbors: neighbours per point in the radius graph.
    min_size: smallest GT / predicted instance in points (and HDBSCAN / FH minimum size).
  Returns:
    {method: {"mAP", "AP50", "AP25"}, "num_scenes", "settings", "figure"}; figure = PNG path.
  """
  export_config, apply_fn = load_pointins(export_dir)
  data_config = data_config_for(export_config, data, num_scenes=num_scenes, split=split,
                                dataset=dataset)
  voxel_size = float(data_config.grid_size)
  radius = grouping.VOXEL_FACTOR * voxel_size if radius is None else float(radius)
  capacities = functools.partial(model_configs.stage_capacities, export_config.model)
  methods = baseline_methods(min_size)
  evaluators = {m: unsup_metrics.UnsupervisedAPEvaluator(min_size) for m in METHODS}
  os.makedirs(out_dir, exist_ok=True)
  figure, count = None, 0
  limit = -1 if num_scenes is None else int(num_scenes)
  for i, scene in enumerate(inference.eval_scenes(data_config, limit)):
    if scene.instance is None:
      raise ValueError(f"{scene.source} (scene {scene.name!r}): has no instance labels.")
    offsets = inference.full_scan_predictions(scene, data_config, apply_fn,
                                              batch_size=batch_size,
                                              stage_capacities_fn=capacities)["offsets"]
    group = functools.partial(pointins_instances, scene, voxel_size=voxel_size, radius=radius,
                              k_neighbors=k_neighbors)
    predicted = {"PointINS": group(offsets)}
    predicted.update({name: fn(scene) for name, fn in methods.items()})
    predicted["Oracle"] = group(oracle.oracle_offsets(scene))
    for name, ids in predicted.items():
      evaluators[name].add_scene(scene.instance, ids)
    if i == 0:
      colors = visualize.label_colors
      panels = [("GT instances", scene.coord, colors(scene.instance))]
      panels += [(name, scene.coord, colors(ids)) for name, ids in predicted.items()]
      panels.append(("PointINS centroids x + offset (GT colours)", scene.coord + offsets,
                     colors(scene.instance)))
      figure = visualize.plot_panels(panels, os.path.join(out_dir, "unsup_instances.png"),
                                     suptitle=scene.name)
    count += 1
    log(f"scene {i + 1} ({scene.name}, {scene.num_points} points)")
  if count == 0:
    raise ValueError(f"--num-scenes={num_scenes}: no scene selected from --data {data}.")
  result = {name: {k: ev.result()[k] for k in ("mAP", "AP50", "AP25")}
            for name, ev in evaluators.items()}
  result.update(num_scenes=count, figure=figure,
                settings=dict(export=export_dir, data=data, split=split, voxel_size=voxel_size,
                              radius=radius,
                              k_neighbors=k_neighbors, min_size=min_size))
  return result
