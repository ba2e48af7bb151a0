"""Prior fitting: offsets vs brute force, quantile tables vs numpy, HDBSCAN vs labels."""
import os

import numpy as np
import pytest
import scipy.stats

from pointins_jax.data.scene import Scene
from pointins_jax.pointins import odr
from pointins_jax.pointins import priors


def blob_scene(seed, num_objects=4, points_per_object=150):
  """Well-separated Gaussian blobs (0.2 m spread, 3 m apart), one instance each.

  Production scenes have ~100k points and tens of instances; tiny here for speed.
  """
  rng = np.random.default_rng(seed)
  centres = np.stack([np.arange(num_objects) * 3.0, rng.uniform(0, 1, num_objects),
                      np.zeros(num_objects)], -1)
  coord = np.concatenate([c + rng.normal(0, 0.2, (points_per_object, 3)) for c in centres])
  instance = np.repeat(np.arange(num_objects), points_per_object)
  instance[:10] = -1  # unlabelled points
  return Scene(coord=coord.astype(np.float32), instance=instance, name=f"blobs{seed}")


def test_instance_offsets_match_brute_force():
  scene = blob_scene(0)
  got = priors.instance_offsets(scene.coord, scene.instance)
  expected = []
  for i, inst in enumerate(scene.instance):
    if inst >= 0:
      expected.append(scene.coord[scene.instance == inst].astype(np.float64).mean(0)
                      - scene.coord[i])
  np.testing.assert_allclose(got, np.array(expected), atol=1e-9)


def test_select_fraction_is_seeded_and_sized():
  items = list(range(300))
  chosen = priors.select_fraction(items, 0.01, seed=3)
  assert len(chosen) == 3 and chosen == priors.select_fraction(items, 0.01, seed=3)
  assert len(priors.select_fraction(items[:10], 0.01, seed=0)) == 1  # at least one
  with pytest.raises(ValueError, match="fraction"):
    priors.select_fraction(items, 0.0, seed=0)
  with pytest.raises(ValueError, match="No scenes"):
    priors.select_fraction([], 0.5, seed=0)


def test_empirical_prior_reproduces_samples_at_hazen_levels():
  samples = np.random.default_rng(0).gamma(0.5, 1.0, 800) + 1e-3
  prior = priors.empirical_prior(samples)
  levels = (np.arange(800) + 0.5) / 800
  np.testing.assert_allclose(prior.ppf(levels.astype(np.float32)), np.sort(samples),
                             rtol=1e-4)


def test_empirical_prior_approaches_the_true_distribution():
  samples = scipy.stats.gamma.rvs(0.24, scale=2.53, size=50_000, random_state=1)
  prior = priors.empirical_prior(samples)
  u = np.array([0.2, 0.4, 0.6, 0.8, 0.95], np.float32)
  np.testing.assert_allclose(prior.ppf(u), scipy.stats.gamma.ppf(u, 0.24, scale=2.53),
                             rtol=0.05)


def test_fit_parametric_recovers_parameters():
  gamma = scipy.stats.gamma.rvs(0.8, scale=2.0, size=20_000, random_state=2)
  lognormal = scipy.stats.lognorm.rvs(0.76, scale=np.exp(0.3), size=20_000, random_state=3)
  fit_g = priors.fit_parametric(gamma)["gamma"]
  fit_l = priors.fit_parametric(lognormal)["lognormal"]
  np.testing.assert_allclose([fit_g["a"], fit_g["theta"]], [0.8, 2.0], rtol=0.05)
  np.testing.assert_allclose([fit_l["mu"], fit_l["sigma"]], [0.3, 0.76], atol=0.03)


def test_fit_from_labels_round_trips_through_file(tmp_path):
  scenes = [blob_scene(s) for s in range(4)]
  fit = priors.fit_empirical_prior(scenes, fraction=0.5, seed=0)
  chosen = priors.select_fraction(scenes, 0.5, seed=0)
  expected = np.concatenate([priors.instance_offsets(s.coord, s.instance) for s in chosen])
  assert fit.num_scenes == 2 and fit.num_points == len(expected)
  assert fit.num_unassigned == 20
  np.testing.assert_allclose(np.sort(fit.magnitudes),
                             np.sort(np.linalg.norm(expected, axis=-1)), rtol=1e-9)
  path = str(tmp_path / "prior.npz")
  fit.prior.save(path)
  loaded = odr.load_prior(path)
  u = np.linspace(0.01, 0.99, 50).astype(np.float32)
  np.testing.assert_array_equal(loaded.ppf(u), fit.prior.ppf(u))
  assert loaded.kind == "empirical"


def test_fit_loads_lazily():
  loaded = []
  def load(seed):
    loaded.append(seed)
    return blob_scene(seed)
  priors.fit_empirical_prior(list(range(10)), fraction=0.2, seed=1, load=load)
  assert len(loaded) == 2


def test_hdbscan_prior_matches_label_prior_on_separated_blobs():
  scenes = [blob_scene(s) for s in range(2)]
  from_labels = priors.fit_empirical_prior(scenes, fraction=1.0, seed=0)
  from_clusters = priors.fit_hdbscan_prior(scenes, fraction=1.0, seed=0, min_cluster_size=30)
  u = np.array([0.25, 0.5, 0.75], np.float32)
  np.testing.assert_allclose(from_clusters.prior.ppf(u), from_labels.prior.ppf(u), rtol=0.1)


def test_missing_labels_and_empty_fits_raise():
  unlabelled = Scene(coord=np.zeros((5, 3), np.float32))
  with pytest.raises(ValueError, match="no instance labels"):
    priors.fit_empirical_prior([unlabelled], fraction=1.0)
  no_instances = Scene(coord=np.zeros((5, 3), np.float32), instance=-np.ones(5, np.int32))
  with pytest.raises(ValueError, match="Only 0 points"):
    priors.fit_empirical_prior([no_instances], fraction=1.0)
  with pytest.raises(ValueError, match="finite"):
    priors.empirical_prior(np.array([1.0, np.nan]))


def test_plot_prior_writes_png(tmp_path):
  fit = priors.fit_empirical_prior([blob_scene(0)], fraction=1.0)
  path = str(tmp_path / "prior.png")
  priors.plot_prior(fit, path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 10_000


def test_fit_prior_cli_on_pointcept_folders(tmp_path, monkeypatch):
  """The CLI end to end, with the Pointcept reader replaced by in-memory scenes."""
  from experiments import fit_prior  # pylint: disable=import-outside-toplevel
  scenes = {f"scene{s}": blob_scene(s) for s in range(3)}
  monkeypatch.setattr(fit_prior, "scene_source",
                      lambda args: (sorted(scenes), scenes.__getitem__))
  out = str(tmp_path / "fit" / "prior.npz")
  assert fit_prior.main(["--data-root", "unused", "--source", "labels", "--fraction", "1",
                         "--out", out]) == 0
  assert os.path.exists(str(tmp_path / "fit" / "prior.png"))
  assert odr.load_prior(out).kind == "empirical"
