"""Offset distribution regularisation (ODR, paper Sec. 3.2): priors and the PIT mapping.

Each teacher offset is split into a magnitude and a unit direction. The magnitudes of one
scene's valid points are ranked and replaced by the prior's quantiles at the probability
levels `u = (rank - 0.5) / N` (probability integral transform, PIT); each direction
coordinate is PIT-mapped the same way; the offset is rebuilt as magnitude x direction.

Priors (`Prior`, built by `prior_from_config`) expose a jittable inverse CDF. They are
evaluated through the logit of the probability level, `z = log(u / (1 - u))`, because
`1 - u` loses all its digits in float32 near u = 1 while `z` keeps them; that is what
keeps neighbouring ranks apart at the top of long-tailed priors.

Kinds (config dicts, e.g. `dict(kind="gamma", a=0.24, theta=2.53)`):
  gamma(a, theta)       shape a, scale theta (Table 9 indoor: a=0.24, theta=2.53). jax has
                        no inverse incomplete gamma function, so the inverse CDF is
                        tabulated on the host with scipy and interpolated in jit (see
                        `tabulated_prior`).
  lognormal(mu, sigma)  log-magnitude ~ Normal(mu, sigma) (Table 9 outdoor: mu=0,
                        sigma=0.76); closed form via `ndtri`.
  uniform(low, high)    closed form; 0 <= low < high.
  empirical             a quantile table (fitted by `pointins.priors`); only from files.
  file(path)            a prior saved with `Prior.save` (.npz).
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

DIRECTION_PRIORS = ("uniform_sphere", "uniform01", "none")
_PARAMS = {"gamma": ("a", "theta"), "lognormal": ("mu", "sigma"), "uniform": ("low", "high")}
# Inverse-CDF tables: log-quantile against logit level on a uniform grid. +-40 covers
# every level (rank - 0.5) / N of any float32-indexable scene; outside it the table is
# extrapolated linearly.
_TABLE_LOGIT_RANGE = 40.0
_TABLE_SIZE = 4097
_EPS = 1e-12


def _probit_from_logit(z):
  """ndtri(sigmoid(z)) without forming 1 - u near u = 1 (uses the normal's symmetry)."""
  return jnp.where(z < 0, jax.scipy.special.ndtri(jax.nn.sigmoid(z)),
                   -jax.scipy.special.ndtri(jax.nn.sigmoid(-z)))


def _interp_extrapolate(x, xp, fp):
  """Piecewise-linear interpolation, continued linearly beyond both ends of `xp`."""
  inside = jnp.interp(x, xp, fp)
  below = fp[0] + (x - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
  above = fp[-1] + (x - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
  return jnp.where(x < xp[0], below, jnp.where(x > xp[-1], above, inside))


@dataclasses.dataclass(frozen=True, eq=False)
class Prior:
  """A magnitude prior (non-negative, metres) with a jittable inverse CDF.

  Attributes:
    kind: 'gamma' | 'lognormal' | 'uniform' | 'empirical'.
    params: the parametric parameters (empty for 'empirical'), plus any provenance
      numbers a fit recorded (e.g. sample count).
    table_logit: f32 [T] increasing logit levels of the inverse-CDF table (tabulated
      kinds only: gamma, empirical).
    table_log_quantile: f32 [T] non-decreasing log-quantiles (log metres) at those levels.
  """

  kind: str
  params: Mapping[str, float]
  table_logit: Optional[np.ndarray] = None
  table_log_quantile: Optional[np.ndarray] = None

  def ppf_logit(self, z):
    """Inverse CDF at the level sigmoid(z); z: f32 [...] -> f32 [...] metres."""
    z = jnp.asarray(z, jnp.float32)
    if self.table_logit is not None:
      return jnp.exp(_interp_extrapolate(z, jnp.asarray(self.table_logit),
                                         jnp.asarray(self.table_log_quantile)))
    if self.kind == "lognormal":
      return jnp.exp(self.params["mu"] + self.params["sigma"] * _probit_from_logit(z))
    if self.kind == "uniform":
      low, high = self.params["low"], self.params["high"]
      return low + (high - low) * jax.nn.sigmoid(z)
    raise ValueError(f"Prior kind {self.kind!r} has no inverse CDF (no table).")

  def ppf(self, u):
    """Inverse CDF at probability levels u in (0, 1); f32 [...] -> f32 [...] metres."""
    u = jnp.asarray(u, jnp.float32)
    return self.ppf_logit(jnp.log(u) - jnp.log1p(-u))

  def save(self, path: str) -> None:
    """Writes the prior to an .npz file (`load_prior` reads it back)."""
    arrays = {"kind": np.array(self.kind), "params": np.array(json.dumps(dict(self.params)))}
    if self.table_logit is not None:
      arrays["table_logit"] = np.asarray(self.table_logit, np.float32)
      arrays["table_log_quantile"] = np.asarray(self.table_log_quantile, np.float32)
    with open(path, "wb") as f:
      np.savez(f, **arrays)


def tabulated_prior(kind: str, params: Mapping[str, float], table_logit: np.ndarray,
                    table_log_quantile: np.ndarray, where: str = "prior") -> Prior:
  """Checks and wraps an inverse-CDF table (log-quantile vs logit level)."""
  table_logit = np.asarray(table_logit, np.float64)
  table_log_quantile = np.asarray(table_log_quantile, np.float64)
  if table_logit.ndim != 1 or table_logit.shape != table_log_quantile.shape:
    raise ValueError(f"{where}: the quantile table must be two 1-D arrays of equal length, "
                     f"got {table_logit.shape} and {table_log_quantile.shape}.")
  if table_logit.size < 2:
    raise ValueError(f"{where}: the quantile table needs at least 2 entries.")
  if not (np.isfinite(table_logit).all() and np.isfinite(table_log_quantile).all()):
    raise ValueError(f"{where}: the quantile table has NaN/inf entries; refit the prior.")
  if np.any(np.diff(table_logit) <= 0) or np.any(np.diff(table_log_quantile) < 0):
    raise ValueError(f"{where}: the quantile table must have increasing levels and "
                     "non-decreasing quantiles; refit the prior.")
  return Prior(kind, dict(params), table_logit.astype(np.float32),
               table_log_quantile.astype(np.float32))


def gamma_prior(a: float, theta: float) -> Prior:
  """Gamma(shape a, scale theta), inverse CDF tabulated with scipy on a logit grid.

  Interpolating log-quantiles linearly in the logit level is accurate because the log of
  the Gamma inverse CDF is close to linear in the logit at both tails (u^(1/a) near 0,
  -log(1 - u) near 1); tests bound the relative error against scipy.
  """
  z = np.linspace(-_TABLE_LOGIT_RANGE, _TABLE_LOGIT_RANGE, _TABLE_SIZE)
  lower = scipy.special.expit(z)
  upper = scipy.special.expit(-z)  # 1 - u, exact on the upper side
  quantile = np.where(z < 0, scipy.stats.gamma.ppf(lower, a, scale=theta),
                      scipy.stats.gamma.isf(upper, a, scale=theta))
  # Below ~1e-300 m the float64 quantile underflows; such levels never occur in a scene.
  log_quantile = np.log(np.maximum(quantile, np.finfo(np.float64).tiny))
  return tabulated_prior("gamma", {"a": a, "theta": theta}, z, log_quantile,
                         f"gamma(a={a}, theta={theta})")


def _check_params(kind: str, params: Mapping[str, Any], where: str) -> dict:
  names = _PARAMS[kind]
  missing = [n for n in names if n not in params]
  extra = [n for n in params if n not in names]
  if missing or extra:
    raise ValueError(f"{where}: {kind} prior takes parameters {names}; missing {missing}, "
                     f"unexpected {extra}.")
  values = {}
  for n in names:
    value = float(params[n])
    if not math.isfinite(value):
      raise ValueError(f"{where}: {kind} parameter {n}={params[n]!r} is not finite.")
    values[n] = value
  if kind == "gamma" and (values["a"] <= 0 or values["theta"] <= 0):
    raise ValueError(f"{where}: gamma needs a > 0 and theta > 0, got {values}.")
  if kind == "lognormal" and values["sigma"] <= 0:
    raise ValueError(f"{where}: lognormal needs sigma > 0, got {values}.")
  if kind == "uniform" and not 0 <= values["low"] < values["high"]:
    raise ValueError(f"{where}: uniform magnitudes need 0 <= low < high, got {values}.")
  return values


def prior_from_config(cfg: Mapping[str, Any], where: str = "magnitude_prior") -> Prior:
  """Builds a Prior from a config dict / ConfigDict: {kind, params...} (see module doc)."""
  cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  kind = cfg.pop("kind", None)
  if kind == "file":
    if set(cfg) != {"path"}:
      raise ValueError(f"{where}: a 'file' prior takes exactly one field, path; got {cfg}.")
    return load_prior(cfg["path"])
  if kind not in _PARAMS:
    raise ValueError(f"{where}: kind={kind!r}; use one of {sorted(_PARAMS) + ['file']} "
                     "('empirical' priors are fitted by experiments.fit_prior and loaded "
                     "with kind='file').")
  values = _check_params(kind, cfg, where)
  if kind == "gamma":
    return gamma_prior(values["a"], values["theta"])
  return Prior(kind, values)


def load_prior(path: str) -> Prior:
  """Reads a prior written by `Prior.save`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: prior file not found; fit one with "
                            "`python -m experiments.fit_prior`.") from e
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .npz prior file ({e}).") from e
  if "kind" not in arrays or "params" not in arrays:
    raise ValueError(f"{path}: missing 'kind'/'params'; not a prior written by Prior.save.")
  kind = str(arrays["kind"])
  try:
    params = json.loads(str(arrays["params"]))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: 'params' is not valid JSON ({e}).") from e
  if "table_logit" in arrays:
    if "table_log_quantile" not in arrays:
      raise ValueError(f"{path}: has table_logit but no table_log_quantile.")
    return tabulated_prior(kind, params, arrays["table_logit"], arrays["table_log_quantile"],
                           path)
  if kind not in ("lognormal", "uniform"):
    raise ValueError(f"{path}: a {kind!r} prior needs a quantile table; refit it.")
  return Prior(kind, _check_params(kind, params, path))


def _pit_sorted(values, valid, target_ppf_logit):
  """PIT of one column among valid entries; returns (order, sorted targets, n_valid).

  values: f32 [N]; invalid entries sort last (they get target 0). Stable sort, so equal
  values keep index order and still receive distinct quantiles.
  """
  n = values.shape[0]
  order = jnp.argsort(jnp.where(valid, values, jnp.inf), stable=True)
  n_valid = jnp.sum(valid).astype(jnp.float32)
  position = jnp.arange(n, dtype=jnp.float32)  # rank - 1
  is_valid = position < n_valid
  # logit((rank - 0.5) / n_valid), computed from counts so it stays exact near u = 1.
  below = position + 0.5
  above = jnp.maximum(n_valid - below, 0.5)
  z = jnp.log(below) - jnp.log(above)
  return order, jnp.where(is_valid, target_ppf_logit(z), 0.0)


def _strictly_increasing(sorted_nonneg):
  """Breaks float32 rounding ties in a non-decreasing non-negative sequence by 1-ulp steps.

  Non-negative float32 values order like their int32 bit patterns, so a cumulative max of
  (bits - position) + position is the smallest strictly increasing sequence >= the input.
  """
  bits = jax.lax.bitcast_convert_type(jnp.maximum(sorted_nonneg, 0.0), jnp.int32)
  position = jnp.arange(bits.shape[0], dtype=jnp.int32)
  bits = jax.lax.cummax(bits - position) + position
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def pit_normalize(offsets, valid, magnitude_prior: Prior,
                  direction_prior: str = "uniform_sphere"):
  """ODR for one scene: PIT-maps offset magnitudes and directions onto the priors.

  Magnitudes: the valid points' magnitudes are ranked (stable sort: ties keep index order)
  and replaced by `magnitude_prior` quantiles at u = (rank - 0.5) / N_valid. Rank order is
  preserved exactly: M_i < M_j implies M~_i < M~_j (float32 ties from rounding are broken
  by one-ulp steps).

  Directions (unit vectors o / |o|; a zero offset has direction 0, so nothing is NaN):
  Table 9 lists the direction prior as "Uniform(0, 1)" per axis. A unit vector's
  coordinates lie in [-1, 1], so we read Uniform(0, 1) as the PIT level u, mapped to the
  marginal of a direction uniform on the sphere, which is exactly Uniform(-1, 1) on each
  axis (Archimedes' hat-box theorem). Options:
    'uniform_sphere' (default): each coordinate PIT-mapped to Uniform(-1, 1), then the
      vector is renormalised to unit length.
    'uniform01': the literal reading, each coordinate mapped to Uniform(0, 1) and
      renormalised; every offset then points into the positive octant.
    'none': keep the predicted directions.

  Args:
    offsets: f32 [N, 3] offsets (metres) of one scene; vmap for batches.
    valid: bool [N] real points. Invalid points get a zero offset and do not count in N.
    magnitude_prior: a `Prior`.
    direction_prior: 'uniform_sphere' | 'uniform01' | 'none'.
  Returns:
    f32 [N, 3] regularised offsets. With no valid point, all zeros. Non-finite offsets
    cannot be rejected inside jit: valid points with one come out NaN, for the train
    step's non-finite guard to catch.
  """
  if offsets.ndim != 2 or offsets.shape[-1] != 3:
    raise ValueError(f"pit_normalize: offsets must have shape [N, 3], got {offsets.shape} "
                     "(vmap over the batch axis).")
  if valid.shape != offsets.shape[:1]:
    raise ValueError(f"pit_normalize: valid must have shape {offsets.shape[:1]}, "
                     f"got {valid.shape}.")
  if direction_prior not in DIRECTION_PRIORS:
    raise ValueError(f"pit_normalize: direction_prior={direction_prior!r}; use one of "
                     f"{DIRECTION_PRIORS}.")
  offsets = offsets.astype(jnp.float32)
  valid = valid.astype(bool)
  magnitude = jnp.linalg.norm(offsets, axis=-1)
  direction = offsets / jnp.maximum(magnitude, _EPS)[:, None]

  order, new_magnitude = _pit_sorted(magnitude, valid, magnitude_prior.ppf_logit)
  new_magnitude = jnp.zeros_like(magnitude).at[order].set(_strictly_increasing(new_magnitude))

  if direction_prior != "none":
    low = -1.0 if direction_prior == "uniform_sphere" else 0.0
    uniform = lambda z: low + (1.0 - low) * jax.nn.sigmoid(z)  # noqa: E731
    def pit_column(column):
      order, new = _pit_sorted(column, valid, uniform)
      return jnp.zeros_like(column).at[order].set(new)
    mapped = jax.vmap(pit_column, in_axes=1, out_axes=1)(direction)
    direction = mapped / jnp.maximum(jnp.linalg.norm(mapped, axis=-1), _EPS)[:, None]
  out = jnp.where(jnp.isfinite(offsets).all(-1, keepdims=True),
                  new_magnitude[:, None] * direction, jnp.nan)
  return jnp.where(valid[:, None], out, 0.0)
