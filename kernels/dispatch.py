"""Choosing between a kernel's Pallas, XLA and reference implementations.

Every kernel module exposes `impl="auto" | "pallas" | "xla" | "reference"`; "auto" picks the
compiled Pallas kernel on a GPU and the kernel's fastest exact XLA formulation elsewhere
(Pallas runs on the CPU only in interpret mode, which is a correctness tool, not a speed path).
"""
from __future__ import annotations

import jax

IMPLS = ("auto", "pallas", "xla", "reference")
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def on_gpu() -> bool:
  """Whether JAX's default backend is a CUDA or ROCm GPU."""
  return jax.default_backend() in _GPU_PLATFORMS


def resolve_impl(impl: str) -> str:
  """Maps an `impl` argument to "pallas", "xla" or "reference".

  Raises:
    ValueError: `impl` is not one of `IMPLS`.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl={impl!r} is not one of {IMPLS}.")
  if impl == "auto":
    return "pallas" if on_gpu() else "xla"
  return impl
