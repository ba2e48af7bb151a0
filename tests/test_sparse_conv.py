"""Neighbour tables vs brute force; submanifold conv vs a dense-voxel scipy correlation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from pointins_jax.model import sparse_conv


def _scene(rng, n, side, largest=False):
  """n distinct occupied cells of a side^3 grid (optionally shifted to the 2^16 border)."""
  flat = rng.choice(side ** 3, n, replace=False)
  g = np.stack(np.unravel_index(flat, (side,) * 3), -1).astype(np.int32)
  if largest:
    g += (1 << 16) - side
  return g


def _brute_neighbors(g, valid, k):
  offsets = sparse_conv.kernel_offsets(k)
  cell_to_index = {tuple(c): i for i, c in enumerate(g) if valid[i]}
  table = np.full((len(g), len(offsets)), -1)
  for i in np.flatnonzero(valid):
    for j, o in enumerate(offsets):
      table[i, j] = cell_to_index.get(tuple(g[i] + o), -1)
  return table


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("largest", [False, True])
def test_neighbor_table_matches_brute_force(kernel_size, largest):
  rng = np.random.default_rng(kernel_size)
  g = _scene(rng, 300, 10, largest)
  valid = rng.random(300) < 0.8
  coord = g.astype(np.float32)
  table = jax.jit(sparse_conv.neighbor_table, static_argnums=3)(
      jnp.asarray(g), jnp.asarray(valid), jnp.asarray(coord), kernel_size)
  np.testing.assert_array_equal(np.asarray(table), _brute_neighbors(g, valid, kernel_size))


def _batch_with_shared_cells(rng, box, largest=False):
  """Two scenes of 200 cells of a box (3 sides) plus 60 repeated cells each, 10% padding:
  grid [2, 260, 3]."""
  grids, coords, valids = [], [], []
  for _ in range(2):
    flat = rng.choice(np.prod(box), 200, replace=False)
    g = np.stack(np.unravel_index(flat, box), -1).astype(np.int32)
    if largest:
      g += (1 << 16) - np.array(box)
    g = np.concatenate([g, g[rng.integers(0, 200, 60)]])
    grids.append(g)
    coords.append((g + rng.random(g.shape)).astype(np.float32))
    valids.append(rng.random(len(g)) < 0.9)
  return np.stack(grids), np.stack(coords), np.stack(valids)


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("dense_budget", [sparse_conv.DENSE_CELLS_PER_POINT, 0])
def test_batched_tables_equal_the_search(kernel_size, largest, dense_budget):
  # The dense box (at most 9 x 14 x 11 cells <= 64 * 260) and, with no budget, the
  # sorted-cell search give each scene's neighbor_table, shared cells and the 2^16 border
  # included; unequal sides catch a mixed-up box index.
  grid, coord, valid = _batch_with_shared_cells(np.random.default_rng(kernel_size),
                                                (9, 14, 11), largest)
  size = max(1, dense_budget * grid.shape[1])
  fits = [bool(sparse_conv._fits_dense_box(jnp.asarray(g), jnp.asarray(v), size))
          for g, v in zip(grid, valid)]
  assert fits == [dense_budget > 0] * 2
  tables = jax.jit(sparse_conv.neighbor_tables, static_argnums=(3, 5))(
      jnp.asarray(grid), jnp.asarray(valid), jnp.asarray(coord), kernel_size, None,
      dense_budget)
  for b in range(2):
    expected = sparse_conv.neighbor_table(jnp.asarray(grid[b]), jnp.asarray(valid[b]),
                                          jnp.asarray(coord[b]), kernel_size)
    np.testing.assert_array_equal(np.asarray(tables[b]), np.asarray(expected))


def test_dense_box_covers_exactly_the_occupied_cells():
  g = np.array([[5, 7, 9], [6, 7, 9], [5, 9, 12], [60000, 0, 0]], np.int32)
  valid = np.array([True, True, True, False])
  origin, extent = sparse_conv._occupied_box(jnp.asarray(g), jnp.asarray(valid))
  np.testing.assert_array_equal(np.asarray(origin), [5, 7, 9])
  np.testing.assert_array_equal(np.asarray(extent), [2, 3, 4])  # 24 cells
  fits = lambda size: bool(sparse_conv._fits_dense_box(jnp.asarray(g), jnp.asarray(valid), size))
  assert fits(24) and not fits(23)
  # A batch whose second scene spans the whole 2^16 range takes the search for both.
  grid = np.stack([g, np.array([[0, 0, 0], [65535, 65535, 65535], [1, 1, 1], [2, 2, 2]])])
  tables = sparse_conv.neighbor_tables(jnp.asarray(grid), jnp.ones((2, 4), bool),
                                       jnp.asarray(grid, jnp.float32), 3)
  assert int(tables[1, 2, 13]) == 2 and int(tables[1, 2, 26]) == 3  # (1,1,1) -> (2,2,2)
  assert int(tables[0, 0, 22]) == 1  # (5,7,9) + (1,0,0)


def test_kernel_offsets_are_spconv_order():
  offsets = sparse_conv.kernel_offsets(3)
  assert offsets.shape == (27, 3)
  np.testing.assert_array_equal(offsets[[0, 1, 3, 9, 13]],
                                [[-1, -1, -1], [-1, -1, 0], [-1, 0, -1], [0, -1, -1], [0, 0, 0]])


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submconv_matches_dense_correlation(kernel_size):
  rng = np.random.default_rng(7)
  side, n, c_in, c_out = 8, 150, 3, 4
  g = _scene(rng, n, side)
  valid = np.ones(n, bool)
  feat = rng.normal(size=(n, c_in)).astype(np.float32)
  kernel = rng.normal(size=(kernel_size ** 3, c_in, c_out)).astype(np.float32)
  table = sparse_conv.neighbor_table(jnp.asarray(g), jnp.asarray(valid),
                                     jnp.asarray(g, jnp.float32), kernel_size)
  out = np.asarray(sparse_conv.sparse_conv(jnp.asarray(feat), table, jnp.asarray(kernel)))

  dense = np.zeros((side,) * 3 + (c_in,), np.float64)
  dense[g[:, 0], g[:, 1], g[:, 2]] = feat
  cube = kernel.reshape((kernel_size,) * 3 + (c_in, c_out))  # [kx, ky, kz, C_in, C_out]
  expected = np.zeros((n, c_out))
  for i in range(c_in):
    for o in range(c_out):
      full = scipy.ndimage.correlate(dense[..., i], cube[..., i, o], mode="constant")
      expected[:, o] += full[g[:, 0], g[:, 1], g[:, 2]]  # submanifold: occupied sites only
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_invalid_points_neither_send_nor_receive():
  g = np.array([[1, 1, 1], [1, 1, 2], [1, 2, 1]], np.int32)
  valid = np.array([True, True, False])
  table = np.asarray(sparse_conv.neighbor_table(jnp.asarray(g), jnp.asarray(valid),
                                                jnp.zeros((3, 3)), 3))
  assert (table[2] == -1).all()
  assert 2 not in table
  assert table[0, 14] == 1  # offset (0, 0, +1)


def test_shared_cells_resolve_to_the_first_point_in_coordinate_order():
  """Views are not re-voxelised after augmentation, so cells can hold several points: the
  neighbour is the first of them by coordinates (x, y, z), whatever the input order."""
  rng = np.random.default_rng(5)
  g = _scene(rng, 120, 6)
  dup = rng.integers(0, 120, 80)  # 80 extra points in already occupied cells
  g = np.concatenate([g, g[dup]])
  coord = (g + rng.random(g.shape)).astype(np.float32)
  valid = rng.random(len(g)) < 0.9
  best = {}
  for i in np.lexsort((np.arange(len(g)), coord[:, 2], coord[:, 1], coord[:, 0])):
    if valid[i]:
      best.setdefault(tuple(g[i]), i)
  offsets = sparse_conv.kernel_offsets(3)
  expected = np.full((len(g), 27), -1)
  for i in np.flatnonzero(valid):
    for j, o in enumerate(offsets):
      expected[i, j] = best.get(tuple(g[i] + o), -1)
  perm = rng.permutation(len(g))
  table = np.asarray(jax.jit(sparse_conv.neighbor_table, static_argnums=3)(
      jnp.asarray(g[perm]), jnp.asarray(valid[perm]), jnp.asarray(coord[perm]), 3))
  # Map the permuted table back to original ids.
  mapped = np.where(table >= 0, perm[np.maximum(table, 0)], -1)
  restored = np.empty_like(mapped)
  restored[perm] = mapped
  np.testing.assert_array_equal(restored, expected)


def _dense_gather_conv(features, neighbors, kernel):
  """Independent reference: all neighbour rows at once and one einsum (autodiff'd)."""
  rows = jnp.where((neighbors >= 0)[..., None], features[jnp.maximum(neighbors, 0)], 0.0)
  return jnp.einsum("nkc,kcd->nd", rows, kernel)


# (budget, min depth) -> forward / backward G: (1, 1) -> 1 / 3, (1, 16) -> 9 / 3, (2^30, 1) -> 9 / 9.
@pytest.mark.parametrize("budget_bytes,min_depth", [(1, 1), (1, 16), (1 << 30, 1)])
def test_sparse_conv_value_and_gradients_match_dense_reference(monkeypatch, budget_bytes,
                                                               min_depth):
  """The grouped GEMM forward and its hand-written VJP (recomputed rows, scatter-add of the
  feature gradient) against autodiff of a one-einsum conv, for one offset group per step
  1 to 9 per GEMM; missing neighbours (-1) and repeated neighbours included."""
  monkeypatch.setattr(sparse_conv, "GATHER_BUDGET_BYTES", budget_bytes)
  monkeypatch.setattr(sparse_conv, "MIN_FORWARD_DEPTH", min_depth)
  rng = np.random.default_rng(3)
  n, c_in, c_out = 27, 5, 4
  features = jnp.asarray(rng.normal(size=(2, n, c_in)), jnp.float32)
  neighbors = jnp.asarray(np.where(rng.random((2, n, 27)) < 0.4,
                                   rng.integers(0, n, (2, n, 27)), -1), jnp.int32)
  kernel = jnp.asarray(rng.normal(size=(27, c_in, c_out)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(2, n, c_out)), jnp.float32)

  def loss(conv):
    return lambda f, k: jnp.sum(jax.vmap(conv, in_axes=(0, 0, None))(f, neighbors, k)
                                * cotangent)

  expected = jax.vmap(_dense_gather_conv, in_axes=(0, 0, None))(features, neighbors, kernel)
  got = jax.jit(jax.vmap(sparse_conv.sparse_conv, in_axes=(0, 0, None)))(
      features, neighbors, kernel)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  want = jax.grad(loss(_dense_gather_conv), argnums=(0, 1))(features, kernel)
  have = jax.jit(jax.grad(loss(sparse_conv.sparse_conv), argnums=(0, 1)))(features, kernel)
  for a, b in zip(have, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_offsets_per_step_is_a_divisor_within_the_budget():
  budget = sparse_conv.GATHER_BUDGET_BYTES
  per_offset = 20480 * 16 * 4
  for backward in (False, True):
    group = sparse_conv.offsets_per_step(20480, 27, 16, backward=backward)
    assert 27 % group == 0 and group * per_offset <= budget
  assert sparse_conv.offsets_per_step(64, 27, 16) == 9  # small scenes: two or more steps
  assert sparse_conv.offsets_per_step(10 ** 6, 27, 64) == 1  # large blocks: one offset
  assert sparse_conv.offsets_per_step(10 ** 6, 27, 64, backward=True) == 3
  assert sparse_conv.offsets_per_step(10 ** 6, 125, 6) == 5  # GEMM depth >= 16


def test_batched_conv_equals_each_scene_alone():
  # One device: the scenes run as one of B*N rows; each scene's neighbours must stay its own.
  rng = np.random.default_rng(11)
  b, n, k3, c_in, c_out = 3, 50, 27, 4, 5
  feat = jnp.asarray(rng.normal(size=(b, n, c_in)), jnp.float32)
  neighbors = jnp.asarray(np.where(rng.random((b, n, k3)) < 0.4,
                                   rng.integers(0, n, (b, n, k3)), -1), jnp.int32)
  kernel = jnp.asarray(rng.normal(size=(k3, c_in, c_out)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(b, n, c_out)), jnp.float32)

  def loss(conv, f, k):
    return jnp.sum(weights * conv(f, neighbors, k))

  def per_scene(f, nb, k):
    return jnp.stack([sparse_conv.sparse_conv(f[i], nb[i], k) for i in range(b)])

  out = sparse_conv.batched_sparse_conv(feat, neighbors, kernel)
  np.testing.assert_allclose(np.asarray(out), np.asarray(per_scene(feat, neighbors, kernel)),
                             rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda f, k: loss(sparse_conv.batched_sparse_conv, f, k), (0, 1))(feat, kernel)
  expected = jax.grad(lambda f, k: loss(per_scene, f, k), (0, 1))(feat, kernel)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
