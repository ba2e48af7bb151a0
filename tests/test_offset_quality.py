"""Offset-quality figures (metrics.offset_quality, pointins.monitor) on hand-built cases."""
import json
import math

import numpy as np
import pytest

from pointins_jax.study import planning
from pointins_jax.metrics import offset_quality
from pointins_jax.pointins import monitor

# Two instances: {(0,0,0), (2,0,0)} centre (1,0,0); {(0,5,0), (0,5,4), (0,8,2)} centre
# (0,6,2); one point of no instance (left out).
COORD = np.array([[0, 0, 0], [2, 0, 0], [0, 5, 0], [0, 5, 4], [0, 8, 2], [9, 9, 9]], float)
INSTANCE = np.array([3, 3, 7, 7, 7, -1])
CENTRE = np.array([[1, 0, 0], [1, 0, 0], [0, 6, 2], [0, 6, 2], [0, 6, 2]], float)
BASELINE = np.array([1, 1, math.sqrt(5), math.sqrt(5), 2])


def test_instance_centres():
  centre, has = offset_quality.instance_centres(COORD, INSTANCE)
  np.testing.assert_array_equal(has, [1, 1, 1, 1, 1, 0])
  np.testing.assert_allclose(centre[:5], CENTRE)


def test_perfect_offsets_reach_the_centre():
  offsets = np.zeros_like(COORD)
  offsets[:5] = CENTRE - COORD[:5]
  offsets[5] = [100.0, 0, 0]  # a point of no instance does not count
  q = offset_quality.offset_quality(COORD, offsets, INSTANCE)
  assert q["dist_median"] == q["dist_mean"] == 0.0
  assert q["closer_fraction"] == 1.0 and q["num_points"] == 5
  assert q["baseline_median"] == pytest.approx(np.median(BASELINE)) == 2.0
  assert q["baseline_mean"] == pytest.approx(BASELINE.mean())


def test_zero_offsets_equal_the_baseline_and_half_offsets_halve_it():
  zero = offset_quality.offset_quality(COORD, np.zeros_like(COORD), INSTANCE)
  assert zero["dist_median"] == zero["baseline_median"]
  assert zero["dist_mean"] == zero["baseline_mean"]
  assert zero["closer_fraction"] == 0.0
  half = np.zeros_like(COORD)
  half[:5] = 0.5 * (CENTRE - COORD[:5])
  q = offset_quality.offset_quality(COORD, half, INSTANCE)
  assert q["dist_mean"] == pytest.approx(0.5 * BASELINE.mean())
  assert q["closer_fraction"] == 1.0
  away = offset_quality.offset_quality(COORD, -half, INSTANCE)  # pointing away: never closer
  assert away["closer_fraction"] == 0.0 and away["dist_mean"] == pytest.approx(
      1.5 * BASELINE.mean())


def test_no_instance_gives_nan():
  q = offset_quality.offset_quality(COORD, np.zeros_like(COORD), np.full(6, -1))
  assert q["num_points"] == 0 and math.isnan(q["dist_median"])


def test_evaluation_schedule():
  assert [s for s in range(11) if monitor.due(s, 10, 4)] == [0, 4, 8, 10]
  assert not any(monitor.due(s, 10, 0) for s in range(11))


def test_history_final_and_plot(tmp_path):
  rows = [{"step": 5, "loss": 1.0}]
  for step, d in ((0, 0.5), (10, 0.3)):
    rows.append(dict({k: 0.2 for k in monitor.KEYS}, step=step, offset_dist_median=d))
  with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  assert [r["step"] for r in monitor.history(str(tmp_path))] == [0, 10]
  assert monitor.final(str(tmp_path))["offset_dist_median"] == 0.3
  path = monitor.plot(str(tmp_path))
  assert path.endswith(monitor.PLOT_NAME) and (tmp_path / monitor.PLOT_NAME).stat().st_size > 10_000
  assert monitor.final(str(tmp_path / "none")) is None and monitor.plot(str(tmp_path / "x")) is None


def test_study_reports_monitored_keys():
  assert {k.removesuffix("_start") for k in planning.OFFSET_QUALITY} <= set(monitor.KEYS)
  assert len(planning.OFFSET_QUALITY_HEADER) == len(planning.OFFSET_QUALITY)
