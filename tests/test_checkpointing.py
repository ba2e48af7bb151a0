"""Checkpoint faults: an unreadable latest step, a full disk, SIGTERM (tiny states, no model)."""
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax import checkpointing


def _state(value: float):
  return {"w": jnp.full((2000,), value, jnp.float32), "step": jnp.int32(value)}


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
  return max(files, key=os.path.getsize)


def test_unreadable_latest_step_is_moved_aside_and_can_be_saved_again(tmp_path, capsys):
  directory = str(tmp_path / "ckpt")
  with checkpointing.Checkpointer(directory, save_every=1) as ckpt:
    for step in (1, 2):
      ckpt.save(step, _state(step), iterator_state={"pos": step})
  with open(_largest_file(os.path.join(directory, "2", "state")), "r+b") as f:
    f.truncate(8)  # a crash mid-write / a bad disk
  abstract = checkpointing.abstract_like(_state(0))
  with checkpointing.Checkpointer(directory, save_every=1) as ckpt:
    step, state, iterator_state, _ = ckpt.restore_latest(abstract)
    assert step == 1 and iterator_state == {"pos": 1}
    np.testing.assert_array_equal(state["w"], 1.0)
    # The run redoes step 2 and saves it: no StepAlreadyExistsError.
    assert ckpt.save(2, _state(2), force=True)
  lines = [l for l in capsys.readouterr().out.splitlines() if "unreadable" in l]
  assert len(lines) == 1 and "moved it to" in lines[0] and "resuming from step 1" in lines[0]
  assert sorted(os.listdir(directory)) == ["1", "2", "2.unreadable"]
  with checkpointing.Checkpointer(directory, save_every=1) as ckpt:
    step, state, _, _ = ckpt.restore_latest(abstract)
  assert step == 2 and float(state["w"][0]) == 2.0


def test_no_restorable_checkpoint_stops_instead_of_starting_over(tmp_path):
  directory = str(tmp_path / "ckpt")
  with checkpointing.Checkpointer(directory, save_every=1) as ckpt:
    ckpt.save(1, _state(1))
  wrong = checkpointing.abstract_like({"other": jnp.zeros(3)})  # e.g. a changed config
  with checkpointing.Checkpointer(directory, save_every=1) as ckpt:
    with pytest.raises(checkpointing.CheckpointError, match="new --workdir"):
      ckpt.restore_latest(wrong)
  assert os.listdir(directory) == ["1"]  # nothing moved


_DISK_FULL_SCRIPT = textwrap.dedent("""
    import resource, sys
    import jax.numpy as jnp
    import numpy as np
    from pointins_jax import checkpointing
    directory = sys.argv[1]
    with checkpointing.Checkpointer(directory, save_every=1) as ckpt:
      ckpt.save(1, {"w": jnp.zeros(10)})
      ckpt.wait()
      limit = 200_000  # bytes per file: step 2's 4 MB array cannot be written
      resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
      try:
        # random, so compression cannot shrink it under the limit
        ckpt.save(2, {"w": jnp.asarray(np.random.default_rng(0).random(1_000_000, np.float32))})
        ckpt.wait()
      except checkpointing.CheckpointError as error:
        print("ERROR:", error)
        sys.exit(3)
    """)


def test_file_size_limit_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
  directory = str(tmp_path / "ckpt")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", _DISK_FULL_SCRIPT, directory], env=env,
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 3, result.stderr[-2000:]
  error = [l for l in result.stdout.splitlines() if l.startswith("ERROR:")]
  assert len(error) == 1, result.stdout
  assert os.strerror(27) in error[0]  # EFBIG: "File too large"
  assert f"{directory}/1, is kept" in error[0]
  with checkpointing.Checkpointer(directory) as ckpt:
    step, state, _, _ = ckpt.restore_latest(checkpointing.abstract_like({"w": jnp.zeros(10)}))
  assert step == 1


def test_storage_error_found_in_a_wrapped_chain():
  try:
    try:
      raise OSError(28, "No space left on device")
    except OSError as inner:
      raise RuntimeError("async save failed") from inner
  except RuntimeError as outer:
    assert checkpointing.storage_error(outer) == os.strerror(28)
  assert checkpointing.storage_error(ValueError("[OS error 27: File too large]")) == \
      os.strerror(27)
  assert checkpointing.storage_error(ValueError("shape mismatch")) is None


def test_stop_signal_turns_sigterm_into_a_flag_and_restores_the_handler():
  before = signal.getsignal(signal.SIGTERM)
  with checkpointing.StopSignal() as stop:
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested
  assert signal.getsignal(signal.SIGTERM) is before
