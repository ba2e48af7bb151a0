"""Detection probe (Table 11) end to end on synthetic-outdoor, and frozen vs trained encoders.

Tiny model, random init, 2048-point buckets, a 32 x 32 BEV grid: the e2e test compiles the
step and the prediction (~2-4 min on a 2-core CPU), the freezing test one gradient.
"""
import json
import os

import flax
import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import probe_outdoor
from pointins_jax import metric_writer
from pointins_jax.data import loader as loader_lib
from pointins_jax.model import configs as model_configs
from pointins_jax.probe import detection
from pointins_jax.probe import detection_train
from pointins_jax.probe import loop as probe_loop
from pointins_jax.probe import train as train_lib


def _config(variant):
  config = probe_outdoor.get_config(f"{variant},demo")
  config.data.num_scenes = 2
  config.data.max_boxes = 32
  config.detection.update(xy_range=(-25.6, -25.6, 25.6, 25.6), bev_cell=1.6, bev_channels=8,
                          neck_channels=8, head_channels=8, topk=50)
  config.train.update(total_steps=2, log_every=1, num_eval_scenes=1, num_figures=1,
                      tensorboard=False, progress_bar=False)
  return config


def test_config_variants():
  for variant in ("decoder_detection", "finetune_detection"):
    config = probe_outdoor.get_config(variant + ",demo")
    assert config.task == "detection" and config.data.with_boxes
    assert config.data.augment.rotate_xy_p == 0 and config.num_classes == 10
    spec = detection.spec_from_config(config.detection)
    assert spec.height == spec.width == 96 and not spec.with_velocity
  config = probe_outdoor.get_config("decoder_detection,dataset=nuscenes,root=/data/nuscenes")
  spec = detection.spec_from_config(config.detection)
  assert spec.with_velocity and spec.height == 128 and len(spec.groups) == 6
  config = probe_outdoor.get_config("linear_detection,demo")
  with pytest.raises(ValueError, match="config.mode='linear'"):
    detection_train.check_mode(config)


def test_decoder_detection_probe_runs_and_writes_predictions(tmp_path, capsys):
  config = _config("decoder_detection")
  record = probe_loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "eval.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(record))
  assert saved["task"] == "detection" and saved["mode"] == "decoder" and saved["step"] == 2
  assert saved["num_scenes"] == 1 and saved["num_gt_boxes"] > 0
  assert np.isfinite(saved["train"]["loss"]) and saved["train"]["loss_heatmap"] > 0
  assert 0.0 <= saved["mAP"] <= 1.0 and 0.0 <= saved["NDS"] <= 1.0
  assert saved["per_class"]["car"]["num_gt"] > 0
  files = os.listdir(tmp_path / "predictions")
  assert len(files) == 1
  with np.load(tmp_path / "predictions" / files[0]) as pred:
    assert {"box_center", "box_size", "box_yaw", "box_label", "box_score"} <= set(pred.files)
    n = pred["box_score"].shape[0]
    assert pred["box_center"].shape == (n, 3) and pred["box_size"].shape == (n, 3)
    assert n == saved["num_predictions"] and np.all(pred["box_score"] > 0.1)
  assert os.path.getsize(saved["figures"][0]) > 10_000
  steps = [m for m in metric_writer.read_metrics(str(tmp_path)) if "loss" in m]
  assert [m["step"] for m in steps] == [1, 2] and all(m["skipped"] == 0 for m in steps)
  assert all(m["num_boxes"] > 0 for m in steps) and "boxes_dropped" in steps[0]
  assert "| car |" in capsys.readouterr().out  # the per-class table


def _batch_and_state(config):
  spec = detection.spec_from_config(config.detection)
  caps = lambda n, counts=None: model_configs.stage_capacities(config.model, n)
  batch = next(loader_lib.make_probe_iterator(config.data, seed=0, batch_size=1,
                                              stage_capacities_fn=caps))
  batch.update(detection.build_targets(batch, spec))
  batch = {k: batch[k] for k in detection_train.BATCH_KEYS}
  state = detection_train.init_probe_state(config, jax.random.key(0), 10)
  return batch, state, tuple(model_configs.stage_capacities(config.model, 2048))


def _changed(before, after, part):
  """{path: changed} of the encoder / decoder / head parameters."""
  flat_b = flax.traverse_util.flatten_dict(before)
  flat_a = flax.traverse_util.flatten_dict(after)
  def of(path):
    if path[0] == "head":
      return "head"
    return "decoder" if any(p.startswith("dec") for p in path[1:]) else "encoder"
  return {path: not np.array_equal(flat_b[path], flat_a[path])
          for path in flat_b if of(path) == part}


@pytest.mark.slow  # 140 s on the 2-core CI machine: two probe trainings
def test_encoder_frozen_only_in_decoder_mode():
  """One gradient (one compile), then each mode's optimizer (the step's own) applied."""
  config, _ = probe_loop.resolve_model(_config("decoder_detection"))
  batch, state, caps = _batch_and_state(config)
  net = detection_train.build_network(config)
  grads = jax.jit(jax.grad(lambda p: detection_train.detection_loss(
      p, batch, jax.random.key(1), net, config, caps)[0]))(state.params)
  for mode in ("decoder", "finetune"):
    mode_config = ml_collections.ConfigDict(config.to_dict())
    mode_config.mode = mode
    optimizer = train_lib.build_optimizer(mode_config, 10, state.params)
    updates, _ = optimizer.update(grads, optimizer.init(state.params), state.params)
    after = optax.apply_updates(state.params, updates)
    encoder = _changed(state.params, after, "encoder")
    assert encoder and any(_changed(state.params, after, "decoder").values())
    assert any(_changed(state.params, after, "head").values())
    assert any(encoder.values()) == (mode == "finetune"), mode
    if mode == "decoder":
      assert not any(encoder.values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["decoder", "finetune"])
def test_probe_step_freezes_encoder_in_decoder_mode(mode):
  """The same through the jitted probe step (two compiles: slow)."""
  config, _ = probe_loop.resolve_model(_config(f"{mode}_detection"))
  batch, state, caps = _batch_and_state(config)
  before = jax.device_get(state.params)
  step = jax.jit(lambda s, b, r: detection_train.probe_step(
      s, b, r, config=config, total_steps=10, stage_capacities=caps))
  state, metrics = step(state, batch, jax.random.key(1))
  assert int(metrics["skipped"]) == 0
  after = jax.device_get(state.params)
  assert any(_changed(before, after, "encoder").values()) == (mode == "finetune")
  assert any(_changed(before, after, "decoder").values())
  assert any(_changed(before, after, "head").values())
