"""Tests of the semantic branch against numpy/scipy references and hand-worked cases.

Tiny shapes: production is K=4096 prototypes and ~1e5-1e6 matched points per batch.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from pointins_jax.pointins import semantic

K = 12


def _logits(shape, seed=0):
  """Cosine-like logits in [-1, 1]."""
  return np.tanh(np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _numpy_sinkhorn(logits, temperature, num_iters, marginal=None):
  """Sonata's distributed_sinkhorn transcribed (prototypes x samples, float64)."""
  q = np.exp(logits.astype(np.float64) / temperature).T  # [K, n]
  k, n = q.shape
  r = np.full(k, 1.0 / k) if marginal is None else np.asarray(marginal, np.float64)
  q /= q.sum()
  for _ in range(num_iters):
    q /= q.sum(axis=1, keepdims=True)
    q *= r[:, None]
    q /= q.sum(axis=0, keepdims=True)
    q /= n
  return (q * n).T


# ----------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_matches_sonata_transcription_on_valid_rows():
  logits = _logits((20, K))
  weights = np.ones(20, np.float32)
  weights[[3, 11, 19]] = 0
  q = np.asarray(semantic.sinkhorn_targets(jnp.asarray(logits), jnp.asarray(weights), 0.07))
  keep = weights > 0
  np.testing.assert_allclose(q[keep], _numpy_sinkhorn(logits[keep], 0.07, 3), rtol=1e-4,
                             atol=1e-6)
  assert np.all(q[~keep] == 0)
  np.testing.assert_allclose(q[keep].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.3])
def test_sinkhorn_converges_to_marginals(alpha):
  logits = _logits((60, K), seed=1)
  weights = jnp.ones(60)
  usage = np.random.default_rng(2).uniform(size=K)
  marginal = semantic.zipf_marginal(jnp.asarray(usage), alpha)
  q = np.asarray(semantic.sinkhorn_targets(jnp.asarray(logits), weights, 0.5, num_iters=300,
                                           marginal=marginal), np.float64)
  np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)  # each point: mass 1
  np.testing.assert_allclose(q.sum(axis=0) / 60, marginal, rtol=1e-3)  # each prototype: r_k
  np.testing.assert_allclose(q, _numpy_sinkhorn(logits, 0.5, 300, marginal), rtol=1e-3,
                             atol=1e-6)


def test_sinkhorn_is_invariant_to_padding_and_leading_dims():
  logits = _logits((10, K), seed=3)
  base = np.asarray(semantic.sinkhorn_targets(jnp.asarray(logits), jnp.ones(10), 0.04))
  # Padding with garbage (huge values, NaN) and a [B, N] layout must not change the targets.
  padded = np.concatenate([logits, np.full((6, K), 1e6, np.float32)])
  padded[12, 3] = np.nan
  padded = padded.reshape(2, 8, K)
  weights = np.concatenate([np.ones(10), np.zeros(6)]).reshape(2, 8)
  q = np.asarray(semantic.sinkhorn_targets(jnp.asarray(padded), jnp.asarray(weights), 0.04))
  assert q.shape == (2, 8, K) and np.all(np.isfinite(q))
  np.testing.assert_allclose(q.reshape(16, K)[:10], base, rtol=1e-5, atol=1e-7)
  assert np.all(q.reshape(16, K)[10:] == 0)


def test_sinkhorn_axis_name_sums_across_shards():
  logits = _logits((4, 6, K), seed=4)  # 4 shards of 6 points
  weights = np.ones((4, 6), np.float32)
  weights[1, 2:] = 0
  whole = semantic.sinkhorn_targets(jnp.asarray(logits), jnp.asarray(weights), 0.1)
  sharded = jax.vmap(functools.partial(semantic.sinkhorn_targets, temperature=0.1,
                                       axis_name="data"), axis_name="data")
  np.testing.assert_allclose(sharded(jnp.asarray(logits), jnp.asarray(weights)), whole,
                             rtol=1e-5, atol=1e-7)


