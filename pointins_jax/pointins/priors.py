"""Fitting ODR priors from data (paper Table 5, Fig. 4), on the host with numpy/scipy.

Two sources of instance-to-centroid offsets (offset = instance centroid - point):
  labels   ground-truth instance ids of a fraction of the training scenes (the paper
           uses 1% of annotations);
  hdbscan  clusters of the raw coordinates found by scikit-learn's HDBSCAN, no labels
           at all (Table 5, "*HDBSCAN").
The magnitudes give an empirical prior (`empirical_prior`: a quantile table read by
`odr.Prior`); Gamma and LogNormal fits (scipy, location fixed at 0) are reported next
to it. `plot_prior` draws the magnitude and direction distributions like Fig. 4.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np
import scipy.special
import scipy.stats
import sklearn.cluster

from pointins_jax.data.scene import Scene
from pointins_jax.pointins import odr

# Offsets shorter than this (a point at its instance centroid) are floored to it so the
# log-quantile table stays finite; 0.1 mm is far below any grid size in use.
MIN_MAGNITUDE = 1e-4
_TABLE_SIZE = 1025


@dataclasses.dataclass
class PriorFit:
  """A fitted prior with the data it came from.

  Attributes:
    prior: the empirical magnitude prior (`odr.Prior`, kind 'empirical').
    magnitudes: f64 [M] offset magnitudes, metres (floored at MIN_MAGNITUDE).
    directions: f64 [M, 3] unit offset directions (0 for zero offsets).
    parametric: {'gamma': {'a', 'theta'}, 'lognormal': {'mu', 'sigma'}} scipy MLE fits.
    num_scenes: scenes used; num_points: points with an instance / cluster.
    num_unassigned: points without one (label -1 or HDBSCAN noise), reported, not used.
  """

  prior: odr.Prior
  magnitudes: np.ndarray
  directions: np.ndarray
  parametric: dict
  num_scenes: int
  num_points: int
  num_unassigned: int


def select_fraction(items: Sequence, fraction: float, seed: int) -> list:
  """A seeded random subset of max(1, round(fraction * len(items))) items, in input order."""
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction={fraction}: must be in (0, 1] (the paper uses 0.01).")
  if len(items) == 0:
    raise ValueError("No scenes to fit a prior from; check the data root and split.")
  count = max(1, int(round(fraction * len(items))))
  chosen = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
  return [items[i] for i in np.sort(chosen)]


def instance_offsets(coord: np.ndarray, instance: np.ndarray) -> np.ndarray:
  """Offsets from each point to its instance centroid, f64 [M, 3], points with id >= 0."""
  member = instance >= 0
  coord = coord[member].astype(np.float64)
  _, group = np.unique(instance[member], return_inverse=True)
  counts = np.bincount(group)
  centroid = np.stack([np.bincount(group, coord[:, a]) for a in range(3)], -1) / counts[:, None]
  return centroid[group] - coord


def empirical_prior(magnitudes: np.ndarray) -> odr.Prior:
  """Quantile-table prior from samples: Hazen positions u_i = (i - 0.5) / M, as in PIT.

  The table holds the log-samples at their own logit levels when there are at most 1025,
  else interpolated at 1025 logit levels spread evenly between the smallest and largest
  sample's level (so both tails stay resolved).
  """
  magnitudes = np.asarray(magnitudes, np.float64)
  if magnitudes.ndim != 1 or magnitudes.size < 2:
    raise ValueError(f"An empirical prior needs at least 2 magnitudes, got {magnitudes.shape}.")
  if not np.isfinite(magnitudes).all() or magnitudes.min() < 0:
    raise ValueError("Offset magnitudes must be finite and >= 0.")
  log_sorted = np.log(np.sort(np.maximum(magnitudes, MIN_MAGNITUDE)))
  m = log_sorted.size
  sample_logit = scipy.special.logit((np.arange(m) + 0.5) / m)
  if m <= _TABLE_SIZE:
    table_logit, table = sample_logit, log_sorted
  else:
    table_logit = np.linspace(sample_logit[0], sample_logit[-1], _TABLE_SIZE)
    table = np.interp(table_logit, sample_logit, log_sorted)
  return odr.tabulated_prior("empirical", {"num_samples": float(m)}, table_logit, table)


def fit_parametric(magnitudes: np.ndarray) -> dict:
  """Maximum-likelihood Gamma(a, theta) and LogNormal(mu, sigma) fits (location 0)."""
  magnitudes = np.maximum(np.asarray(magnitudes, np.float64), MIN_MAGNITUDE)
  a, _, theta = scipy.stats.gamma.fit(magnitudes, floc=0)
  sigma, _, scale = scipy.stats.lognorm.fit(magnitudes, floc=0)
  return {"gamma": {"a": float(a), "theta": float(theta)},
          "lognormal": {"mu": float(np.log(scale)), "sigma": float(sigma)}}


def _fit_from_offsets(offsets: list, num_scenes: int, num_unassigned: int) -> PriorFit:
  offsets = np.concatenate(offsets) if offsets else np.zeros((0, 3))
  if len(offsets) < 2:
    raise ValueError(f"Only {len(offsets)} points with an instance in {num_scenes} scenes; "
                     "use a larger --fraction or check the instance labels.")
  magnitude = np.linalg.norm(offsets, axis=-1)
  direction = offsets / np.maximum(magnitude, 1e-12)[:, None]
  magnitude = np.maximum(magnitude, MIN_MAGNITUDE)
  return PriorFit(empirical_prior(magnitude), magnitude, direction, fit_parametric(magnitude),
                  num_scenes, len(offsets), num_unassigned)


def fit_empirical_prior(scenes: Sequence, fraction: float = 0.01, seed: int = 0,
                        load: Optional[Callable[[object], Scene]] = None) -> PriorFit:
  """Prior from the ground-truth instances of a seeded `fraction` of `scenes`.

  Args:
    scenes: Scenes, or items that `load` turns into Scenes (e.g. folders with
      `pointcept_io.read_scene`), so only the chosen fraction is read.
  """
  offsets, unassigned, chosen = [], 0, select_fraction(scenes, fraction, seed)
  for item in chosen:
    scene = load(item) if load else item
    if scene.instance is None:
      raise ValueError(f"{scene.source} (scene {scene.name!r}) has no instance labels; use "
                       "--source hdbscan for a label-free prior.")
    offsets.append(instance_offsets(scene.coord, scene.instance))
    unassigned += int(np.sum(scene.instance < 0))
  return _fit_from_offsets(offsets, len(chosen), unassigned)


def fit_hdbscan_prior(scenes: Sequence, fraction: float = 0.01, seed: int = 0,
                      load: Optional[Callable[[object], Scene]] = None, *,
                      max_points: int = 20_000, min_cluster_size: int = 50,
                      min_samples: Optional[int] = None) -> PriorFit:
  """Label-free prior from HDBSCAN clusters of raw coordinates (noise points unused).

  Args:
    scenes, fraction, seed, load: as `fit_empirical_prior`.
    max_points: points per scene clustered (a seeded random subset; HDBSCAN is
      super-linear in the point count).
    min_cluster_size, min_samples: `sklearn.cluster.HDBSCAN` parameters.
  """
  rng = np.random.default_rng(seed)
  offsets, unassigned, chosen = [], 0, select_fraction(scenes, fraction, seed)
  for item in chosen:
    scene = load(item) if load else item
    coord = scene.coord
    if len(coord) > max_points:
      coord = coord[np.sort(rng.choice(len(coord), max_points, replace=False))]
    if len(coord) < min_cluster_size:
      unassigned += len(coord)
      continue
    labels = sklearn.cluster.HDBSCAN(min_cluster_size=min_cluster_size,
                                     min_samples=min_samples,
                                     copy=True).fit_predict(coord)
    offsets.append(instance_offsets(coord, labels))
    unassigned += int(np.sum(labels < 0))
  return _fit_from_offsets(offsets, len(chosen), unassigned)


def plot_prior(fit: PriorFit, path: str) -> None:
  """Writes a two-panel PNG (Fig. 4 style): magnitudes with the fitted densities, and the
  direction coordinates with the uniform-sphere marginal (Uniform(-1, 1), density 1/2)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
  top = float(np.quantile(fit.magnitudes, 0.995))
  ax_m.hist(fit.magnitudes, bins=100, range=(0, top), density=True, alpha=0.5,
            label=f"offsets ({fit.num_points} points)")
  # Empirical density from the quantile table: du / dm between neighbouring levels.
  u = np.linspace(0.001, 0.999, 999)
  m = np.asarray(fit.prior.ppf(u.astype(np.float32)), np.float64)
  keep = np.diff(m) > 0
  ax_m.plot(((m[1:] + m[:-1]) / 2)[keep], (np.diff(u)[keep] / np.diff(m)[keep]), "k-",
            label="empirical prior")
  grid = np.linspace(top / 400, top, 400)
  g, ln = fit.parametric["gamma"], fit.parametric["lognormal"]
  ax_m.plot(grid, scipy.stats.gamma.pdf(grid, g["a"], scale=g["theta"]), "--",
            label=f"Gamma(a={g['a']:.2f}, theta={g['theta']:.2f})")
  ax_m.plot(grid, scipy.stats.lognorm.pdf(grid, ln["sigma"], scale=np.exp(ln["mu"])), ":",
            label=f"LogNormal(mu={ln['mu']:.2f}, sigma={ln['sigma']:.2f})")
  ax_m.set(xlabel="offset magnitude (m)", ylabel="density", xlim=(0, top),
           ylim=(0, 2 * np.histogram(fit.magnitudes, 100, (0, top), density=True)[0].max()))
  ax_m.legend(fontsize=8)
  for axis, name in enumerate("xyz"):
    ax_d.hist(fit.directions[:, axis], bins=50, range=(-1, 1), density=True,
              histtype="step", label=f"direction {name}")
  ax_d.axhline(0.5, color="k", linestyle="--", label="uniform on the sphere")
  ax_d.set(xlabel="direction coordinate", ylabel="density", xlim=(-1, 1))
  ax_d.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
