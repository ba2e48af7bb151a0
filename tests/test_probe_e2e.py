"""End to end: pretrain the tiny model 1 step (offset-quality monitor on) -> linear insseg probe
-> unsupervised instances.

One test (so xdist keeps the shared pretraining run in one worker): ~2.5 min pretraining
compile on a 2-core CPU plus ~1.5 min per stage, less when the persistent XLA cache holds
the step already. Sizes: 2 synthetic-indoor rooms of ~1e4 points, 2048-point buckets,
1 validation scene.
"""
import json
import math
import os

import pytest

from configs import pointins_indoor
from configs import probe_indoor
from experiments import unsup_instances
from pointins_jax import metric_writer
from pointins_jax.pointins import loop as pretrain_loop
from pointins_jax.pointins import monitor
from pointins_jax.probe import oracle
from pointins_jax.probe import loop as probe_loop


def _in_unit_interval(value):
  return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def _pretrain(workdir):
  config = pointins_indoor.get_config("demo")
  config.data.num_scenes = 2
  config.train.update(total_steps=1, tensorboard=False, progress_bar=False, eval_every=1,
                      num_eval_scenes=1)
  pretrain_loop.train_and_evaluate(config, str(workdir))
  # The offset-quality monitor scored the weights before and after the step.
  evals = monitor.history(str(workdir))
  assert [m["step"] for m in evals] == [0, 1]
  for m in evals:
    assert set(monitor.KEYS) <= set(m) and m["offset_eval_scenes"] == 1
    assert m["offset_baseline_median"] > 0.1  # metres: points lie away from their centres
    assert 0.0 <= m["offset_closer_fraction"] <= 1.0 and m["offset_dist_mean"] > 0
  assert os.path.getsize(workdir / monitor.PLOT_NAME) > 10_000
  return str(workdir / "export")


def test_pretrain_then_probe_and_unsupervised_instances(tmp_path, capsys):
  export_dir = _pretrain(tmp_path / "pretrain")
  _check_linear_insseg_probe(export_dir, tmp_path / "probe", capsys)
  _check_unsup_instances_cli(export_dir, tmp_path / "unsup", capsys)


def _check_linear_insseg_probe(export_dir, tmp_path, capsys):
  config = probe_indoor.get_config("linear_insseg,demo")
  config.pretrained = export_dir
  config.data.num_scenes = 2
  config.data.label_fraction = 0.5  # one labelled training room
  config.train.update(total_steps=2, log_every=1, num_eval_scenes=1, num_figures=1,
                      tensorboard=False, progress_bar=False)
  record = probe_loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / "eval.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(record))
  assert saved["task"] == "insseg" and saved["step"] == 2 and saved["num_scenes"] == 1
  for key in ("mAP", "AP50", "AP25", "mIoU"):
    assert _in_unit_interval(saved[key]), (key, saved[key])
  # Two steps train nothing; the same evaluation fed ground-truth semantics and half-length
  # offsets must find the instances, or the scores above could never rise above 0.
  oracle_result = probe_loop.evaluate(config, None, log=lambda _: None, predictions_fn=lambda s: {
      "probs": oracle.oracle_probs(s, config.num_classes),
      "offsets": oracle.oracle_offsets(s, scale=0.5)})
  assert oracle_result["AP25"] > 0.5 and oracle_result["num_scenes"] == 1, oracle_result
  assert [os.path.basename(p) for p in saved["figures"]] == [
      "val_000_synthetic_indoor_1000000.png"]
  assert os.path.getsize(saved["figures"][0]) > 10_000
  steps = [m for m in metric_writer.read_metrics(str(tmp_path)) if "loss" in m]
  assert [m["step"] for m in steps] == [1, 2] and all(m["skipped"] == 0 for m in steps)
  assert "| chair" in capsys.readouterr().out  # the per-class table
  # A rerun resumes from the final checkpoint: no more steps, the same evaluation.
  again = probe_loop.train_and_evaluate(config, str(tmp_path))
  assert "Resumed from" in capsys.readouterr().out
  assert again["mAP"] == record["mAP"] and again["mIoU"] == record["mIoU"]


def _check_unsup_instances_cli(export_dir, out, capsys):
  unsup_instances.main(["--pretrained", export_dir, "--data", "synthetic-indoor",
                        "--num-scenes", "1", "--out", str(out)])
  text = capsys.readouterr().out
  assert all(f"| {name}" in text for name in ("PointINS", "HDBSCAN", "Felzenszwalb", "Oracle"))
  with open(out / "unsup_instances.json", encoding="utf-8") as f:
    result = json.load(f)
  assert result["num_scenes"] == 1 and result["settings"]["voxel_size"] == 0.02
  for name in ("PointINS", "HDBSCAN", "Felzenszwalb"):
    for key in ("mAP", "AP50", "AP25"):
      assert _in_unit_interval(result[name][key]), (name, key, result[name][key])
  # Ground-truth offsets through the same class-agnostic grouping find the instances: the
  # pipeline can score a network whose offsets are right.
  assert result["Oracle"]["AP50"] > 0.5, result["Oracle"]
  assert os.path.getsize(out / "unsup_instances.png") > 10_000


@pytest.mark.slow
def test_decoder_probe_evaluates_periodically(tmp_path):
  """Decoder probing of a random-init U-Net with eval_every: val metrics at steps 1 and 2."""
  config = probe_indoor.get_config("decoder_semseg,demo")
  config.data.num_scenes = 1
  config.train.update(total_steps=2, log_every=1, eval_every=1, num_eval_scenes=1,
                      num_figures=0, tensorboard=False, progress_bar=False)
  record = probe_loop.train_and_evaluate(config, str(tmp_path))
  assert record["mode"] == "decoder" and _in_unit_interval(record["mIoU"])
  evals = [m for m in metric_writer.read_metrics(str(tmp_path)) if "val_mIoU" in m]
  assert [m["step"] for m in evals] == [1, 2]
  assert all(_in_unit_interval(m["val_mIoU"]) for m in evals)
  assert evals[-1]["val_mIoU"] == record["mIoU"]