def test_sinkhorn_no_weighted_point_gives_zeros_and_bad_input_raises():
  q = semantic.sinkhorn_targets(jnp.asarray(_logits((5, K))), jnp.zeros(5), 0.07)
  assert np.all(np.asarray(q) == 0)
  with pytest.raises(ValueError, match="weights of shape"):
    semantic.sinkhorn_targets(jnp.zeros((5, K)), jnp.ones(4), 0.07)
  with pytest.raises(ValueError, match="marginal"):
    semantic.sinkhorn_targets(jnp.zeros((5, K)), jnp.ones(5), 0.07, marginal=jnp.ones(K + 1))


# --------------------------------------------------------------------------------- Zipf


def test_zipf_marginal_hand_case_ordering_and_uniform_limit():
  r = semantic.zipf_marginal(jnp.array([1.0, 5.0, 3.0]), 1.0)  # ranks 3, 1, 2
  np.testing.assert_allclose(r, np.array([1 / 3, 1, 1 / 2]) / (11 / 6), rtol=1e-6)
  usage = np.random.default_rng(5).uniform(size=K)
  r = np.asarray(semantic.zipf_marginal(jnp.asarray(usage), 1.3))
  assert r.sum() == pytest.approx(1.0, rel=1e-6)
  order = np.argsort(-usage)
  assert np.all(np.diff(r[order]) < 0)  # more used -> larger share
  np.testing.assert_allclose(r[order], np.arange(1, K + 1) ** -1.3 / np.sum(
      np.arange(1, K + 1) ** -1.3), rtol=1e-5)
  np.testing.assert_allclose(semantic.zipf_marginal(jnp.asarray(usage), 0.0), 1 / K, rtol=1e-6)


def test_prototype_marginal_switch():
  usage = jnp.arange(K, dtype=jnp.float32)
  np.testing.assert_allclose(semantic.prototype_marginal("uniform", usage, 1.3), 1 / K)
  np.testing.assert_allclose(semantic.prototype_marginal("zipf", usage, 1.3),
                             semantic.zipf_marginal(usage, 1.3))
  with pytest.raises(ValueError, match="prototype_prior"):
    semantic.prototype_marginal("dirichlet", usage, 1.3)


# ----------------------------------------------------------------------------- softmaps


def _views():
  """Two views of 9 points; view 1 has 3 unobservable points, view 0 none."""
  logits = _logits((2, 9, K), seed=6)
  weights = np.ones((2, 9), np.float32)
  weights[1, [0, 4, 8]] = 0
  return logits, weights


def test_softmap_is_softmax_over_observable_points():
  logits, weights = _views()
  s = np.asarray(semantic.softmap(jnp.asarray(logits), jnp.asarray(weights), 0.1))
  for v in range(2):
    keep = weights[v] > 0
    np.testing.assert_allclose(s[v][keep], special.softmax(logits[v][keep] / 0.1, axis=0),
                               rtol=1e-5, atol=1e-7)
    assert np.all(s[v][~keep] == 0)
  np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-5)  # per view and prototype


def test_softmap_empty_view_is_zero_with_finite_gradient():
  logits = jnp.asarray(_logits((2, 4, K)))
  weights = jnp.array([[1, 1, 0, 1], [0, 0, 0, 0]], jnp.float32)
  assert np.all(np.asarray(semantic.softmap(logits, weights, 0.1))[1] == 0)
  grad = jax.grad(lambda s: semantic.softmap_loss(
      s, semantic.softmap(logits, weights, 0.07), weights, 0.1))(logits)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[1] == 0)


