"""Curve codes and orders vs an independent bit-by-bit numpy transcription (spec §2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pointins_jax.model import serialization


def _z_ref(g):
  """Morton code by the bit loop: x bit i -> 3i+2, y -> 3i+1, z -> 3i (uint64)."""
  g = g.astype(np.uint64)
  code = np.zeros(len(g), np.uint64)
  for i in range(16):
    for axis, shift in ((0, 2), (1, 1), (2, 0)):
      code |= ((g[:, axis] >> np.uint64(i)) & np.uint64(1)) << np.uint64(3 * i + shift)
  return code


def _hilbert_ref(g, depth):
  """Skilling's transpose algorithm, literally as spec §2.3 writes it, with bit arrays."""
  out = np.zeros(len(g), np.uint64)
  for n, point in enumerate(g):
    b = [[(int(point[d]) >> (depth - 1 - j)) & 1 for j in range(depth)] for d in range(3)]
    for j in range(depth):
      for d in range(3):
        if b[d][j]:
          b[0][j + 1:] = [1 - v for v in b[0][j + 1:]]
        else:
          b[0][j + 1:], b[d][j + 1:] = b[d][j + 1:], b[0][j + 1:]
    flat = [b[d][j] for j in range(depth) for d in range(3)]
    binary, acc = [], 0
    for v in flat:
      acc ^= v
      binary.append(acc)
    out[n] = sum(v << (3 * depth - 1 - k) for k, v in enumerate(binary))
  return out


def _ref(g, order, depth):
  if order.endswith("-trans"):
    g = g[:, [1, 0, 2]]
  return _z_ref(g) if order.startswith("z") else _hilbert_ref(g, depth)


def _joined(hi, lo):
  return (np.asarray(hi).astype(np.uint64) << np.uint64(24)) | np.asarray(lo).astype(np.uint64)


def _grid(rng, n, high):
  g = rng.integers(0, high, (n, 3)).astype(np.int32)
  g[0] = high - 1  # the largest coordinate
  g[1] = [high - 1, 0, high - 1]
  return g


@pytest.mark.parametrize("order", serialization.ORDERS)
@pytest.mark.parametrize("depth", [16, 9])
def test_codes_match_numpy(order, depth):
  g = _grid(np.random.default_rng(depth), 64, 1 << depth)
  hi, lo = jax.jit(serialization.encode, static_argnums=1)(jnp.asarray(g), order, depth)
  np.testing.assert_array_equal(_joined(hi, lo), _ref(g, order, depth))


@pytest.mark.parametrize("order,golden", [
    ("z", [0, 4, 2, 1, 1073742063, 2170193728, 3853966189]),
    ("z-trans", [0, 2, 4, 1, 1073742175, 2174323392, 3547182811]),
    ("hilbert", [0, 7, 3, 1, 1073742215, 2271750162, 4160749568]),
    ("hilbert-trans", [0, 3, 7, 1, 1073742129, 2275944466, 3662226578]),
])
def test_golden_values(order, golden):
  """Spec §2.6 (depth 10, batch ids above bit 30): compare the curve part."""
  g = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 5, 7], [100, 200, 300],
                [1023, 0, 511]], np.int32)
  batch = np.array([0, 0, 0, 0, 1, 2, 3], np.uint64)
  expected = np.array(golden, np.uint64) - (batch << np.uint64(30))
  hi, lo = serialization.encode(jnp.asarray(g), order, 10)
  np.testing.assert_array_equal(_joined(hi, lo), expected)


def test_hilbert_is_a_face_adjacent_bijection():
  side = 8
  g = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
  code = _joined(*serialization.encode(jnp.asarray(g, jnp.int32), "hilbert", 3))
  np.testing.assert_array_equal(np.sort(code), np.arange(side ** 3))
  path = g[np.argsort(code)]
  np.testing.assert_array_equal(np.abs(np.diff(path, axis=0)).sum(1), 1)


def test_unknown_order_raises():
  with pytest.raises(ValueError, match="unknown serialization order"):
    serialization.encode(jnp.zeros((2, 3), jnp.int32), "peano")


def test_orders_inverses_and_padding_last():
  rng = np.random.default_rng(0)
  n = 200
  g = _grid(rng, n, 1 << 16)
  coord = rng.random((n, 3)).astype(np.float32)
  valid = rng.random(n) < 0.7
  order, inverse = jax.jit(serialization.serialize)(jnp.asarray(g), jnp.asarray(valid),
                                                    jnp.asarray(coord))
  order, inverse = np.asarray(order), np.asarray(inverse)
  depth = int(np.max(g[valid]) + 1).bit_length()
  for row, name in enumerate(serialization.ORDERS):
    code = _ref(g, name, depth)
    real = np.flatnonzero(valid)
    expected = real[np.argsort(code[real], kind="stable")]  # codes here are unique
    np.testing.assert_array_equal(order[row, :len(real)], expected)
    assert not valid[order[row, len(real):]].any()
    np.testing.assert_array_equal(inverse[row][order[row]], np.arange(n))


