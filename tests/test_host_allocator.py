"""glibc malloc settings (pointins_jax/host_allocator.py), checked in fresh processes.

What the settings are for: a large buffer freed and allocated again (XLA:CPU's temporary
buffers, every step) must reuse the same pages instead of a fresh mapping that the kernel
faults in again. Measured here on a 128 MiB buffer with and without the settings, on the
main thread and on a worker thread.
"""
import json
import os
import subprocess
import sys

import pytest

from pointins_jax import host_allocator

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import ctypes, json, resource, threading
from pointins_jax import host_allocator
tuned = host_allocator.tune_glibc_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
size = 128 << 20  # above glibc's 64 MiB heaps of a thread's own arena

def steps(out):
  for _ in range(3):  # a step's temporary buffer: allocate, write, free
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    libc.memset(p, 1, size)
    libc.free(p)
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

main, worker = [], []
steps(main)
# XLA:CPU runs sorts and YNNPACK transposes on its worker threads, with their scratch.
thread = threading.Thread(target=steps, args=(worker,))
thread.start()
thread.join()
print(json.dumps({"tuned": tuned, "main": main, "worker": worker}))
"""


def _probe(tuning: str) -> dict:
  env = dict(os.environ, **{host_allocator.TUNING_ENV: tuning})
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       env=env, cwd=_ROOT, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_allocator.glibc_mallopt() is None, reason="needs glibc")
def test_freed_buffer_is_reused_without_page_faults():
  pages = (128 << 20) // os.sysconf("SC_PAGE_SIZE")
  default, tuned = _probe("0"), _probe("1")
  assert default["tuned"] is False and tuned["tuned"] is True
  # glibc's default: every allocation is a fresh mapping, faulted in page by page.
  assert all(f >= pages * 0.9 for f in default["main"] + default["worker"]), default
  # Tuned: the first use faults the pages in once; later steps reuse them, on the main
  # thread and on a worker thread (which shares the one arena and its pages).
  assert tuned["main"][0] >= pages * 0.9, tuned
  assert all(f < pages * 0.05 for f in tuned["main"][1:] + tuned["worker"]), tuned


def test_turned_off_by_environment(monkeypatch):
  monkeypatch.setenv(host_allocator.TUNING_ENV, "0")
  assert host_allocator.tune_glibc_malloc() is False
