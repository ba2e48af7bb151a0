"""Tests of pointins_jax.pointins.schedules against hand values and closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.pointins import schedules

TOTAL = 1000  # production runs have ~1e5 steps; the formulas only see t / T


def _values(fn, total=TOTAL):
  return np.array([float(fn(s)) for s in range(total + 1)])


def test_ema_momentum_hand_values():
  assert float(schedules.ema_momentum(0, TOTAL)) == pytest.approx(0.994, abs=1e-7)
  assert float(schedules.ema_momentum(TOTAL, TOTAL)) == pytest.approx(1.0, abs=1e-7)
  assert float(schedules.ema_momentum(TOTAL // 2, TOTAL)) == pytest.approx(0.997, abs=1e-7)
  # Held at 1 past the end.
  assert float(schedules.ema_momentum(3 * TOTAL, TOTAL)) == pytest.approx(1.0, abs=1e-7)
  ema = _values(lambda s: schedules.ema_momentum(s, TOTAL))
  assert np.all(np.diff(ema) >= -1e-7)


def test_ema_momentum_matches_sonata_formula():
  for step in (0, 17, 250, 999):
    expected = 1 + 0.5 * (0.994 - 1) * (1 + math.cos(math.pi * step / TOTAL))
    assert float(schedules.ema_momentum(step, TOTAL)) == pytest.approx(expected, abs=1e-7)


def test_teacher_temperature_warmup_then_constant():
  assert float(schedules.teacher_temperature(0, TOTAL)) == pytest.approx(0.04)
  assert float(schedules.teacher_temperature(25, TOTAL)) == pytest.approx(0.055)  # half of 5%
  assert float(schedules.teacher_temperature(50, TOTAL)) == pytest.approx(0.07)
  assert float(schedules.teacher_temperature(900, TOTAL)) == pytest.approx(0.07)
  temps = _values(lambda s: schedules.teacher_temperature(s, TOTAL))
  assert np.all(np.diff(temps) >= -1e-8)


def test_linear_warmup_mask_schedule_and_zero_ratio():
  # Sonata's mask ratio 0.3 -> 0.7 over the first 5%.
  assert float(schedules.linear_warmup(0, TOTAL, 0.3, 0.7, 0.05)) == pytest.approx(0.3)
  assert float(schedules.linear_warmup(10, TOTAL, 0.3, 0.7, 0.05)) == pytest.approx(0.38)
  assert float(schedules.linear_warmup(60, TOTAL, 0.3, 0.7, 0.05)) == pytest.approx(0.7)
  assert float(schedules.linear_warmup(0, TOTAL, 0.3, 0.7, 0.0)) == pytest.approx(0.7)


def test_cosine_schedule_and_weight_decay():
  assert float(schedules.cosine_schedule(0, TOTAL, 2.0, -1.0)) == pytest.approx(2.0)
  assert float(schedules.cosine_schedule(TOTAL // 2, TOTAL, 2.0, -1.0)) == pytest.approx(0.5)
  assert float(schedules.cosine_schedule(TOTAL, TOTAL, 2.0, -1.0)) == pytest.approx(-1.0)
  assert float(schedules.weight_decay(0, TOTAL)) == pytest.approx(0.04)
  assert float(schedules.weight_decay(TOTAL, TOTAL)) == pytest.approx(0.2)
  assert np.all(np.diff(_values(lambda s: schedules.weight_decay(s, TOTAL))) >= -1e-8)


def test_warmup_cosine_lr_matches_onecycle_closed_form():
  base, warm = 4e-3, 50  # Table 9 indoor: lr 4e-3, warm-up ratio 0.05
  start, final = base / 10, base / 10 / 1000

  def expected(step):  # PyTorch OneCycleLR, anneal_strategy='cos', as Pointcept uses it
    if step <= warm:
      t, lo, hi = step / warm, start, base
    else:
      t, lo, hi = (step - warm) / (TOTAL - warm), base, final
    return hi + 0.5 * (lo - hi) * (1 + math.cos(math.pi * t))

  lrs = _values(lambda s: schedules.warmup_cosine_lr(s, TOTAL, base, 0.05))
  np.testing.assert_allclose(lrs, [expected(s) for s in range(TOTAL + 1)],
                             rtol=1e-5, atol=1e-10)  # f32 cosine near the end
  assert lrs.argmax() == warm
  assert np.all(np.diff(lrs[:warm + 1]) > 0) and np.all(np.diff(lrs[warm:]) < 0)


def test_offset_loss_weight_step_and_linear():
  step_w = _values(lambda s: schedules.offset_loss_weight(s, TOTAL))
  assert np.all(step_w[:100] == 0.0) and np.all(step_w[100:] == np.float32(0.25))
  lin = _values(lambda s: schedules.offset_loss_weight(s, TOTAL, ramp="linear"))
  assert lin[0] == 0.0 and lin[50] == pytest.approx(0.125) and lin[100:].min() == 0.25
  assert np.all(np.diff(lin) >= 0)
  with pytest.raises(ValueError, match="ramp"):
    schedules.offset_loss_weight(0, TOTAL, ramp="cosine")


def test_schedules_jit_on_traced_step_equal_host_values():
  @jax.jit
  def all_at(step):
    return jnp.stack([schedules.ema_momentum(step, TOTAL),
                      schedules.teacher_temperature(step, TOTAL),
                      schedules.warmup_cosine_lr(step, TOTAL, 4e-3),
                      schedules.offset_loss_weight(step, TOTAL),
                      schedules.weight_decay(step, TOTAL)])
  for step in (0, 33, 100, 640):
    host = [schedules.ema_momentum(step, TOTAL), schedules.teacher_temperature(step, TOTAL),
            schedules.warmup_cosine_lr(step, TOTAL, 4e-3),
            schedules.offset_loss_weight(step, TOTAL), schedules.weight_decay(step, TOTAL)]
    np.testing.assert_allclose(all_at(jnp.int32(step)), np.array(host, np.float32), rtol=1e-6)


@pytest.mark.parametrize("call", [
    lambda: schedules.ema_momentum(0, 0),
    lambda: schedules.teacher_temperature(0, TOTAL, warmup_ratio=1.5),
    lambda: schedules.warmup_cosine_lr(0, -3, 1e-3),
])
def test_bad_configs_raise(call):
  with pytest.raises(ValueError):
    call()
