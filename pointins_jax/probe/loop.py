"""The probing / fine-tuning loop: data -> sharded probe step -> metrics -> checkpoints -> eval.

Same structure as the pretraining loop (`pointins_jax.pointins.loop`): set up the mesh and
the labelled data, create (or restore) the sharded state, step / log / checkpoint until
`train.total_steps`, then evaluate on full validation scans (every original point gets a
prediction) and write `eval.json`, a per-class table and figures.

The model: with `config.pretrained` (an `export/` folder of experiments.pretrain) the
export's `config.model` and backbone weights; otherwise a fresh `config.model_variant`
PTv3. Linear probing keeps the decoder-free encoder; decoder probing and fine-tuning
switch to the U-Net (`enc_mode=False`), whose decoder starts from scratch.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from pointins_jax import checkpointing
from pointins_jax import compilation
from pointins_jax import export as export_lib
from pointins_jax import metric_writer
from pointins_jax import parallel
from pointins_jax.data import loader as loader_lib
from pointins_jax.data import views as views_lib
from pointins_jax.data import visualize
from pointins_jax.data.scene import Scene
from pointins_jax.metrics import instance as instance_metrics
from pointins_jax.metrics import offset_quality
from pointins_jax.metrics import panoptic as panoptic_metrics
from pointins_jax.metrics import protocol as protocol_lib
from pointins_jax.metrics import report
from pointins_jax.metrics import semantic as semantic_metrics
from pointins_jax.model import configs as model_configs
from pointins_jax.model import pointcept_import
from pointins_jax.probe import detection
from pointins_jax.probe import detection_eval
from pointins_jax.probe import detection_train
from pointins_jax.probe import grouping
from pointins_jax.probe import inference
from pointins_jax.probe import train as train_lib

# Scalars of each task's result that go to metrics.jsonl (prefixed "val_").
SUMMARY_KEYS = {"semseg": ("mIoU", "mAcc", "allAcc"), "insseg": ("mAP", "AP50", "AP25", "mIoU"),
                "panseg": ("PQ", "SQ", "RQ", "PQ_things", "PQ_stuff", "mIoU"),
                "detection": ("mAP", "NDS")}


def resolve_model(config) -> tuple[ml_collections.ConfigDict, Optional[dict]]:
  """A copy of `config` with `config.model` set, and the pretrained backbone params or None.

  Raises:
    ValueError: naming the config field when the export and the probe config disagree
      (input features) or an unsupported option is set.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy; the caller's stays
  pointcept = config.get("pretrained_pointcept", "")
  if pointcept and config.pretrained:
    raise ValueError("config.pretrained and config.pretrained_pointcept are both set; give one "
                     "(an export/ folder or a Pointcept checkpoint).")
  in_channels = sum(views_lib.FEATURE_WIDTHS[k] for k in config.data.feat_keys)
  pretrained = None
  if config.pretrained:
    export_config, params = export_lib.load_export(config.pretrained)
    model = inference.export_model_config(export_config)
    if tuple(export_config.data.feat_keys) != tuple(config.data.feat_keys):
      raise ValueError(
          f"config.data.feat_keys={tuple(config.data.feat_keys)} but the export "
          f"{config.pretrained} was pretrained on {tuple(export_config.data.feat_keys)}; "
          "set config.data.feat_keys to match.")
    pretrained = params["backbone"]
  else:
    # Random init, or a Pointcept checkpoint of this architecture (e.g. large for Sonata).
    model = model_configs.model_config(config.model_variant)
    model.in_channels = in_channels
    if pointcept:
      pretrained = pointcept_import.load_backbone(pointcept, model)
  if model.in_channels != in_channels:
    raise ValueError(f"model.in_channels={model.in_channels} but config.data.feat_keys="
                     f"{tuple(config.data.feat_keys)} give {in_channels} channels.")
  model.enc_mode = config.mode == "linear"
  if config.mode == "linear":
    # A frozen encoder should give one feature per point, not a stochastic-depth sample.
    model.drop_path = 0.0
  config.model = model
  return config, pretrained


def instance_targets(batch: dict) -> dict:
  """Per-point offset targets: the centroid of the point's instance within its view.

  Args:
    batch: host batch with coord f32 [B, P, 3] (view frame, metres), instance i32 [B, P]
      (-1 = none) and valid bool [B, P].
  Returns:
    {"instance_centroid": f32 [B, P, 3] (0 where none), "has_instance": bool [B, P]}.
    As Pointcept's InstanceParser after the crops: the centroid of the points that remain.
  """
  coord, inst = batch["coord"], batch["instance"]
  has = batch["valid"] & (inst >= 0)
  centroid = np.zeros_like(coord)
  for b in range(coord.shape[0]):
    centroid[b] = offset_quality.instance_centres(coord[b], np.where(has[b], inst[b], -1))[0]
  return {"instance_centroid": centroid, "has_instance": has}


