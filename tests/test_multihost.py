"""Two processes on this machine (jax.distributed, CPU collectives) pretrain, are killed,
resume, and agree; the data split covers each scene once per epoch (slow)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_pair(workdir, phase, tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  outs = [str(tmp_path / f"{phase}{i}.json") for i in range(2)]
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_check.py"), str(i),
                             str(port), workdir, phase, outs[i]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    logs = [p.communicate(timeout=1500)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  seen = []
  for out in outs:
    with open(out, encoding="utf-8") as f:
      seen.append(json.load(f))
  return seen


def test_two_processes_pretrain_resume_and_agree(tmp_path):
  workdir = str(tmp_path / "run")
  killed = _run_pair(workdir, "killed", tmp_path)
  resumed = _run_pair(workdir, "resumed", tmp_path)
  for a, b in (killed, resumed):
    assert (a["process_index"], b["process_index"]) == (0, 1)
    assert a["process_count"] == 2 and a["devices"] == 2
    # Same global loss and the same parameters on both processes.
    assert a["records"] == b["records"]
    assert a["params"].keys() == b["params"].keys()
    for step in a["params"]:
      np.testing.assert_allclose(a["params"][step], b["params"][step], rtol=1e-6)
  assert [r["step"] for r in killed[0]["records"]] == [1, 2, 3]
  assert [r["step"] for r in resumed[0]["records"]] == [3, 4]
  # The resumed run redid step 3 from the step-2 checkpoint: the same loss as before.
  np.testing.assert_allclose(resumed[0]["records"][0]["loss"], killed[0]["records"][2]["loss"],
                             rtol=1e-5)
  # orbax saves a run's first step too; the resumed run saves only the last one.
  assert list(killed[0]["params"]) == ["1", "2"] and list(resumed[0]["params"]) == ["4"]
  # Each process reads its own half of the 6 scenes, each once in its first epoch (3 steps).
  first_epoch = [set(p["reads"][:3]) for p in killed]
  assert first_epoch == [{0, 2, 4}, {1, 3, 5}]
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # written by process 0 only, one run
  assert os.path.isdir(os.path.join(workdir, "export", "params"))
