"""Metric logging: one JSON line per logged step plus TensorBoard event files.

A resumed run continues the log of the run it resumes: rows past the restored step (written
after the checkpoint by the interrupted run, and redone now) are dropped from
`metrics.jsonl`, and TensorBoard is told to purge its events from the step after it on,
so both read as one run with strictly increasing steps.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np


def _to_python(value):
  value = np.asarray(value)
  if value.size == 1:
    value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
      return str(value)
    return value
  return value.tolist()


class MetricWriter:
  """Writes `metrics.jsonl` and TensorBoard scalars under `workdir` (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True,
               resume_step: int = 0):
    """Args:
      workdir: the run folder.
      enabled: False on every process but 0 (writes nothing).
      tensorboard: also write TensorBoard scalars under workdir/tensorboard.
      resume_step: the step the run starts from (its restored checkpoint; 0 = a fresh
        run); earlier rows are kept, later ones dropped.
    """
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _truncate_after(path, resume_step)
    self._jsonl = open(path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: heavy (protobuf)
      # purge_step: TensorBoard drops the earlier event files' steps >= it. The suffix keeps
      # a resume within the same second (the file name's time) from overwriting a file.
      resume = {"purge_step": int(resume_step) + 1,
                "filename_suffix": f".resume{int(resume_step)}"} if resume_step else {}
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), **resume)

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def write(self, step: int, metrics: Mapping[str, object]) -> dict:
    record = {"step": int(step)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(key, value, int(step))
    return record

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  """Keeps the rows of `path` with step <= `step` (atomically: written aside, renamed)."""
  if not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  # A row cut short by a kill (no newline, no JSON) is dropped too.
  kept = [line for line in lines if line.endswith("\n") and _step_of(line) <= step]
  if len(kept) == len(lines):
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def _step_of(line: str) -> float:
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf


def read_metrics(workdir: str) -> list[dict]:
  """All JSON lines of `workdir/metrics.jsonl`."""
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
