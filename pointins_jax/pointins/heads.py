"""Heads shared by student and teacher: prototype projection head and offset head.

Both act on the last axis of [..., C] feature arrays (any leading dims, e.g. [B, N, C]).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Sonata initialises every Linear with timm's trunc_normal_(std=0.02) and zero biases.
# timm truncates at +-2 in absolute units (100 sigma), i.e. a plain N(0, 0.02^2); flax's
# bounds are in sigmas (default +-2, which would shrink the std to 0.0176).
_STD = 0.02
_KERNEL_INIT = nn.initializers.truncated_normal(_STD, lower=-2.0 / _STD, upper=2.0 / _STD)


def gelu(x: jax.Array) -> jax.Array:
  """Exact erf GELU, x * Phi(x) (PyTorch's nn.GELU default; Flax defaults to tanh)."""
  return nn.gelu(x, approximate=False)


def safe_norm(x: jax.Array, eps: float = 1e-12, keepdims: bool = False) -> jax.Array:
  """max(||x||_2, eps) along the last axis, with a finite gradient at x = 0.

  `jnp.linalg.norm` has a 0/0 (NaN) gradient at the zero vector, which padding rows and
  freshly initialised heads produce; a NaN cotangent on a zero-weight row still poisons
  the parameter gradients (0 * NaN = NaN). Clamping the squared norm first keeps it finite.
  """
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=keepdims), eps * eps))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||_2, eps) along the last axis (torch.nn.functional.normalize)."""
  return x / safe_norm(x, eps, keepdims=True)


class ProjectionHead(nn.Module):
  """Sonata's `OnlineCluster` head (ptv3_ssl_spec.md §4.2).

  Dense(hidden) -> GELU -> Dense(bottleneck) -> L2-normalise -> cosine similarity to
  `num_prototypes` learnable prototypes. The prototypes are weight-normalised rows with
  the magnitude fixed at 1 and no bias, so the logits are cosines in [-1, 1].
  Production: 4096 / 256 / 4096; the CPU tiny config uses 128 / 64 / 128.

  Input f32 [..., C]; output logits f32 [..., num_prototypes].
  """

  hidden_dim: int = 4096
  bottleneck_dim: int = 256
  num_prototypes: int = 4096

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.hidden_dim, kernel_init=_KERNEL_INIT, name="fc1")(x)
    x = nn.Dense(self.bottleneck_dim, kernel_init=_KERNEL_INIT, name="fc2")(gelu(x))
    embedding = l2_normalize(x)  # [..., bottleneck]
    prototypes = self.param("prototypes", _KERNEL_INIT,
                            (self.num_prototypes, self.bottleneck_dim))  # [K, bottleneck]
    return embedding @ l2_normalize(prototypes).T


class OffsetHead(nn.Module):
  """Two-layer MLP: features [..., C] -> 3D offsets [..., 3] (view frame, metres).

  The paper (Sec. 4) states only "two MLP layers"; we use Dense(hidden) -> LayerNorm ->
  GELU -> Dense(3), PointGroup's offset-branch pattern (Linear-Norm-ReLU-Linear) with
  PTv3's LayerNorm/GELU. The norm makes the hidden scale independent of the concatenated
  multi-scale feature magnitudes, which differ between stages.
  """

  hidden_dim: int = 256

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.hidden_dim, kernel_init=_KERNEL_INIT, name="fc1")(x)
    x = gelu(nn.LayerNorm(epsilon=1e-5, name="norm")(x))
    return nn.Dense(3, kernel_init=_KERNEL_INIT, name="fc2")(x)
