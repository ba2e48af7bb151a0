"""Choosing between a kernel's Pallas, XLA and reference implementations.

Every kernel module exposes `impl="auto" | "pallas" | "xla" | "reference"`; "auto" picks the
compiled Pallas kernel on a GPU and the kernel's fastest exact CPU path elsewhere: its XLA
formulation, or for kNN scipy's KD-tree through a host callback (`kernels.knn`). Pallas runs
on the CPU only in interpret mode, which is a correctness tool, not a speed path.
"""
from __future__ import annotations

import jax

IMPLS = ("auto", "pallas", "xla", "reference")
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def on_gpu() -> bool:
  """Whether JAX's default backend is a CUDA or ROCm GPU."""
  return jax.default_backend() in _GPU_PLATFORMS


def resolve_impl(impl: str, *, cpu: str = "xla", extra: tuple = ()) -> str:
  """Maps an `impl` argument to "pallas", `cpu` (default "xla"), "reference" or one of `extra`.

  Args:
    impl: one of `IMPLS` + `extra`.
    cpu: what "auto" means off the GPU (the kernel's fastest exact path there).
    extra: a kernel's further implementations (e.g. kNN's "host").
  Raises:
    ValueError: `impl` is not one of `IMPLS` + `extra`.
  """
  allowed = IMPLS + tuple(extra)
  if impl not in allowed:
    raise ValueError(f"impl={impl!r} is not one of {allowed}.")
  if impl == "auto":
    return "pallas" if on_gpu() else cpu
  return impl
