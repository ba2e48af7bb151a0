"""glibc malloc settings for XLA's CPU runtime, applied in-process at CLI start.

Why: on Linux with glibc's default malloc, each XLA:CPU step got its temporary buffers as
fresh mappings (glibc serves large blocks with mmap and unmaps them on free) and the
kernel faulted them in and zeroed them page by page: 136k page faults and 0.5 s of system
time per step of the tiny PTv3 at 20k points, which then ran 0.82-0.91 s per step against
0.37 s with the settings below (docs/performance.md, "Host allocator"). The settings make
a step reuse the same pages, as tcmalloc does:
* one arena: XLA's worker threads (sorts, YNNPACK transposes) allocate large scratch
  blocks too, and a thread's own arena grows in 64 MiB heaps, so blocks above that were
  still fresh mappings (the 80k-point step kept 620k faults per step with two arenas);
* no mmap per allocation, and no trimming on free(): freed blocks stay for the next step.
Pointcept's reference is measured with tcmalloc preloaded for the same reason
(../shared/reference/pointcept_cpu_reference.md).

`mallopt` only changes future allocations, so call `tune_glibc_malloc` early in a
process, before jax starts a backend (and with it the runtime's thread pools). It is a
no-op off glibc (macOS; with tcmalloc or jemalloc preloaded their `mallopt` ignores these
options) and when $POINTINS_MALLOC_TUNING is "0".
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

TUNING_ENV = "POINTINS_MALLOC_TUNING"

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ARENA_MAX = 1  # the lock is cheap next to a step's kernels on a few cores
# -1: free() never hands memory back (mallopt(3)), so a step's buffers are reused, not
# faulted in again; a finite threshold is an int, at most 2 GiB, and larger steps' freed
# blocks would cross it. Memory goes back after compilations instead (below).
TRIM_THRESHOLD = -1


@functools.cache
def _glibc():
  """This process's C library if it is glibc (it has `gnu_get_libc_version`), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    libc.gnu_get_libc_version()  # musl and others lack it
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
  except (OSError, AttributeError):
    return None
  return libc


def glibc_mallopt():
  """glibc's `mallopt` as a ctypes function, or None where this is not glibc."""
  libc = _glibc()
  return None if libc is None else libc.mallopt


def tune_glibc_malloc() -> bool:
  """Applies the settings above; True if glibc accepted all three.

  Also hands memory back after each XLA compilation (`malloc_trim(0)` from a jax
  monitoring listener): without trimming on free(), the compiler's garbage would stay
  resident beside the step's buffers and raise peak memory. This imports jax, which is
  fine before its backends start (they create the runtime's threads).
  """
  if os.environ.get(TUNING_ENV, "1") in ("0", ""):
    return False
  mallopt = glibc_mallopt()
  if mallopt is None:
    return False
  accepted = [mallopt(_M_ARENA_MAX, ARENA_MAX), mallopt(_M_MMAP_MAX, 0),
              mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
  _trim_after_compilations()
  return all(accepted)


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TRIM_AFTER_COMPILE_S = 2.0


@functools.cache  # once per process, however many entry points call tune_glibc_malloc
def _trim_after_compilations() -> None:
  import jax  # pylint: disable=import-outside-toplevel
  malloc_trim = _glibc().malloc_trim

  def trim(event: str, duration: float, **kwargs):
    del kwargs
    # Only after real compilations: a trim walks the whole heap and the freed pages fault
    # in again on reuse, while the many sub-second helper programs leave little garbage.
    if event == _COMPILE_EVENT and duration >= TRIM_AFTER_COMPILE_S:
      malloc_trim(0)

  jax.monitoring.register_event_duration_secs_listener(trim)
