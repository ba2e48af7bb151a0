"""How close predicted instance centroids x + o come to the real instance centres.

For every point inside a ground-truth instance (id != -1) with centre c (the mean of the
instance's points, metres):

  distance  d = |x + o - c|   where the point's predicted centroid lands,
  baseline  b = |x - c|       the same with zero offsets (what grouping x alone faces),
  closer    d < b             the offset moved the point towards its centre.

Perfect offsets give d = 0 and (every point off its centre) closer = 1; zero offsets give
d = b and closer = 0. Points of no instance are left out. These figures monitor the offset
branch of pretraining (`pointins.monitor`); labels are read only for them.
"""
from __future__ import annotations

import numpy as np


def instance_centres(coord: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per point, the centroid of its ground-truth instance.

  Args:
    coord: float [N, 3] metres; instance: int [N], -1 = none.
  Returns:
    (centre f64 [N, 3] metres (0 where none), has_instance bool [N]).
  """
  coord = np.asarray(coord, np.float64)
  instance = np.asarray(instance)
  has = instance >= 0
  centre = np.zeros_like(coord)
  if has.any():
    _, inverse, counts = np.unique(instance[has], return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse, coord[has])
    centre[has] = (sums / counts[:, None])[inverse]
  return centre, has


def centroid_distances(coord: np.ndarray, offsets: np.ndarray, instance: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(d, b): f64 [M] distances |x + o - c| and |x - c| of the M points inside instances."""
  centre, has = instance_centres(coord, instance)
  coord = np.asarray(coord, np.float64)[has]
  shifted = coord + np.asarray(offsets, np.float64)[has]
  return (np.linalg.norm(shifted - centre[has], axis=1),
          np.linalg.norm(coord - centre[has], axis=1))


def summarize(distance: np.ndarray, baseline: np.ndarray) -> dict:
  """{"dist_median", "dist_mean", "baseline_median", "baseline_mean" (metres),
  "closer_fraction", "num_points"}; NaN figures when no point lies in an instance."""
  distance, baseline = np.asarray(distance, np.float64), np.asarray(baseline, np.float64)
  if distance.size == 0:
    nan = float("nan")
    return dict(dist_median=nan, dist_mean=nan, baseline_median=nan, baseline_mean=nan,
                closer_fraction=nan, num_points=0)
  return dict(dist_median=float(np.median(distance)), dist_mean=float(distance.mean()),
              baseline_median=float(np.median(baseline)), baseline_mean=float(baseline.mean()),
              closer_fraction=float(np.mean(distance < baseline)),
              num_points=int(distance.size))


def offset_quality(coord: np.ndarray, offsets: np.ndarray, instance: np.ndarray) -> dict:
  """`summarize` of one scan's `centroid_distances` (coord, offsets [N, 3] metres)."""
  return summarize(*centroid_distances(coord, offsets, instance))
