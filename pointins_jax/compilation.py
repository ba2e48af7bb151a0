"""Compilation bookkeeping: a persistent XLA cache for the CLIs and a compile counter.

Data-following stage capacities (model.configs) make the train step's shapes depend on the
batch, drawn from a short ladder; every distinct shape compiles once. The loops log how
many compilations happened and how long they took (`compiles`, `compile_seconds`), so a
run that keeps recompiling is visible in metrics.jsonl instead of being merely slow.
"""
from __future__ import annotations

import collections
import os
import threading

import jax
import numpy as np

CACHE_ENV = "POINTINS_COMPILATION_CACHE"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "pointins_jax", "xla")
# jax's event for one backend compilation (an XLA compile or a persistent-cache load).
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def enable_persistent_cache() -> str | None:
  """Turns on jax's persistent compilation cache; returns its directory (None if off).

  The directory is $POINTINS_COMPILATION_CACHE, or ~/.cache/pointins_jax/xla when unset;
  set it to "" or "0" to turn the cache off. A rerun of the same config then loads its
  programs instead of compiling them (tens of seconds per program on a 2-core CPU).
  """
  path = os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
  if path in ("", "0"):
    return None
  path = os.path.expanduser(path)
  if not jax.config.jax_compilation_cache_dir:  # a caller's explicit choice wins
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
  return jax.config.jax_compilation_cache_dir


class _Counter:
  """Process-wide count and seconds of backend compilations, by jitted function name."""

  def __init__(self):
    self._lock = threading.Lock()
    self.counts: collections.Counter = collections.Counter()
    self.seconds: collections.Counter = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **kwargs):
    if event == _COMPILE_EVENT:
      name = str(kwargs.get("fun_name", "?"))
      with self._lock:
        self.counts[name] += 1
        self.seconds[name] += duration

  def snapshot(self, name_contains: str = "") -> tuple[int, float]:
    """(compilations, seconds) of the functions whose name contains `name_contains`."""
    with self._lock:
      names = [n for n in self.counts if name_contains in n]
      return sum(self.counts[n] for n in names), sum(self.seconds[n] for n in names)


_COUNTER: _Counter | None = None


def counter() -> _Counter:
  """The process-wide compile counter (registered with jax on first use)."""
  global _COUNTER
  if _COUNTER is None:
    _COUNTER = _Counter()
  return _COUNTER


def _cost(capacities) -> int:
  return sum(capacities)


class CapacityPlanner:
  """Chooses the static stage capacities of each step, reusing compiled ones when cheap.

  Each batch arrives with its fitted (ladder) capacities and real per-stage counts. A
  profile compiled earlier is reused when it holds every count and costs (sum of stage
  capacities) at most `slack` times the fitted one; otherwise the fitted profile is
  compiled. Padding never changes a result (masked everywhere, drop-path draws are per
  slot), so reuse only trades a little padding for far fewer compilations.
  """

  def __init__(self, slack: float = 1.5):
    if slack < 1:
      raise ValueError(f"CapacityPlanner: slack={slack} must be >= 1.")
    self.slack = slack
    self.compiled: list[tuple[int, ...]] = []

  def choose(self, fitted, counts) -> tuple[int, ...]:
    """fitted: the batch's ladder capacities [S]; counts: its real points per stage [S]."""
    fitted = tuple(int(c) for c in fitted)
    counts = [int(c) for c in counts]
    fits = [p for p in self.compiled
            if p[0] == fitted[0] and all(c >= k for c, k in zip(p, counts))
            and _cost(p) <= self.slack * _cost(fitted)]
    if fits:
      return min(fits, key=_cost)
    self.compiled.append(fitted)
    return fitted

  def pop_and_choose(self, batch: dict) -> tuple[int, ...] | None:
    """Pops a single-process host batch's `stage_capacities` / `stage_point_counts` and
    chooses; None (the model's fixed capacities) for a batch without them."""
    caps, counts = batch.pop("stage_capacities", None), batch.pop("stage_point_counts", None)
    if caps is None:
      return None
    return self.choose(np.asarray(caps).reshape(-1),
                       np.asarray(caps if counts is None else counts).reshape(-1))