def test_softmap_targets_zero_iterations_equal_plain_softmap():
  logits, weights = _views()
  t = semantic.softmap_targets(jnp.asarray(logits), jnp.asarray(weights), 0.07, num_iters=0)
  np.testing.assert_allclose(t, semantic.softmap(jnp.asarray(logits), jnp.asarray(weights),
                                                 0.07), rtol=1e-5, atol=1e-7)
  t3 = np.asarray(semantic.softmap_targets(jnp.asarray(logits), jnp.asarray(weights), 0.07))
  np.testing.assert_allclose(t3.sum(axis=1), 1.0, rtol=1e-5)
  # Reference: numpy Sinkhorn over all observable points, then renormalised per view.
  keep = weights.reshape(-1) > 0
  q = np.zeros((18, K))
  q[keep] = _numpy_sinkhorn(logits.reshape(-1, K)[keep], 0.07, 3)
  q = q.reshape(2, 9, K)
  np.testing.assert_allclose(t3, q / q.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------- losses


def test_distillation_loss_matches_numpy_and_ignores_unweighted():
  s = _logits((7, K), seed=7)
  q = special.softmax(_logits((7, K), seed=8) / 0.05, axis=-1)
  w = np.array([1, 1, 0, 1, 0, 1, 1], np.float32)
  s_bad = s.copy()
  s_bad[2] = np.nan  # an unweighted row may hold anything
  loss = semantic.distillation_loss(jnp.asarray(s_bad), jnp.asarray(q), jnp.asarray(w), 0.1)
  log_p = special.log_softmax(s / 0.1, axis=-1)
  expected = np.sum(-(q * log_p).sum(-1) * w) / w.sum()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  grad = jax.grad(semantic.distillation_loss)(jnp.asarray(s_bad), jnp.asarray(q),
                                              jnp.asarray(w), 0.1)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[[2, 4]] == 0)
  assert float(semantic.distillation_loss(jnp.asarray(s), jnp.asarray(q), jnp.zeros(7),
                                          0.1)) == 0.0


def test_distillation_loss_has_no_teacher_gradient_and_kl_is_zero_at_match():
  s = jnp.asarray(_logits((6, K), seed=9))
  w = jnp.ones(6)
  q = jax.nn.softmax(s / 0.1, axis=-1)  # teacher target equals the student's softmax
  grad_teacher = jax.grad(semantic.distillation_loss, argnums=1)(s, q, w, 0.1)
  assert np.all(np.asarray(grad_teacher) == 0)
  loss = semantic.distillation_loss(s, q, w, 0.1)
  assert float(loss - semantic.assignment_entropy(q, w)) == pytest.approx(0.0, abs=1e-5)
  grad_student = jax.grad(semantic.distillation_loss)(s, q, w, 0.1)
  np.testing.assert_allclose(grad_student, 0.0, atol=1e-5)  # a minimum
  other = semantic.distillation_loss(s + jnp.asarray(_logits((6, K), seed=10)), q, w, 0.1)
  assert float(other) > float(loss)


def test_softmap_loss_matches_numpy_and_kl_zero_at_match():
  logits, weights = _views()
  teacher = np.asarray(semantic.softmap(jnp.asarray(_logits((2, 9, K), seed=11)),
                                        jnp.asarray(weights), 0.07))
  loss = semantic.softmap_loss(jnp.asarray(logits), jnp.asarray(teacher), jnp.asarray(weights),
                               0.1)
  per_view = []
  for v in range(2):
    keep = weights[v] > 0
    log_s = special.log_softmax(logits[v][keep] / 0.1, axis=0)
    per_view.append(np.mean(-(teacher[v][keep] * log_s).sum(axis=0)))
  assert float(loss) == pytest.approx(np.mean(per_view), rel=1e-5)

  student_map = semantic.softmap(jnp.asarray(logits), jnp.asarray(weights), 0.1)
  at_match = semantic.softmap_loss(jnp.asarray(logits), student_map, jnp.asarray(weights), 0.1)
  kl = at_match - semantic.softmap_entropy(student_map, jnp.asarray(weights))
  assert float(kl) == pytest.approx(0.0, abs=1e-5)
  grad_teacher = jax.grad(semantic.softmap_loss, argnums=1)(
      jnp.asarray(logits), jnp.asarray(teacher), jnp.asarray(weights), 0.1)
  assert np.all(np.asarray(grad_teacher) == 0)


