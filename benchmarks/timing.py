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
