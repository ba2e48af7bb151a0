"""Median wall time of a callable: the one timing rule every benchmark table uses."""
from __future__ import annotations

import time

import jax
import numpy as np


def median_seconds(fn, repeats: int, warmup: bool = True) -> float:
  """Median seconds of `fn()` over `repeats` calls, waiting for device results.

  warmup: call once untimed first (pays for compilation); callers that time the first
  call themselves pass False.
  """
  if warmup:
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def interleaved_median_seconds(fns, repeats: int, warmup: bool = True,
                               settle_s: float = 1.0) -> list:
  """Median seconds of each callable in `fns`, timed in turn within every repeat.

  Alternating A B A B ... keeps slow drifts of a shared machine's load out of the ratios
  between them (timing all repeats of A, then all of B, does not). Each call starts
  `settle_s` after the previous one ended: on the 2-core machine a call made right after
  another one ran up to 2x slower (scikit-learn's K-means + scipy right after our SCR or
  after itself: 5.1-9.9 s; after a 1 s pause: 3.3-3.8 s; a loaded window).
  """
  if warmup:
    for fn in fns:
      jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, spent in zip(fns, times):
      time.sleep(settle_s)
      start = time.perf_counter()
      jax.block_until_ready(fn())
      spent.append(time.perf_counter() - start)
  return [float(np.median(spent)) for spent in times]
