"""One line per bad input (pointins_jax.cli) and a quiet JAX start on CPU machines.

The subprocess tests run the real entry points the way a user does; the in-process ones
drive `cli.run` with the readers and the loader directly.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import show_scene
from pointins_jax import cli
from pointins_jax.data import config as config_lib
from pointins_jax.data import loader
from pointins_jax.data import pointcept_io
from tests.test_views import make_scene

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NOISE = ("cudart_stub", "Unable to load CUDA", "Traceback", "absl::InitializeLog")


def _user_env():
  env = dict(os.environ)
  env.pop("JAX_PLATFORMS", None)  # as a user's shell: cli decides
  env.pop(cli.DEBUG_ENV, None)
  return env


def _run(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_user_env(),
                          capture_output=True, text=True, timeout=300)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  return result.returncode, lines


def _assert_one_line(lines, *expected):
  assert len(lines) == 1, "\n".join(lines)
  for text in expected:
    assert text in lines[0], lines[0]
  if not cli.has_nvidia_gpu():
    assert not any(noise in lines[0] for noise in _NOISE)


PRETRAIN = ("experiments.pretrain", "--config", "configs/pointins_indoor.py:demo")


@pytest.mark.parametrize("flag,status,expected", [
    ("--config.nosuch=1", 2, ("--config.nosuch", "no field 'nosuch'", "config_reference")),
    ("--config.data.buckets=abc", 1, ("buckets=", "positive integer")),
    ("--config.train.batch_size=0", 1, ("config.train.batch_size=0 must be positive",)),
])
def test_pretrain_bad_flags_are_one_line(tmp_path, flag, status, expected):
  rc, lines = _run(*PRETRAIN, "--workdir", str(tmp_path / "run"), flag)
  assert rc == status
  _assert_one_line(lines, "pretrain: error:", *expected)


def test_unwritable_workdir_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")  # a workdir that cannot be a folder (root ignores modes)
  rc, lines = _run(*PRETRAIN, "--workdir", str(tmp_path / "file"))
  assert rc == 1
  _assert_one_line(lines, f"{tmp_path / 'file'}: cannot write the run folder",
                   "writable --workdir")


@pytest.mark.skipif(cli.has_nvidia_gpu(), reason="the CUDA noise is a CPU-machine problem")
def test_cli_on_cpu_machine_prints_no_cuda_noise(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.prepare_data", "synthetic-indoor", "--out",
       str(tmp_path / "d"), "--num-scenes", "1", "--small", "--val-fraction", "0"],
      cwd=ROOT, env=_user_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  for noise in _NOISE:
    assert noise not in result.stderr
  # The user's own JAX_PLATFORMS is left alone (an unknown platform then fails loudly).
  env = dict(_user_env(), JAX_PLATFORMS="nosuchplatform")
  probe = subprocess.run([sys.executable, "-c", "from pointins_jax import cli; import os; "
                          "print(os.environ['JAX_PLATFORMS'])"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
  assert probe.stdout.strip() == "nosuchplatform"


def test_debug_shows_the_traceback(monkeypatch):
  def main(argv):
    raise ValueError("config.x=1 is wrong; set it to 2.")
  assert cli.run(main, [], name="tool") == 1
  with pytest.raises(ValueError, match="config.x"):
    cli.run(main, ["--debug"], name="tool")
  monkeypatch.setenv(cli.DEBUG_ENV, "1")
  with pytest.raises(ValueError, match="config.x"):
    cli.run(main, [], name="tool")


def test_oserror_and_product_error_lines(capsys):
  def unwritable(argv):
    raise PermissionError(13, "Permission denied", "/data/run/metrics.jsonl")
  assert cli.run(unwritable, [], name="tool") == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("tool: error: /data/run/metrics.jsonl: Permission denied; choose a")
  def full(argv):
    raise OSError(28, "No space left on device", "/data/run/metrics.jsonl")
  assert cli.run(full, [], name="tool") == 1
  assert "free disk space" in capsys.readouterr().err
  def interrupted(argv):
    raise KeyboardInterrupt
  assert cli.run(interrupted, [], name="tool") == 130


def _scene_dir(tmp_path, name="s0", n=3000):
  folder = str(tmp_path / "train" / name)
  pointcept_io.write_scene(make_scene(n, 0), folder)
  return folder


@pytest.mark.parametrize("case", ["nan", "empty", "length", "segment_range"])
def test_bad_pointcept_scene_is_one_line_naming_the_file(tmp_path, capsys, case):
  folder = _scene_dir(tmp_path)
  coord = np.load(os.path.join(folder, "coord.npy"))
  if case == "nan":
    coord[7] = np.nan
    np.save(os.path.join(folder, "coord.npy"), coord)
    expected = ("coord.npy", "NaN/inf")
  elif case == "empty":
    for name in os.listdir(folder):
      array = np.load(os.path.join(folder, name))
      np.save(os.path.join(folder, name), array[:0])
    expected = ("s0", "empty (0 points)")
  elif case == "length":
    np.save(os.path.join(folder, "segment.npy"), np.zeros(10, np.int32))
    expected = ("segment.npy", "coord.npy has 3000 points")
  else:
    segment = np.load(os.path.join(folder, "segment.npy"))
    segment[0] = 20
    np.save(os.path.join(folder, "segment.npy"), segment)
    expected = ("s0", "class id 20", "20 classes")
  # Read for a scannet-like dataset (segment ids checked), as pretraining / probing does.
  args = [folder, "--out", str(tmp_path / "x.png")]
  if case == "segment_range":
    os.rename(os.path.join(folder, "segment.npy"), os.path.join(folder, "segment20.npy"))
    args += ["--dataset", "scannet"]
  assert show_scene.main(args) == 1
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  _assert_one_line(err, "show_scene: error:", *expected)


def test_show_scene_without_dataset_shows_unknown_class_ids(tmp_path):
  folder = _scene_dir(tmp_path)
  segment = np.load(os.path.join(folder, "segment.npy"))
  segment[:5] = 57  # no class of the inferred ScanNet-20 names: shown as "57"
  np.save(os.path.join(folder, "segment.npy"), segment)
  out = str(tmp_path / "x.html")
  assert show_scene.main([folder, "--color", "semantic", "--out", out]) == 0
  with open(out, encoding="utf-8") as f:
    assert '"57"' in f.read()


def _pretrain_data(tmp_path, **overrides):
  c = config_lib.data_config("indoor")
  c.update(root=str(tmp_path), dataset="", batch_size=1, shuffle=False, grid_size=0.05,
           buckets=(2048, 4096), **overrides)
  return c


def test_pretraining_bad_scene_under_raise_policy_is_one_line(tmp_path, capsys):
  folder = _scene_dir(tmp_path)
  coord = np.load(os.path.join(folder, "coord.npy"))
  coord[3] = np.inf
  np.save(os.path.join(folder, "coord.npy"), coord)
  config = _pretrain_data(tmp_path, bad_scenes="raise")
  assert cli.run(lambda argv: next(loader.make_pretrain_iterator(config, seed=0)), [],
                 name="pretrain") == 1
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  _assert_one_line(err, "pretrain: error:", "s0/coord.npy", "NaN/inf")


def test_scene_under_min_view_points_names_the_file(tmp_path, capsys):
  pointcept_io.write_scene(make_scene(3000, 0).subset(np.arange(20)),
                           str(tmp_path / "train" / "tiny"))
  config = _pretrain_data(tmp_path)
  assert cli.run(lambda argv: next(loader.make_pretrain_iterator(config, seed=0)), [],
                 name="pretrain") == 1
  err = [line for line in capsys.readouterr().err.splitlines() if line.strip()
         and "bad scene skipped" not in line]
  _assert_one_line(err, "every one of the 1 scenes is unreadable", "tiny",
                   "20 points, fewer than data config min_view_points=64")