def test_ties_broken_by_coordinates_not_index():
  g = np.zeros((4, 3), np.int32)  # four points in one cell
  coord = np.array([[0.3, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [0.0, 0, 0]], np.float32)
  valid = np.ones(4, bool)
  order, _ = serialization.serialize(jnp.asarray(g), jnp.asarray(valid), jnp.asarray(coord))
  np.testing.assert_array_equal(np.asarray(order)[0], [3, 1, 2, 0])


def test_batch_depth_matches_pointcept_on_mixed_extents():
  """Pointcept serializes a batch with one depth, bit_length(max grid + 1) over every scene:
  a small scene batched with a large one gets the large one's Hilbert depth."""
  rng = np.random.default_rng(1)
  small, large = _grid(rng, 100, 1 << 5), _grid(rng, 100, 1 << 10)
  grid = np.stack([small, large]).astype(np.int32)
  valid = np.ones((2, 100), bool)
  coord = rng.random((2, 100, 3)).astype(np.float32)
  depth = serialization.batch_depth(jnp.asarray(grid), jnp.asarray(valid))
  expected_depth = int(grid.max() + 1).bit_length()  # 1023 + 1 -> 11 bits (own: 6)
  assert np.asarray(depth).tolist() == [expected_depth] * 2 == [11, 11]
  order, _ = jax.vmap(serialization.serialize, in_axes=(0, 0, 0, None, 0))(
      jnp.asarray(grid), jnp.asarray(valid), jnp.asarray(coord), serialization.ORDERS, depth)
  for row, name in enumerate(serialization.ORDERS):
    c = coord[0]  # ties (shared cells) are broken by coordinates, then index
    expected = np.lexsort((np.arange(100), c[:, 2], c[:, 1], c[:, 0],
                           _ref(small, name, expected_depth)))
    np.testing.assert_array_equal(np.asarray(order)[0, row], expected)
  # The scene's own depth (5) orders the small scene differently on the Hilbert curves.
  own, _ = serialization.serialize(jnp.asarray(small), jnp.asarray(valid[0]),
                                   jnp.asarray(coord[0]))
  assert not np.array_equal(np.asarray(own)[2], np.asarray(order)[0, 2])


def test_unique_cells_fast_path_gives_the_same_order():
  rng = np.random.default_rng(2)
  flat = rng.choice(64 ** 3, 300, replace=False)  # distinct cells, as on pooled stages
  g = np.stack(np.unravel_index(flat, (64,) * 3), -1).astype(np.int32)
  valid = rng.random(300) < 0.8
  coord = rng.random((300, 3)).astype(np.float32)
  args = (jnp.asarray(g), jnp.asarray(valid), jnp.asarray(coord))
  slow = serialization.serialize(*args)
  fast = serialization.serialize(*args, unique_cells=True)
  n = int(valid.sum())  # the valid points lead both orders; padding's order is arbitrary
  np.testing.assert_array_equal(np.asarray(slow[0])[:, :n], np.asarray(fast[0])[:, :n])
  np.testing.assert_array_equal(np.asarray(slow[1])[:, valid], np.asarray(fast[1])[:, valid])


@pytest.mark.parametrize("n,code_bits", [(1, 3), (7, 3), (300, 12), (300, 48), (5000, 30),
                                         (70000, 27), (70000, 30), (70000, 48)])
def test_code_order_is_a_stable_lexsort_with_padding_last(n, code_bits):
  # 70000 points leave 15-bit digits: 27-bit codes take 2 passes, 48-bit ones 4, and
  # 30-bit ones 3 (two for the codes, one more for the padding bit).
  rng = np.random.default_rng(n + code_bits)
  code = rng.integers(0, 2 ** code_bits, n, dtype=np.uint64) >> rng.integers(0, 3, n).astype(
      np.uint64)  # many ties and mixed magnitudes
  code[rng.integers(0, n, n // 3)] = code[0]
  hi = (code >> np.uint64(24)).astype(np.int32)
  lo = (code & np.uint64(0xFFFFFF)).astype(np.int32)
  valid = rng.random(n) < 0.9
  expected = np.lexsort((np.arange(n), np.where(valid, code, 0), ~valid))
  got = jax.jit(serialization.code_order)(jnp.asarray(hi), jnp.asarray(lo), jnp.asarray(valid))
  np.testing.assert_array_equal(np.asarray(got), expected)


def test_code_order_batched_scenes_sort_independently():
  rng = np.random.default_rng(5)
  hi = rng.integers(0, 2, (3, 500)).astype(np.int32)  # one scene 25-bit codes, others less
  hi[1:] = 0
  lo = rng.integers(0, 1 << 24, (3, 500)).astype(np.int32) >> np.array([[0], [10], [20]])
  valid = rng.random((3, 500)) < 0.7
  got = jax.jit(jax.vmap(serialization.code_order))(jnp.asarray(hi), jnp.asarray(lo),
                                                     jnp.asarray(valid))
  for b in range(3):
    code = (hi[b].astype(np.int64) << 24) | lo[b]
    expected = np.lexsort((np.arange(500), np.where(valid[b], code, 0), ~valid[b]))
    np.testing.assert_array_equal(np.asarray(got)[b], expected)


@pytest.mark.parametrize("n", [1, 9, 70000])
def test_coordinate_order_is_numpys_lexsort(n):
  rng = np.random.default_rng(n)
  coord = rng.normal(0, 3, (n, 3)).astype(np.float32)
  coord[rng.integers(0, n, n // 2)] = coord[0]  # whole-point ties: index order
  coord[rng.integers(0, n, n // 3), 1] = coord[-1, 1]  # ties on one axis
  coord[rng.integers(0, n, n // 4), 2] = rng.choice([-0.0, 0.0, 1e-30, -1e30, 1e30], n // 4)
  expected = np.lexsort((np.arange(n), coord[:, 2], coord[:, 1], coord[:, 0]))
  got = jax.jit(serialization.coordinate_order)(jnp.asarray(coord))
  np.testing.assert_array_equal(np.asarray(got), expected)
