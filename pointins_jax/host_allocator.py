"""glibc malloc settings for XLA's CPU runtime, applied in-process at CLI start.

Why: on Linux with glibc's default malloc, XLA:CPU's train step ran about 1.9x slower than
with tcmalloc on the project's 2-core machine (tiny PTv3, 20k points: 0.63-0.78 s against
0.37-0.40 s per step; docs/performance.md, "Host allocator"). Each execution allocates
its temporary buffers afresh; glibc hands allocations above its (dynamic) mmap threshold
out as fresh mappings, which the kernel must fault in and zero on every step, and spreads
the runtime's threads over up to 8 arenas per core, each holding its own free memory.
Capping the arenas at two, serving every size from the arenas (no per-allocation mmap)
and keeping freed memory instead of trimming it back to the system makes a step reuse
the same pages, as tcmalloc does. Pointcept's reference is measured with tcmalloc
preloaded for the same reason (../shared/reference/pointcept_cpu_reference.md).

`mallopt` only changes future allocations, so call `tune_glibc_malloc` first thing in a
process, before jax creates its thread pools. It is a no-op off glibc (macOS, or
tcmalloc/jemalloc preloaded, whose `mallopt` ignores these options) and when
$POINTINS_MALLOC_TUNING is "0".
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

TUNING_ENV = "POINTINS_MALLOC_TUNING"

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ARENA_MAX = 2
# Freed memory at the heap's top is returned to the system only beyond this (2 GiB - 1,
# mallopt takes an int): a step's buffers are then reused, not faulted in again.
TRIM_THRESHOLD = 2**31 - 1


def glibc_mallopt():
  """glibc's `mallopt` as a ctypes function, or None where this is not glibc."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    version = libc.gnu_get_libc_version  # glibc only: musl and others lack it
    version.restype = ctypes.c_char_p
    version()
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  return mallopt


def tune_glibc_malloc() -> bool:
  """Applies the settings above; True if glibc accepted all three."""
  if os.environ.get(TUNING_ENV, "1") in ("0", ""):
    return False
  mallopt = glibc_mallopt()
  if mallopt is None:
    return False
  accepted = [mallopt(_M_ARENA_MAX, ARENA_MAX), mallopt(_M_MMAP_MAX, 0),
              mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
  return all(accepted)