def protocol_of(config) -> protocol_lib.Protocol:
  """The evaluation protocol of config.data.dataset, checked against config.num_classes."""
  if not config.data.dataset:
    raise ValueError("config.data.dataset is empty: name the dataset (e.g. scannet) so the "
                     "evaluation knows its classes.")
  protocol = protocol_lib.protocol_for(config.data.dataset)
  if protocol.num_classes != config.num_classes:
    raise ValueError(f"config.num_classes={config.num_classes} but dataset "
                     f"{config.data.dataset!r} has {protocol.num_classes} classes.")
  return protocol


def make_predict_fn(config, params):
  """numpy batch -> {"probs": [B, P, C], "offsets": [B, P, 3]}, jitted on one local device."""
  predict = inference.jitted_predictions(train_lib.predict, config, params)

  def apply(batch):
    probs, offsets = predict(batch)
    return {"probs": probs, "offsets": offsets}

  return apply


def model_predictions(config, params) -> Callable[[Scene], dict]:
  """scene -> {"probs": f32 [N, C], "offsets": f32 [N, 3]} of the probe model, full scan."""
  predict = make_predict_fn(config, params)
  capacities = functools.partial(model_configs.stage_capacities, config.model)
  return lambda scene: inference.full_scan_predictions(
      scene, config.data, predict, batch_size=config.train.batch_size,
      stage_capacities_fn=capacities)


def evaluate(config, params, *, figure_dir: Optional[str] = None, num_figures: int = 0,
             log=print, predictions_fn: Optional[Callable[[Scene], dict]] = None) -> dict:
  """Scores `params` on the first `train.num_eval_scenes` full val scans.

  Semseg: mIoU / mAcc / allAcc; insseg: ScanNet AP / AP50 / AP25 of PointGroup proposals
  (plus mIoU); panseg: PQ / SQ / RQ and mIoU. Figures of the first `num_figures` scenes
  go to `figure_dir` as PNGs.

  Args:
    predictions_fn: scene -> {"probs" [N, C], "offsets" [N, 3]} replacing the model's
      (`model_predictions(config, params)`), e.g. `probe.oracle` predictions that check the
      grouping and metrics; `params` is then unused.
  Returns:
    the task's metric result dict (`pointins_jax.metrics`), plus "num_scenes" and
    "figures" (paths written).
  """
  protocol = protocol_of(config)
  if predictions_fn is None:
    predictions_fn = model_predictions(config, params)
  num_classes = protocol.num_classes
  confusion = np.zeros((num_classes, num_classes + 1), np.int64)
  evaluator = None
  if config.task == "insseg":
    evaluator = instance_metrics.InstanceAPEvaluator(
        num_classes, protocol.instance_ignore_classes, protocol.class_names,
        min_region_size=config.grouping.min_points)
  elif config.task == "panseg":
    evaluator = panoptic_metrics.PanopticEvaluator(
        num_classes, protocol.thing_classes, protocol.class_names, protocol.panoptic_min_points)
  figures, num_scenes = [], 0
  for i, scene in enumerate(inference.eval_scenes(config.data, config.train.num_eval_scenes)):
    if scene.segment is None or (evaluator is not None and scene.instance is None):
      raise ValueError(f"{scene.source} (scene {scene.name!r}): the {config.data.eval_split!r} "
                       f"split lacks the labels config.task={config.task!r} is scored on.")
    out = predictions_fn(scene)
    pred_segment = out["probs"].argmax(-1).astype(np.int32)
    confusion += semantic_metrics.confusion_matrix(scene.segment, pred_segment, num_classes)
    pred_instance = None
    if evaluator is not None:
      things = (protocol.instance_classes if config.task == "insseg"
                else protocol.thing_classes)
      proposals = grouping.pointgroup_proposals(
          scene.coord, out["offsets"], out["probs"], np.ones(scene.num_points, bool), things,
          voxel_size=config.data.grid_size, radius=config.grouping.radius,
          k_neighbors=config.grouping.k_neighbors, min_points=config.grouping.min_points)
      pred_instance = proposals.to_instance_ids()
      if config.task == "insseg":
        evaluator.add_scene(scene.segment, scene.instance, proposals.masks, proposals.classes,
                            proposals.scores, name=scene.name)
      else:
        evaluator.add_scene(scene.segment, scene.instance, pred_segment, pred_instance,
                            name=scene.name)
    if figure_dir is not None and i < num_figures:
      os.makedirs(figure_dir, exist_ok=True)
      figures.append(_scene_figure(os.path.join(figure_dir, f"val_{i:03d}_{scene.name}.png"),
                                   scene, pred_segment, pred_instance, out["offsets"]))
    num_scenes += 1
    log(f"eval scene {i + 1} ({scene.name}, {scene.num_points} points)")
  if num_scenes == 0:
    raise ValueError("config.train.num_eval_scenes selects no validation scene (or the "
                     f"{config.data.eval_split!r} split of config.data is empty).")
  semantic_result = semantic_metrics.iou_from_confusion(confusion, protocol.class_names)
  if config.task == "semseg":
    result = semantic_result
  else:
    result = evaluator.result()
    if config.task == "insseg":  # the semantic head is trained too; report it
      result.update({k: semantic_result[k] for k in ("mIoU", "mAcc", "allAcc")})
  result.update(num_scenes=num_scenes, figures=figures)
  return result


