"""Shared test setup."""
import gc
import os
import sys
import tempfile

import pytest

# Tests run on the CPU even where a GPU plugin is installed (the cuda plugin is
# in the test extra only to *lower* Pallas kernels for CUDA).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Persistent XLA cache shared by the xdist workers and the subprocess tests (they inherit
# the environment): the end-to-end tests compile the same train step several times
# (kill / resume, export), and on 2 CPU cores each compile costs about a minute.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "pointins_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The CLIs' glibc malloc settings, before jax starts its threads: XLA:CPU steps run about
# 2x faster with them (pointins_jax/host_allocator.py), so the suite does too.
from pointins_jax import host_allocator  # noqa: E402

host_allocator.tune_glibc_malloc()

from absl import flags  # noqa: E402

# grain workers read absl flags; mark them parsed as under absl.app.run.
flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: heavy test, excluded from the default run")
  config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Frees JAX's in-memory caches after each test module.

  An xdist worker runs many modules in one process, and the compiled programs and traces
  of finished modules would otherwise pile up: one worker reached 9.6 GiB and was
  OOM-killed on the 24 GiB CI machine. Programs a later module needs again come back from
  the persistent compilation cache above.
  """
  yield
  import jax  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
  gc.collect()