@pytest.mark.parametrize("target", ["assignment", "softmap"])
def test_distill_entry_point(target):
  logits, weights = _views()
  student = jnp.asarray(logits)
  teacher = jnp.asarray(_logits((2, 9, K), seed=12))
  marginal = semantic.zipf_marginal(jnp.arange(K, dtype=jnp.float32), 1.3)
  run = jax.jit(functools.partial(
      semantic.distill, target=target, teacher_temperature=0.04, student_temperature=0.1,
      marginal=marginal))
  loss, aux = run(student, teacher, jnp.asarray(weights))
  q = semantic.sinkhorn_targets(teacher, jnp.asarray(weights), 0.04, marginal=marginal)
  np.testing.assert_allclose(aux["assignments"], q, rtol=1e-5, atol=1e-8)  # jit vs eager
  if target == "assignment":
    expected = semantic.distillation_loss(student, q, jnp.asarray(weights), 0.1)
  else:
    expected = semantic.softmap_loss(
        student, semantic.softmap_targets(teacher, jnp.asarray(weights), 0.04,
                                          marginal=marginal), jnp.asarray(weights), 0.1)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  assert float(aux["kl"]) >= -1e-5
  grad = jax.grad(lambda s: run(s, teacher, jnp.asarray(weights))[0])(student)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[1, [0, 4, 8]] == 0)


def test_distill_rejects_bad_config():
  x, w = jnp.zeros((1, 3, K)), jnp.ones((1, 3))
  with pytest.raises(ValueError, match="semantic.target"):
    semantic.distill(x, x, w, target="points", teacher_temperature=0.04,
                     student_temperature=0.1)
  with pytest.raises(ValueError, match="sinkhorn_iters"):
    semantic.distill(x, x, w, target="assignment", teacher_temperature=0.04,
                     student_temperature=0.1, num_iters=0)


# -------------------------------------------------------------------- matching, logging


def test_cross_view_rows_matches_loop():
  rng = np.random.default_rng(13)
  x = rng.normal(size=(3, 2, 5, 4)).astype(np.float32)
  cross = rng.integers(-1, 5, size=(3, 2, 5)).astype(np.int32)
  rows, found = semantic.cross_view_rows(jnp.asarray(x), jnp.asarray(cross))
  for b in range(3):
    for v in range(2):
      for p in range(5):
        assert bool(found[b, v, p]) == (cross[b, v, p] >= 0)
        if cross[b, v, p] >= 0:
          np.testing.assert_array_equal(rows[b, v, p], x[b, 1 - v, cross[b, v, p]])
  with pytest.raises(ValueError, match=r"\[B, 2, N"):
    semantic.cross_view_rows(jnp.zeros((3, 3, 5, 4)), jnp.zeros((3, 3, 5), jnp.int32))


def test_prototype_usage_entropy_extremes_and_hand_case():
  w = jnp.array([1.0, 1.0, 1.0, 0.0])
  collapsed = jnp.tile(jax.nn.one_hot(2, K), (4, 1))
  assert float(semantic.prototype_usage_entropy(collapsed, w)) == pytest.approx(0.0, abs=1e-7)
  spread = jnp.full((4, K), 1.0 / K)
  assert float(semantic.prototype_usage_entropy(spread, w)) == pytest.approx(np.log(K))
  # Usage [2, 1, 0...] / 3 (the unweighted 4th row on prototype 5 is ignored).
  rows = jnp.stack([jax.nn.one_hot(i, K) for i in (0, 0, 1, 5)])
  expected = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
  assert float(semantic.prototype_usage_entropy(rows, w)) == pytest.approx(expected, rel=1e-6)