def _scene_figure(path, scene, pred_segment, pred_instance, offsets) -> str:
  """GT vs predicted instances and the predicted centroids (semantics for semseg)."""
  colors = visualize.label_colors
  if pred_instance is None:
    panels = [("GT semantics", scene.coord, colors(scene.segment)),
              ("predicted semantics", scene.coord, colors(pred_segment))]
  else:
    panels = [("GT instances", scene.coord, colors(scene.instance)),
              ("predicted instances", scene.coord, colors(pred_instance)),
              ("predicted centroids x + offset (GT colours)", scene.coord + offsets,
               colors(scene.instance))]
  return visualize.plot_panels(panels, path, suptitle=scene.name)


def write_eval(workdir: str, config, result: dict, step: int) -> dict:
  """Writes `workdir/eval.json` (a plain dict) and returns it."""
  record = dict(report.jsonable(result), task=config.task, mode=config.mode, step=int(step),
                pretrained=config.pretrained)
  with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, allow_nan=True)
  return record


def _check_total_steps(config) -> int:
  if config.train.total_steps <= 0:
    raise ValueError(f"config.train.total_steps={config.train.total_steps} must be positive.")
  return int(config.train.total_steps)


def _train_module(config):
  """The task's state / step module: `probe.train`, or `probe.detection_train` (Table 11)."""
  if config.task == "detection":
    detection_train.check_mode(config)
    return detection_train
  return train_lib


