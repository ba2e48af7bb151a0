"""Per-step scalar schedules of PointINS pretraining.

Every function maps a step counter (python int, numpy or traced jnp scalar) to an f32 jnp
scalar, so it can be called inside `jit` on `state.step` and on the host alike. `total` is
the static number of optimiser steps (a python int >= 1). The schedules advance once per
optimiser step, before the forward pass, as in Sonata (ptv3_ssl_spec.md §4.6).
"""
from __future__ import annotations

import jax.numpy as jnp
import optax


def _check_total(total) -> float:
  if int(total) < 1:
    raise ValueError(f"Schedule total steps must be >= 1, got {total}; set "
                     "config.train.total_steps (or epochs) to a positive value.")
  return float(total)


def _check_ratio(ratio, name: str) -> float:
  if not 0.0 <= float(ratio) <= 1.0:
    raise ValueError(f"{name}={ratio} must lie in [0, 1] (a fraction of all training steps).")
  return float(ratio)


def _progress(step, total):
  """t / T clipped to [0, 1], f32."""
  return jnp.clip(jnp.asarray(step, jnp.float32) / _check_total(total), 0.0, 1.0)


def cosine_schedule(step, total, start, end):
  """Half-cosine from `start` at step 0 to `end` at step `total` (held after)."""
  t = _progress(step, total)
  return end + 0.5 * (start - end) * (1.0 + jnp.cos(jnp.pi * t))


def linear_warmup(step, total, start, end, ratio):
  """Linear from `start` at step 0 to `end` at `ratio * total` steps, then `end`.

  Used by `teacher_temperature` and `offset_loss_weight(ramp='linear')`. (Sonata also ramps
  its mask size 0.1 -> 0.4 m and ratio 0.3 -> 0.7 over the first 5%; PointINS Table 9 gives
  one value each, so `data.mask_size` / `data.mask_ratio` are constants and no mask
  schedule exists.) `ratio` 0 gives `end` from step 0.
  """
  warmup = _check_ratio(ratio, "warm-up ratio") * _check_total(total)
  if warmup == 0.0:
    return jnp.full((), end, jnp.float32)
  t = jnp.clip(jnp.asarray(step, jnp.float32) / warmup, 0.0, 1.0)
  return jnp.asarray(start + (end - start) * t, jnp.float32)


def warmup_cosine_lr(step, total, base_lr, warmup_ratio=0.05, div_factor=10.0,
                     final_div_factor=1000.0):
  """Learning rate, config `optim.lr` / `optim.warmup_ratio` (Table 9: cosine, 0.05).

  Pointcept's OneCycleLR as used by Sonata/DOS (spec §4.6): cosine rise from
  `base_lr / div_factor` to `base_lr` over the first `warmup_ratio` of training, then
  cosine decay to `base_lr / div_factor / final_div_factor`. (PyTorch's OneCycle also
  cycles Adam's beta1; we keep beta1 fixed.)
  """
  schedule = optax.cosine_onecycle_schedule(
      int(_check_total(total)), base_lr, pct_start=_check_ratio(warmup_ratio, "warmup_ratio"),
      div_factor=div_factor, final_div_factor=final_div_factor)
  return jnp.asarray(schedule(jnp.asarray(step, jnp.int32)), jnp.float32)


def weight_decay(step, total, start=0.04, end=0.2):
  """Sonata's cosine weight-decay schedule 0.04 -> 0.2 (spec §4.6).

  Not used by PointINS pretraining: Table 9 gives a constant weight decay 4e-2, which
  `train.build_optimizer` passes to AdamW from `optim.weight_decay` (there is no end-value
  field). Kept for Sonata-recipe experiments: pass it to `optax.adamw(weight_decay=...)`
  as a callable.
  """
  return cosine_schedule(step, total, start, end)


def ema_momentum(step, total, base=0.994):
  """Teacher EMA momentum, config `semantic.ema_base`.

  m(t) = 1 + 0.5 (base - 1)(1 + cos(pi t / T)): `base` at step 0, 1.0 at step T (spec §4.5).
  """
  return cosine_schedule(step, total, base, 1.0)


def teacher_temperature(step, total, start=0.04, end=0.07, warmup_ratio=0.05):
  """Teacher softmax temperature tau_t, config `semantic.teacher_temp_start`,
  `semantic.teacher_temp_end`, `semantic.teacher_temp_warmup`: linear over the first 5%
  of training, then constant (Sonata, spec §4.5)."""
  return linear_warmup(step, total, start, end, warmup_ratio)


def offset_loss_weight(step, total, weight=0.25, warmup_ratio=0.1, ramp="step"):
  """lambda_off from config `offset.weight` and `offset.warmup_ratio`.

  The paper (Sec. 4, Table 9/10) delays the offset loss "to join the training after few
  warm-up epochs": `ramp='step'` (what `train.compute_losses` uses; no config field picks
  the ramp) gives 0 before `warmup_ratio * total` steps and `weight` from then on;
  `ramp='linear'` rises linearly from 0 to `weight` over the same steps.
  """
  if ramp == "step":
    warmup = _check_ratio(warmup_ratio, "offset.warmup_ratio") * _check_total(total)
    started = jnp.asarray(step, jnp.float32) >= warmup
    return jnp.where(started, jnp.float32(weight), jnp.float32(0.0))
  if ramp == "linear":
    return linear_warmup(step, total, 0.0, weight, warmup_ratio)
  raise ValueError(f"offset_loss_weight: ramp={ramp!r}; use 'step' or 'linear'.")
