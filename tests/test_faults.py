"""Faults in real pretraining runs (slow: each run compiles the demo train step).

A corrupt newest checkpoint, SIGTERM and an exception mid-run must never lose work or trap
the run. The fast checks of the same machinery are in test_checkpointing.py.
"""
import os
import signal

import pytest

from pointins_jax import checkpointing
from pointins_jax import metric_writer
from pointins_jax.data import loader as loader_lib
from pointins_jax.data.scene import SceneError
from pointins_jax.pointins import loop
from tests.test_checkpointing import _largest_file
from tests.test_pretrain import small_config

pytestmark = pytest.mark.slow


class _FaultyIterator:
  """Delegates to the real iterator; calls `fault()` before handing out batch `at` (0-based)."""

  def __init__(self, iterator, at, fault):
    self._iterator, self._at, self._fault, self._count = iterator, at, fault, 0

  def __next__(self):
    if self._count == self._at:
      self._fault()
    self._count += 1
    return next(self._iterator)

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)


def _inject(monkeypatch, at, fault):
  make = loader_lib.make_pretrain_iterator
  monkeypatch.setattr(loader_lib, "make_pretrain_iterator",
                      lambda *a, **k: _FaultyIterator(make(*a, **k), at, fault))


def _steps(workdir):
  return [m["step"] for m in metric_writer.read_metrics(workdir)]


def test_corrupt_latest_checkpoint_is_moved_aside_and_the_run_finishes(tmp_path, capsys):
  workdir = str(tmp_path)
  config = small_config(total_steps=4, log_every=1, checkpoint_every=2)
  loop.train_and_evaluate(config, workdir)
  with open(_largest_file(os.path.join(workdir, "checkpoints", "4", "state")), "r+b") as f:
    f.truncate(16)
  loop.train_and_evaluate(config, workdir)  # falls back to 2, redoes 3-4, saves 4 again
  out = capsys.readouterr().out
  assert "checkpoints/4 is unreadable" in out and "resuming from step 2" in out
  assert {"2", "4", "4.unreadable"} <= set(os.listdir(os.path.join(workdir, "checkpoints")))
  assert _steps(workdir) == [1, 2, 3, 4]
  assert os.path.isdir(os.path.join(workdir, "export", "params"))


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  config = small_config(total_steps=4, log_every=1, checkpoint_every=100)
  _inject(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(checkpointing.Preempted) as stopped:
    loop.train_and_evaluate(config, workdir)
  assert stopped.value.step == 3  # the handler fired before batch 3; step 3 finished first
  # orbax also saves the first step of a run; step 3 is the SIGTERM save.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "3"]
  assert signal.getsignal(signal.SIGTERM) is before
  monkeypatch.undo()
  loop.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [1, 2, 3, 4]


def test_error_mid_run_keeps_the_checkpoint_in_flight(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  config = small_config(total_steps=4, log_every=1, checkpoint_every=2)
  def bad_scene():
    raise SceneError("scene s7: unreadable")
  _inject(monkeypatch, 2, bad_scene)  # right after step 2's asynchronous save started
  with pytest.raises(SceneError):
    loop.train_and_evaluate(config, workdir)
  # Step 2's save was in flight when the error came: it is finalized (no *-tmp folder).
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  monkeypatch.undo()
  loop.train_and_evaluate(config, workdir)
  assert _steps(workdir) == [1, 2, 3, 4]


def test_file_size_limit_in_a_cli_run_is_one_line(tmp_path):
  import shlex
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # No compilation cache: its files would meet the limit too.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  command = [sys.executable, "-m", "experiments.pretrain", "--config",
             "configs/pointins_indoor.py:demo", "--workdir", str(tmp_path),
             "--config.train.total_steps=3", "--config.train.checkpoint_every=1",
             "--config.data.num_scenes=2", "--config.train.progress_bar=False",
             "--config.train.tensorboard=False"]
  # ulimit -f (1 KiB blocks) in a shell: no preexec_fn fork from this threaded process.
  # 300 KB per file: the step-1 checkpoint's data files do not fit.
  result = subprocess.run(["bash", "-c", f"ulimit -f 293 && exec {shlex.join(command)}"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1200)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1
  assert len(lines) == 1, result.stderr[-3000:]
  assert "writing checkpoint step 1 failed (File too large)" in lines[0]
