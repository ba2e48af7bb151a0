"""Data parallelism: a 4-device sharded step equals the single-device step."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_sharded_step_matches_single_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # XLA_FLAGS: set by the script itself
  proc = subprocess.run([sys.executable, os.path.join(HERE, "sharded_step_check.py")],
                        capture_output=True, text=True, env=env, timeout=1500)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "SHARDED_OK" in proc.stdout
