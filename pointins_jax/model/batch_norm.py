"""BatchNorm over the real points only (Pointcept m1's BatchNorm1d), with a hand-written backward.

Same variables as `flax.linen.BatchNorm` ('scale' ones and 'bias' zeros in 'params', 'mean'
zeros and 'var' ones in 'batch_stats', all [C]) and the same values up to float rounding
(a two-pass variance instead of flax's E[x^2] - E[x]^2), so checkpoints and Pointcept
imports are unchanged. Why its own VJP: autodiff of flax's masked statistics
(`mean(where=mask)` twice, the clip, then the normalisation) becomes several row and
column reductions that XLA:CPU's reduce fusions run slowly, as for the LayerNorm
(`layer_norm.py`). With n masked-in rows (weights m_i in {0, 1}):

  mean = sum_i m_i x_i / n,  var = sum_i m_i (x_i - mean)^2 / n,  rstd = (var + eps)^-1/2
  xhat = (x - mean) * rstd,  y = xhat * scale + bias          (every row, padding included)
  g = dy * scale
  dx_i = rstd * (g_i - m_i / n * (sum_j g_j + xhat_i * sum_j g_j xhat_j))
         + m_i / n * (dmean + 2 * xhat_i / rstd * dvar)     (cotangents of the statistics)
  dscale = sum_i dy_i xhat_i,  dbias = sum_i dy_i

One difference from flax: a batch without any masked-in row normalises with mean 0 and
var 0 (n is clamped to 1) where flax's `mean(where=...)` gives NaN statistics.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def masked_batch_norm(x, mask, scale, bias, epsilon: float):
  """Training-mode BatchNorm with statistics over the masked rows.

  Args:
    x: f32 [..., C]; mask: bool [...] (rows counted in the statistics); scale, bias: [C].
    epsilon: added to the variance.
  Returns:
    (y [..., C] for every row, batch mean [C], biased batch variance [C]).
  """
  return _masked_batch_norm_fwd(x, mask, scale, bias, epsilon)[0]


def _masked_batch_norm_fwd(x, mask, scale, bias, epsilon):
  rows = tuple(range(x.ndim - 1))
  weight = mask[..., None].astype(x.dtype)  # [..., 1]
  count = jnp.maximum(jnp.sum(weight, axis=rows), 1.0)  # [1]
  mean = jnp.sum(x * weight, axis=rows) / count
  centered = x - mean
  var = jnp.sum(centered * centered * weight, axis=rows) / count
  rstd = jax.lax.rsqrt(var + epsilon)
  normalized = centered * rstd
  return (normalized * scale + bias, mean, var), (normalized, weight, count, rstd, scale)


def _masked_batch_norm_bwd(epsilon, residuals, cotangents):
  del epsilon
  normalized, weight, count, rstd, scale = residuals
  dy, dmean, dvar = cotangents
  rows = tuple(range(dy.ndim - 1))
  g = dy * scale
  sum_g = jnp.sum(g, axis=rows)
  sum_g_xhat = jnp.sum(g * normalized, axis=rows)
  share = weight / count  # each masked-in row's share of the statistics
  dx = rstd * (g - share * (sum_g + normalized * sum_g_xhat))
  dx += share * (dmean + 2.0 * normalized / rstd * dvar)
  return dx, None, jnp.sum(dy * normalized, axis=rows), jnp.sum(dy, axis=rows)


masked_batch_norm.defvjp(_masked_batch_norm_fwd, _masked_batch_norm_bwd)


class BatchNorm(nn.Module):
  """Drop-in for `nn.BatchNorm(momentum=..., epsilon=...)(x, mask=mask[..., None])` over the
  last axis: x [..., C], mask bool [...] -> [..., C]. Running statistics follow flax's
  update (biased variance, `momentum` = 1 - PyTorch's) and are not updated at init."""

  momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, mask, *, use_running_average: bool):
    channels = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x, scale, bias = x.astype(dtype), scale.astype(dtype), bias.astype(dtype)
    if use_running_average:
      return (x - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
    y, mean, var = masked_batch_norm(x, mask, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
