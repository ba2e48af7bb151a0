"""Shared test setup."""
import os
import sys

# Tests run on the CPU even where a GPU plugin is installed (the cuda plugin is
# in the test extra only to *lower* Pallas kernels for CUDA).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

# grain workers read absl flags; mark them parsed as under absl.app.run.
flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: heavy test, excluded from the default run")
  config.addinivalue_line("markers", "gpu: needs a CUDA device")
