"""End-to-end pretraining: the loss falls, resume reproduces, export round-trips."""
import json
import os

import numpy as np
import pytest

from configs import pointins_indoor
from pointins_jax import export as export_lib
from pointins_jax import metric_writer
from pointins_jax.pointins import loop


def small_config(**train):
  config = pointins_indoor.get_config("demo")
  config.data.num_scenes = 4
  config.train.tensorboard = False
  config.train.progress_bar = False
  config.train.update(train)
  return config


def _fitted(config):
  """Data-following stage capacities (the demo keeps fixed ones): the resumed run's planner
  starts empty and may pick other compiled profiles, which must not change the results."""
  config.model.capacity_steps_per_octave = 2
  return config


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
  full = _fitted(small_config(total_steps=5, log_every=1, checkpoint_every=2))
  loop.train_and_evaluate(full, str(tmp_path / "full"))
  killed = _fitted(small_config(total_steps=5, log_every=1, checkpoint_every=2,
                                stop_after_steps=3))
  loop.train_and_evaluate(killed, str(tmp_path / "resumed"))  # dies after step 3, saved at 2
  resumed = _fitted(small_config(total_steps=5, log_every=1, checkpoint_every=2))
  loop.train_and_evaluate(resumed, str(tmp_path / "resumed"))
  a = {m["step"]: m for m in metric_writer.read_metrics(str(tmp_path / "full"))}
  rows = metric_writer.read_metrics(str(tmp_path / "resumed"))
  # One run: the killed run's step-3 row (past its checkpoint at 2) was dropped on resume.
  assert [m["step"] for m in rows] == [1, 2, 3, 4, 5]
  b = {m["step"]: m for m in rows}
  assert sorted(a) == [1, 2, 3, 4, 5]
  # The step's compilation is counted from the first one (data-following capacities may
  # add a few; a compile per step would show here).
  assert 1 <= a[1]["compiles"] <= a[5]["compiles"] <= 3
  for step in a:
    assert a[step]["skipped"] == 0, f"step {step} skipped its update (non-finite gradient)"
    for key in ("loss", "loss_semantic", "grad_norm"):
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=1e-5, err_msg=f"{key}@{step}")


def test_export_round_trips(tmp_path):
  config = small_config(total_steps=1, log_every=1)
  loop.train_and_evaluate(config, str(tmp_path))
  exported_config, params = export_lib.load_export(str(tmp_path / "export"))
  # JSON turns tuples into lists; compare the JSON forms.
  assert json.loads(exported_config.model.to_json()) == json.loads(config.model.to_json())
  assert set(params) == {"backbone", "offset_head", "projection_head"}
  with pytest.raises(FileNotFoundError, match="export"):
    export_lib.load_export(str(tmp_path / "nope"))


def test_demo_loss_falls(tmp_path):
  config = small_config(total_steps=60, log_every=5)
  loop.train_and_evaluate(config, str(tmp_path))
  # The KL part of the semantic loss: its cross-entropy moves with the teacher temperature.
  losses = [m["semantic_kl"] for m in metric_writer.read_metrics(str(tmp_path))]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert os.path.isdir(tmp_path / "export" / "params")