def _host_targets(config, host_batch: dict, spec) -> dict:
  """Host-side targets: instance centroids, or detection heatmaps / box regression."""
  if config.task != "detection":
    return instance_targets(host_batch)
  targets = detection.build_targets(host_batch, spec)
  # Boxes a crop left out or outside the BEV grid: counted, never silent.
  targets["boxes_dropped"] = (np.sum(host_batch.pop("boxes_dropped", 0))
                              + np.sum(targets.pop("boxes_outside")))
  return targets


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) probing into `workdir`; returns the final evaluation record."""
  config, pretrained = resolve_model(config)
  task_lib = _train_module(config)
  spec = None
  if config.task == "detection":
    spec = detection.spec_from_config(config.detection)  # fail on a bad grid before compiling
  else:
    protocol_of(config)  # fail on a wrong dataset / num_classes before any compile
  mesh, is_main = parallel.start_run(config, workdir)

  # Data: labelled scenes (data.label_fraction of them), each process its own slice.
  capacities = functools.partial(model_configs.stage_capacities, config.model)
  iterator = loader_lib.make_probe_iterator(
      config.data, seed=config.seed, batch_size=config.train.batch_size // jax.process_count(),
      stage_capacities_fn=capacities, shard_index=jax.process_index(),
      shard_count=jax.process_count())
  total_steps = _check_total_steps(config)

  # State: shapes from eval_shape, created already replicated; the pretrained weights are
  # an argument (not a constant baked into the compiled init).
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  def init(init_rng, pretrained):
    return task_lib.init_probe_state(config, init_rng, total_steps,
                                     pretrained_backbone=pretrained)

  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh),
                                jax.eval_shape(init, init_rng, pretrained))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.train.keep_checkpoints,
                                    save_every=config.train.checkpoint_every)
  start, state = checkpointing.create_or_restore(ckpt, init, (init_rng, pretrained),
                                                 state_sharding, iterator)

  def probe_step(state, batch, rng, stage_capacities):
    return task_lib.probe_step(state, batch, rng, config=config, total_steps=total_steps,
                               stage_capacities=stage_capacities)

  # stage_capacities (a tuple from the capacity ladder) is static: one compile per value.
  planner = compilation.CapacityPlanner()
  compiles = compilation.counter()  # listening before the first compilation
  compiles_before = compiles.snapshot("probe_step")  # other runs of this process
  step_fn = jax.jit(
      probe_step,
      in_shardings=(state_sharding, parallel.batch_sharded(mesh), parallel.replicated(mesh)),
      out_shardings=(state_sharding, parallel.replicated(mesh)), donate_argnums=(0,),
      static_argnums=(3,))
  writer = metric_writer.MetricWriter(workdir, enabled=is_main,
                                      tensorboard=config.train.tensorboard, resume_step=start)
  bar = tqdm(range(start, total_steps), initial=start, total=total_steps,
             desc=f"probe {config.mode}_{config.task}",
             disable=not is_main or not config.train.progress_bar, dynamic_ncols=True)
  log = bar.write if config.train.progress_bar else print
  t_log, steps_since_log = time.perf_counter(), 0
  dropped = loader_lib.DroppedData()  # crops and skipped scenes between log lines
  stop_after = config.train.get("stop_after_steps", 0)  # simulates a kill (tests, preemption)
  eval_every = int(config.train.eval_every)
  boxes_dropped, last = 0, {}
  # Leaving by any path waits for the save in flight; SIGTERM saves and raises Preempted.
  with ckpt, writer, checkpointing.StopSignal() as stop:
    for step in bar:
      if stop_after and step >= start + stop_after:
        return {}
      host_batch = next(iterator)
      dropped.add(host_batch)
      host_batch.update(_host_targets(config, host_batch, spec))
      boxes_dropped += int(host_batch.pop("boxes_dropped", 0))
      batch = parallel.put_batch({k: host_batch[k] for k in task_lib.BATCH_KEYS}, mesh)
      state, metrics = step_fn(state, batch, jax.random.fold_in(step_rng, step),
                               parallel.step_capacities(host_batch, planner))
      steps_since_log += 1
      if (step + 1) % config.train.log_every == 0 or step + 1 == total_steps or step == start:
        last = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
        elapsed = time.perf_counter() - t_log  # fetching metrics waited for the device
        num_compiles, compile_seconds = (
            now - before for now, before in zip(compiles.snapshot("probe_step"), compiles_before))
        last.update(step_time=elapsed / steps_since_log, **dropped.pop(), compiles=num_compiles,
                    compile_seconds=compile_seconds)
        if config.task == "detection":
          last["boxes_dropped"], boxes_dropped = boxes_dropped, 0
        t_log, steps_since_log = time.perf_counter(), 0
        record = writer.write(step + 1, last)
        if is_main:
          log(json.dumps({k: record[k] for k in ("step", "loss", "loss_semantic",
                                                 "loss_offset", "accuracy", "loss_heatmap",
                                                 "loss_reg", "skipped")
                          if k in record}))
          bar.set_postfix(loss=f"{float(last['loss']):.4f}")
      ckpt.save_or_stop(step + 1, state, iterator, total_steps, stop)
      if eval_every > 0 and (step + 1) % eval_every == 0 and step + 1 < total_steps and is_main:
        result = _evaluate(config, state.params, log=log)
        writer.write(step + 1, _summary(config, result))
    ckpt.wait()
    record = {}
    if is_main:
      result = _evaluate(config, state.params, workdir=workdir,
                         num_figures=config.train.num_figures, log=log)
      writer.write(total_steps, _summary(config, result))
      if config.task == "detection":  # the last logged training losses (this run's)
        result["train"] = {k: float(v) for k, v in last.items() if np.ndim(v) == 0}
      record = write_eval(workdir, config, result, total_steps)
      if config.task == "detection":
        print(detection_eval.format_result(result), flush=True)
      else:
        print(report.format_result(result, config.task), flush=True)
  return record


def _evaluate(config, params, *, workdir: Optional[str] = None, num_figures: int = 0, log=print):
  if config.task == "detection":
    return detection_eval.evaluate(config, params, out_dir=workdir, num_figures=num_figures,
                                   log=log)
  return evaluate(config, params, log=log, num_figures=num_figures,
                  figure_dir=None if workdir is None else os.path.join(workdir, "figures"))


def _summary(config, result: dict) -> dict:
  return {f"val_{k}": result[k] for k in SUMMARY_KEYS[config.task] if k in result}
