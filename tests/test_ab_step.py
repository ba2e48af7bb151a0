"""benchmarks.ab_step: parts of another checkout swapped in and put back."""
import pytest

from benchmarks import ab_step
from kernels import dispatch


def test_swap_in_takes_the_base_trees_attribute_and_puts_it_back(tmp_path):
  (tmp_path / "kernels").mkdir()
  (tmp_path / "kernels" / "dispatch.py").write_text("def on_gpu():\n  return 'base tree'\n")
  original = dispatch.on_gpu
  put_back = ab_step.swap_in(str(tmp_path), ["kernels.dispatch:on_gpu"])
  try:
    assert dispatch.on_gpu() == "base tree"
  finally:
    put_back()
  assert dispatch.on_gpu is original


def test_swap_in_errors_name_the_fix(tmp_path):
  with pytest.raises(ValueError, match="module:attribute"):
    ab_step.swap_in(str(tmp_path), ["kernels.dispatch"])
  with pytest.raises(FileNotFoundError, match="kernels/dispatch.py"):
    ab_step.swap_in(str(tmp_path), ["kernels.dispatch:on_gpu"])
