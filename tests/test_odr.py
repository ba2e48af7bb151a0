"""ODR: priors' inverse CDFs against scipy, PIT order and quantiles against numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from pointins_jax.pointins import odr

GAMMA = dict(kind="gamma", a=0.24, theta=2.53)  # Table 9 indoor
LOGNORMAL = dict(kind="lognormal", mu=0.0, sigma=0.76)  # Table 9 outdoor
N = 2000  # production: ~100k valid points per view


def scipy_ppf_logit(cfg, z):
  """Reference inverse CDF at levels sigmoid(z), float64, upper tail via isf."""
  dist = {"gamma": lambda: scipy.stats.gamma(cfg["a"], scale=cfg["theta"]),
          "lognormal": lambda: scipy.stats.lognorm(cfg["sigma"], scale=np.exp(cfg["mu"])),
          "uniform": lambda: scipy.stats.uniform(cfg["low"], cfg["high"] - cfg["low"])}
  d = dict(dist)[cfg["kind"]]()
  return np.where(z < 0, d.ppf(scipy.special.expit(z)), d.isf(scipy.special.expit(-z)))


def random_offsets(seed, n=N):
  rng = np.random.default_rng(seed)
  offsets = rng.normal(size=(n, 3)) * rng.gamma(0.5, 1.0, size=(n, 1))
  offsets[::7] = offsets[3]  # exact ties in magnitude
  return offsets.astype(np.float32)


@pytest.mark.parametrize("cfg, tol", [(GAMMA, 1e-4), (LOGNORMAL, 2e-6),
                                      (dict(kind="uniform", low=0.1, high=2.0), 1e-6)])
def test_ppf_matches_scipy(cfg, tol):
  # Levels of scenes up to ~1e7 points: |logit| <= 16. The Gamma table's measured
  # interpolation error is 4.5e-5 (relative); the closed forms are at float32 rounding.
  z = np.linspace(-16.0, 16.0, 4001).astype(np.float32)
  got = np.asarray(odr.prior_from_config(cfg).ppf_logit(z))
  np.testing.assert_allclose(got, scipy_ppf_logit(cfg, z.astype(np.float64)), rtol=tol)


@pytest.mark.parametrize("cfg", [GAMMA, LOGNORMAL])
def test_ppf_strictly_increasing_on_production_levels(cfg):
  n = 200_000  # a large production scene: ranks must map to distinct float32 values
  below = np.arange(n) + 0.5
  z = np.log(below) - np.log(n - below)
  values = np.asarray(jax.jit(odr.prior_from_config(cfg).ppf_logit)(z.astype(np.float32)))
  assert np.all(np.diff(values) > 0)


def test_ppf_from_probability_levels():
  prior = odr.prior_from_config(LOGNORMAL)
  u = np.array([0.01, 0.25, 0.5, 0.9], np.float32)
  np.testing.assert_allclose(prior.ppf(u), scipy.stats.lognorm.ppf(u, 0.76), rtol=1e-5)


@pytest.mark.parametrize("cfg", [GAMMA, LOGNORMAL])
def test_pit_preserves_order_and_reproduces_quantiles(cfg):
  offsets = random_offsets(0)
  valid = np.ones(N, bool)
  out = np.asarray(jax.jit(lambda o, v: odr.pit_normalize(o, v, odr.prior_from_config(cfg)))(
      offsets, valid))
  magnitude = np.linalg.norm(offsets, axis=-1)
  new_magnitude = np.linalg.norm(out, axis=-1)
  order = np.argsort(magnitude, kind="stable")
  # Strictly increasing along the (stable) rank order: M_i < M_j => M~_i < M~_j, ties
  # broken by index.
  assert np.all(np.diff(new_magnitude[order]) > 0)
  levels = scipy.special.logit((np.arange(N) + 0.5) / N)
  np.testing.assert_allclose(new_magnitude[order], scipy_ppf_logit(cfg, levels), rtol=2e-4)


def numpy_direction_pit(offsets, low):
  """Reference: rank each direction coordinate, map to Uniform(low, 1), renormalise."""
  n = len(offsets)
  direction = offsets / np.linalg.norm(offsets, axis=-1, keepdims=True)
  mapped = np.empty_like(direction)
  for axis in range(3):
    rank = np.empty(n)
    rank[np.argsort(direction[:, axis], kind="stable")] = np.arange(1, n + 1)
    mapped[:, axis] = low + (1 - low) * (rank - 0.5) / n
  return mapped / np.linalg.norm(mapped, axis=-1, keepdims=True)


@pytest.mark.parametrize("direction_prior, low", [("uniform_sphere", -1.0), ("uniform01", 0.0)])
def test_direction_pit_matches_numpy(direction_prior, low):
  offsets = np.random.default_rng(1).normal(size=(500, 3)).astype(np.float32)
  out = np.asarray(odr.pit_normalize(offsets, np.ones(500, bool),
                                     odr.prior_from_config(LOGNORMAL), direction_prior))
  unit = out / np.linalg.norm(out, axis=-1, keepdims=True)
  np.testing.assert_allclose(unit, numpy_direction_pit(offsets, low), atol=2e-5)


def test_direction_none_keeps_directions():
  offsets = random_offsets(2, 300)
  out = np.asarray(odr.pit_normalize(offsets, np.ones(300, bool),
                                     odr.prior_from_config(GAMMA), "none"))
  cosine = np.sum(out * offsets, -1) / (np.linalg.norm(out, axis=-1)
                                        * np.linalg.norm(offsets, axis=-1))
  np.testing.assert_allclose(cosine, 1.0, atol=1e-5)


def test_invalid_points_ignored_and_zeroed():
  offsets = random_offsets(3, 400)
  valid = np.random.default_rng(3).random(400) < 0.6
  prior = odr.prior_from_config(GAMMA)
  out = np.asarray(odr.pit_normalize(offsets, valid, prior))
  garbage = np.where(valid[:, None], offsets, 1e3).astype(np.float32)
  out_garbage = np.asarray(odr.pit_normalize(garbage, valid, prior))
  np.testing.assert_array_equal(out, out_garbage)
  assert np.all(out[~valid] == 0)
  # Quantiles use N_valid, not the padded N.
  n_valid = valid.sum()
  levels = scipy.special.logit((np.arange(n_valid) + 0.5) / n_valid)
  np.testing.assert_allclose(np.sort(np.linalg.norm(out[valid], axis=-1)),
                             scipy_ppf_logit(GAMMA, levels), rtol=2e-4)


def test_zero_offsets_and_all_invalid_are_finite():
  prior = odr.prior_from_config(LOGNORMAL)
  zeros = np.zeros((50, 3), np.float32)
  out = np.asarray(odr.pit_normalize(zeros, np.ones(50, bool), prior))
  assert np.isfinite(out).all()
  out = np.asarray(odr.pit_normalize(random_offsets(4, 50), np.zeros(50, bool), prior))
  np.testing.assert_array_equal(out, 0.0)


def test_non_finite_offsets_come_out_nan():
  offsets = random_offsets(6, 40)
  offsets[3] = np.nan
  offsets[5, 1] = np.inf
  for direction_prior in odr.DIRECTION_PRIORS:
    out = np.asarray(odr.pit_normalize(offsets, np.ones(40, bool),
                                       odr.prior_from_config(GAMMA), direction_prior))
    assert np.isnan(out[[3, 5]]).all() and np.isfinite(np.delete(out, [3, 5], 0)).all()


def test_vmap_matches_per_scene():
  offsets = np.stack([random_offsets(s, 200) for s in range(3)])
  valid = np.random.default_rng(5).random((3, 200)) < 0.8
  prior = odr.prior_from_config(GAMMA)
  batched = jax.jit(jax.vmap(lambda o, v: odr.pit_normalize(o, v, prior)))(offsets, valid)
  for b in range(3):
    # jit and eager fuse differently: equal up to float32 rounding.
    np.testing.assert_allclose(batched[b], odr.pit_normalize(offsets[b], valid[b], prior),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("prior", [
    odr.prior_from_config(GAMMA), odr.prior_from_config(LOGNORMAL),
    odr.prior_from_config(dict(kind="uniform", low=0.0, high=3.0)),
    odr.tabulated_prior("empirical", {"num_samples": 10.0}, np.linspace(-3, 3, 7),
                        np.log(np.array([0.01, 0.05, 0.1, 0.3, 0.5, 1.0, 2.0])))])
def test_save_load_round_trip(prior, tmp_path):
  path = str(tmp_path / "prior.npz")
  prior.save(path)
  loaded = odr.prior_from_config(dict(kind="file", path=path))
  assert loaded.kind == prior.kind and dict(loaded.params) == dict(prior.params)
  z = np.linspace(-20, 20, 101).astype(np.float32)
  np.testing.assert_array_equal(loaded.ppf_logit(z), prior.ppf_logit(z))


@pytest.mark.parametrize("cfg, match", [
    (dict(kind="beta", a=1.0), "kind='beta'"),
    (dict(kind="gamma", a=0.24), "missing \\['theta'\\]"),
    (dict(kind="gamma", a=-1.0, theta=1.0), "a > 0"),
    (dict(kind="lognormal", mu=0.0, sigma=float("nan")), "not finite"),
    (dict(kind="uniform", low=2.0, high=1.0), "low < high"),
    (dict(kind="file", path="/nonexistent/prior.npz"), "prior file not found"),
])
def test_bad_configs_raise(cfg, match):
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    odr.prior_from_config(cfg)


def test_malformed_file_raises(tmp_path):
  path = tmp_path / "bad.npz"
  path.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="bad.npz"):
    odr.load_prior(str(path))
  np.savez(tmp_path / "unsorted.npz", kind="empirical", params="{}",
           table_logit=np.array([0.0, 1.0]), table_log_quantile=np.array([1.0, 0.0]))
  with pytest.raises(ValueError, match="non-decreasing"):
    odr.load_prior(str(tmp_path / "unsorted.npz"))


def test_bad_shapes_raise():
  prior = odr.prior_from_config(GAMMA)
  with pytest.raises(ValueError, match="\\[N, 3\\]"):
    odr.pit_normalize(jnp.zeros((2, 5, 3)), jnp.ones((2, 5), bool), prior)
  with pytest.raises(ValueError, match="direction_prior"):
    odr.pit_normalize(jnp.zeros((5, 3)), jnp.ones(5, bool), prior, "gaussian")
