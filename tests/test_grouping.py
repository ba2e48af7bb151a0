"""PointGroup grouping at every point density, checked with ground-truth predictions.

Oracle cases (`probe.oracle`): ground-truth semantics with ground-truth offsets scaled by
0.5, or with 5 cm Gaussian noise, must be found (AP25 > 0.5) through the exact settings of
the probe demo / study (`probe.loop.evaluate` on `configs/probe_*:*_insseg,demo`) and of
Table 13 (`probe.unsupervised.pointins_instances` on the pretraining demo's grid), on every
built-in synthetic variant. One validation scene each (default rooms: ~1e5 points).
"""
import numpy as np
import pytest

from experiments import oracle_grouping
from pointins_jax.metrics import instance as instance_metrics
from pointins_jax.probe import grouping


@pytest.mark.parametrize("variant", list(oracle_grouping.VARIANTS))
def test_imperfect_oracle_offsets_find_instances(variant):
  for case in ("half", "noise5cm"):
    probe = oracle_grouping.probe_ap(variant, case, num_scenes=1)
    unsup = oracle_grouping.unsup_ap(variant, case, num_scenes=1)
    assert probe["AP25"] > 0.5 and unsup["AP25"] > 0.5, (variant, case, probe["AP25"],
                                                          unsup["AP25"])


@pytest.mark.parametrize("variant", ["indoor-default", "indoor-small", "outdoor-default"])
def test_zero_offsets_score_clearly_lower(variant):
  # Raw surfaces are linked at about their sampling spacing only, so without offsets
  # objects break up or merge with what they touch. (outdoor-small is left out: its few
  # cars stand isolated in a sparse sweep, and zero offsets find them too.)
  for fn in (oracle_grouping.probe_ap, oracle_grouping.unsup_ap):
    zero = fn(variant, "zero", num_scenes=1)["AP25"]
    half = fn(variant, "half", num_scenes=1)["AP25"]
    assert half - zero > 0.5, (fn.__name__, zero, half)
    if variant.startswith("indoor"):
      assert zero < 0.25, (fn.__name__, zero)


def _touching_boxes(spacing, rng):
  """Two 0.5 m cubes' top faces 1 cm apart, one class, sampled at `spacing` (jittered)."""
  grid = np.arange(0.0, 0.5, spacing)
  face = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
  face = face + rng.uniform(-0.2, 0.2, face.shape) * spacing
  a = np.c_[face, np.zeros(len(face))]
  b = a + [0.51, 0.0, 0.0]
  coord = np.concatenate([a, b])
  instance = np.repeat([0, 1], len(face))
  centre = np.where(instance[:, None] == 0, a.mean(0), b.mean(0))
  return coord, instance, centre


@pytest.mark.parametrize("spacing", [0.02, 0.05])
def test_offsets_separate_touching_instances_at_any_spacing(spacing):
  coord, instance, centre = _touching_boxes(spacing, np.random.default_rng(0))
  n = len(coord)
  probs = np.zeros((n, 2), np.float32)
  probs[:, 1] = 1.0
  segment = np.ones(n, np.int32)

  def ap25(offsets):
    props = grouping.pointgroup_proposals(coord, offsets, probs, np.ones(n, bool), [1],
                                          voxel_size=0.02, radius=0.03, min_points=20)
    return instance_metrics.instance_ap(segment, instance, props.masks, props.classes,
                                        props.scores, num_classes=2, ignore_classes=[0],
                                        min_region_size=20)["AP25"]

  assert ap25(0.5 * (centre - coord)) == 1.0  # both boxes found
  # Without offsets one merged component: it matches one box (IoU 0.5), the other is missed.
  assert ap25(np.zeros_like(coord)) <= 0.5


def test_linking_radius_follows_the_sampling_spacing():
  grid = np.arange(0.0, 1.0, 0.05)  # a plane sampled every 5 cm, on a 2 cm grid
  plane = np.stack(np.meshgrid(grid, grid, [0.0]), -1).reshape(-1, 3)
  radii = grouping.linking_radii(plane, voxel_size=0.02, radius=0.03)
  # The 4th nearest neighbour of an inner lattice point is one spacing away; edge points
  # (fewer neighbours) reach further.
  inner = np.all((plane[:, :2] > 0.01) & (plane[:, :2] < 0.94), axis=1)
  np.testing.assert_allclose(radii[inner], 0.05, rtol=1e-6)
  assert (radii[~inner] >= 0.05 - 1e-9).all()
  dense = grouping.linking_radii(plane / 5.0, voxel_size=0.02, radius=0.03)
  np.testing.assert_allclose(dense, 0.03)  # never below 1.5 voxels


def test_components_are_carried_back_to_every_point():
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0, 0], [1, 0, 0]], np.float64)
  coord = np.repeat(centres, 150, axis=0) + rng.normal(0, 0.1, (300, 3))
  offsets = np.repeat(centres, 150, axis=0) - coord  # perfect offsets: two points in space
  active = np.ones(300, bool)
  active[::7] = False
  labels = grouping.offset_components(coord, offsets, np.zeros(300, np.int32), active,
                                      voxel_size=0.02, radius=0.03, k_neighbors=16)
  assert (labels[~active] == -1).all()
  assert len(np.unique(labels[:150][active[:150]])) == 1
  assert len(np.unique(labels[150:][active[150:]])) == 1
  assert labels[0] != labels[-1]
