"""Tests for pointins_jax.data.transforms against brute-force / closed-form references."""
import numpy as np
import pytest

from pointins_jax.data import config as config_lib
from pointins_jax.data import transforms


def _cloud(n=2000, seed=0):
  # Production: 50k-200k points per room; 2k is enough to hit every code path.
  rng = np.random.default_rng(seed)
  coord = rng.uniform([-2, -3, 0], [3, 2, 2.5], (n, 3)).astype(np.float32)
  normal = rng.standard_normal((n, 3))
  return coord, normal / np.linalg.norm(normal, axis=1, keepdims=True)


def _cells(coord, size):
  return [tuple(c) for c in np.floor((coord - coord.min(0)) / size).astype(int)]


def test_grid_sample_train_keeps_one_point_per_occupied_cell():
  coord, _ = _cloud()
  index, inverse = transforms.grid_sample_train(coord, 0.25, np.random.default_rng(1))
  cells = _cells(coord, 0.25)
  kept = [cells[i] for i in index]
  assert len(kept) == len(set(kept)) == len(set(cells))
  # inverse: every point maps to the kept point of its own cell.
  assert all(cells[index[inverse[p]]] == cells[p] for p in range(len(coord)))


def test_grid_sample_train_is_seeded_and_random():
  coord, _ = _cloud()
  a, _ = transforms.grid_sample_train(coord, 0.25, np.random.default_rng(3))
  b, _ = transforms.grid_sample_train(coord, 0.25, np.random.default_rng(3))
  c, _ = transforms.grid_sample_train(coord, 0.25, np.random.default_rng(4))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_grid_sample_fragments_cover_every_point():
  coord, _ = _cloud()
  fragments = transforms.grid_sample_fragments(coord, 0.25)
  cells = _cells(coord, 0.25)
  counts = {}
  for cell in cells:
    counts[cell] = counts.get(cell, 0) + 1
  assert len(fragments) == max(counts.values())
  for fragment in fragments:  # one point per occupied cell
    assert sorted(cells[i] for i in fragment) == sorted(counts)
  np.testing.assert_array_equal(np.unique(np.concatenate(fragments)), np.arange(len(coord)))


def test_nearest_crop_matches_brute_force():
  coord, _ = _cloud(500)
  center = np.array([0.3, -0.2, 1.0])
  got = transforms.nearest_crop(coord, center, 100)
  expected = np.sort(np.argsort(np.linalg.norm(coord - center, axis=1))[:100])
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(4))
def test_composed_augmentation_inverts_exactly(seed):
  coord, normal = _cloud(seed=seed)
  aug = config_lib.data_config("indoor").augment
  aug.rotate_z_p = aug.rotate_xy_p = aug.elastic_p = 1.0  # exercise every op
  out = transforms.augment_geometry(coord, normal, aug, np.random.default_rng(seed))
  assert np.abs(out.record.displacement).max() > 1e-3  # elastic + jitter really moved points
  assert np.abs(out.coord - coord).max() > 0.1
  np.testing.assert_allclose(transforms.invert_view(out.coord.astype(np.float32), out.record),
                             coord, atol=1e-5)


def test_affine_record_and_normals_closed_form():
  coord, normal = _cloud(50)
  out = transforms.GeometricAugmenter(coord, normal)
  out.center_shift()
  out.scale(2.0)
  out.rotate(np.pi / 2, axis=2)
  out.flip(0)
  rot = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
  linear = np.diag([-1.0, 1, 1]) @ rot * 2.0
  np.testing.assert_allclose(out.record.linear, linear, atol=1e-12)
  np.testing.assert_allclose(out.coord, coord @ linear.T + out.record.translation, atol=1e-6)
  np.testing.assert_allclose(out.normal, normal @ (np.diag([-1.0, 1, 1]) @ rot).T, atol=1e-12)
  np.testing.assert_allclose(out.coord[:, 2].min(), 0.0, atol=1e-6)  # z min moved to 0


def test_normals_stay_unit_under_anisotropic_scale():
  coord, normal = _cloud(100)
  out = transforms.GeometricAugmenter(coord, normal)
  out.affine(np.diag([1.0, 2.0, 0.5]))
  np.testing.assert_allclose(np.linalg.norm(out.normal, axis=1), 1.0, atol=1e-12)
  # A plane's normal must stay perpendicular to vectors in the plane after the map.
  tangent = np.cross(normal, [0.0, 0.0, 1.0])
  mapped = tangent @ np.diag([1.0, 2.0, 0.5])
  np.testing.assert_allclose(np.sum(mapped * out.normal, axis=1), 0.0, atol=1e-12)


def test_color_augmentation_stays_in_range_and_is_seeded():
  rng = np.random.default_rng(0)
  color = rng.uniform(0, 255, (300, 3)).astype(np.float32)
  aug = config_lib.data_config("indoor").augment
  aug.auto_contrast_p = 1.0
  a = transforms.augment_color(color, aug, np.random.default_rng(5))
  b = transforms.augment_color(color, aug, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0 and a.max() <= 255 and not np.allclose(a, color)


def test_pack_cells_rejects_huge_scenes():
  with pytest.raises(ValueError, match="grid_size"):
    transforms.pack_cells(np.array([[0, 0, 1 << 22]]))
