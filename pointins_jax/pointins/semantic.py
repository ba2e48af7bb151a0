"""Semantic branch of PointINS: prototype targets and self-distillation losses.

PointINS (Sec. 3.1, Algorithm 1) builds on DOS, which builds on Sonata. What is what:

Published fact (Sonata code, ptv3_ssl_spec.md §4.5), `target='assignment'`,
`prototype_prior='uniform'`:
  * teacher targets: Sinkhorn-Knopp on exp(logit / tau_t) over all matched points of the
    global batch, uniform prototype marginal 1/K, 3 iterations; each point's row sums to 1;
  * student: log_softmax(logit / tau_s) over prototypes, tau_s = 0.1;
  * loss: -sum_k q_k log p_k, averaged over points.
Published fact (DOS / PointINS papers, no code released): distillation only on the
student's observable (unmasked) points; softmaps (normalised over points, per prototype)
as targets; a Zipf prior on prototype usage in a modified ("Zipf-") Sinkhorn, alpha_zipf
per Table 9; within-view and cross-view losses.
Reconstruction (our assumption, spec §5), each behind a config switch:
  * `prototype_prior='zipf'`: the Sinkhorn prototype marginal is r_k ∝ rank_k^-alpha, where
    rank 1 is the currently most used prototype (alpha=0 is the uniform marginal);
  * `target='softmap'`: the teacher softmap of prototype k in one scene view is the
    (Zipf-)Sinkhorn assignment q_ik renormalised over that view's observable points i;
    with 0 Sinkhorn iterations this is softmax_i(logit_ik / tau_t). The student softmap is
    softmax_i(logit_ik / tau_s) over the same points. Loss: cross-entropy between the two,
    summed over points, averaged over prototypes, then over views.

Array conventions: logits [..., n, K] with per-point weights [..., n] (1 = the point takes
part, 0 = padding / masked / unmatched). Leading dims (e.g. [B*V] scene views) are free:
Sinkhorn pools every point of every leading index (one global problem, as Sonata), while
softmaps are normalised over the `n` axis of each leading index separately (per view).
Sums are plain `jnp.sum`, hence global under `jit` with a sharded batch; under `shard_map`
pass `axis_name` to Sinkhorn so its sums and max are all-reduced.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

PROTOTYPE_PRIORS = ("uniform", "zipf")
TARGETS = ("assignment", "softmap")

# Finite stand-in for log(0): keeps log_softmax NaN-free (and its gradient too) when a
# view has no observable point at all.
_MASKED_LOGIT = -1e30


def _check_weights(logits: jax.Array, weights: jax.Array, name: str) -> None:
  if logits.shape[:-1] != weights.shape:
    raise ValueError(f"{name}: logits {logits.shape} need weights of shape "
                     f"{logits.shape[:-1]} (one per point), got {weights.shape}.")


def zipf_marginal(usage: jax.Array, alpha) -> jax.Array:
  """Zipf prototype marginal r [K] (DOS, reconstruction), config `semantic.alpha_zipf`.

  Args:
    usage: f32 [K] current (soft) usage of each prototype, e.g. the summed teacher
      assignments of the batch. Only its ordering matters; ties rank by index.
    alpha: Zipf exponent (Table 9: outdoor 1.3; ScanNet 0.1, ScanNet200 1.3, S3DIS 0.1).
  Returns:
    f32 [K], r_k ∝ rank_k^-alpha with rank 1 = most used, summing to 1.
  """
  if usage.ndim != 1:
    raise ValueError(f"zipf_marginal: usage must be [K], got shape {usage.shape}.")
  k = usage.shape[0]
  order = jnp.argsort(-jax.lax.stop_gradient(usage), stable=True)
  rank = jnp.zeros((k,), jnp.float32).at[order].set(jnp.arange(1, k + 1, dtype=jnp.float32))
  r = rank ** (-jnp.asarray(alpha, jnp.float32))
  return r / jnp.sum(r)


def prototype_marginal(prior: str, usage: jax.Array, alpha) -> jax.Array:
  """Sinkhorn prototype marginal [K] for config `semantic.prototype_prior`.

  'uniform' (Sonata): 1/K. 'zipf' (DOS): `zipf_marginal(usage, alpha)`.
  """
  if prior == "uniform":
    return jnp.full(usage.shape, 1.0 / usage.shape[-1], jnp.float32)
  if prior == "zipf":
    return zipf_marginal(usage, alpha)
  raise ValueError(f"config.semantic.prototype_prior={prior!r}: use one of {PROTOTYPE_PRIORS}.")


def _sum(x, axis_name, **kwargs):
  s = jnp.sum(x, **kwargs)
  return s if axis_name is None else jax.lax.psum(s, axis_name)


def sinkhorn_targets(teacher_logits: jax.Array, weights: jax.Array, temperature,
                     num_iters: int = 3, marginal: Optional[jax.Array] = None,
                     axis_name: Optional[str] = None) -> jax.Array:
  """Sinkhorn-Knopp soft assignments of points to prototypes (spec §4.5).

  Normalise exp(logit / tau) over the participating points to total mass 1, then
  `num_iters` times: scale each prototype's mass to `marginal_k`, scale each point's
  mass to 1 / n (n = number of participating points); finally multiply by n.

  Args:
    teacher_logits: f32 [..., K]; all leading dims form one global problem.
    weights: [...] 1 / True for participating points, 0 for the rest.
    temperature: teacher temperature tau_t (scalar, may be traced).
    num_iters: Sinkhorn iterations (config `semantic.sinkhorn_iters`).
    marginal: f32 [K] prototype marginal summing to 1; None = uniform 1/K.
    axis_name: mesh axis to all-reduce the global sums over (inside `shard_map` only).
  Returns:
    q f32 [..., K], no gradient; rows of non-participating points are 0. With
    `num_iters` >= 1 each participating row sums to 1 (0 iterations only normalise the
    total mass to n, which `softmap_targets` uses).
  """
  _check_weights(teacher_logits, weights, "sinkhorn_targets")
  if num_iters < 0:
    raise ValueError(f"sinkhorn_targets: num_iters={num_iters} must be >= 0 "
                     "(config.semantic.sinkhorn_iters).")
  shape, k = teacher_logits.shape, teacher_logits.shape[-1]
  if marginal is None:
    marginal = jnp.full((k,), 1.0 / k, jnp.float32)
  elif marginal.shape != (k,):
    raise ValueError(f"sinkhorn_targets: marginal must be [{k}], got {marginal.shape}.")
  take = (weights > 0).reshape(-1, 1)  # [M, 1]
  logits = jax.lax.stop_gradient(teacher_logits).reshape(-1, k).astype(jnp.float32)
  logits = jnp.where(take, logits / temperature, -jnp.inf)
  # Subtracting the global max only rescales the matrix, which the first normalisation
  # undoes; it keeps exp() from overflowing at tau_t = 0.04.
  peak = jnp.max(logits)
  if axis_name is not None:
    peak = jax.lax.pmax(peak, axis_name)
  peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
  q = jnp.where(take, jnp.exp(jnp.where(take, logits - peak, 0.0)), 0.0)  # [M, K]
  n = jnp.maximum(_sum(take.astype(jnp.float32), axis_name), 1.0)
  q = q / jnp.maximum(_sum(q, axis_name), 1e-30)
  for _ in range(num_iters):
    per_prototype = _sum(q, axis_name, axis=0)  # [K]
    q = q * (marginal / jnp.maximum(per_prototype, 1e-30))
    per_point = jnp.sum(q, axis=1, keepdims=True)  # [M, 1]
    q = q / (jnp.maximum(per_point, 1e-30) * n)
  return (q * n).reshape(shape)


def log_softmap(logits: jax.Array, weights: jax.Array, temperature) -> jax.Array:
  """log softmap: log_softmax over the point axis (-2) of logits / tau among weighted points.

  Args:
    logits: f32 [..., n, K], one leading index per scene view; weights: [..., n].
  Returns:
    f32 [..., n, K]; finite everywhere, 0 on rows with weight 0 (meaningless there).
  """
  _check_weights(logits, weights, "log_softmap")
  take = (weights > 0)[..., None]
  scaled = jnp.where(take, logits.astype(jnp.float32) / temperature, _MASKED_LOGIT)
  return jnp.where(take, jax.nn.log_softmax(scaled, axis=-2), 0.0)


def softmap(logits: jax.Array, weights: jax.Array, temperature) -> jax.Array:
  """Softmaps [..., n, K]: per view and prototype, softmax over the weighted points.

  Each column of each view sums to 1 over its weighted points; other rows are 0; a view
  without weighted points is all 0.
  """
  take = (weights > 0)[..., None]
  has_points = jnp.any(take, axis=-2, keepdims=True)
  return jnp.where(take & has_points, jnp.exp(log_softmap(logits, weights, temperature)), 0.0)


def softmap_targets(teacher_logits: jax.Array, weights: jax.Array, temperature,
                    num_iters: int = 3, marginal: Optional[jax.Array] = None,
                    axis_name: Optional[str] = None) -> jax.Array:
  """Teacher softmaps (DOS, reconstruction): Sinkhorn assignments renormalised per view.

  Args:
    teacher_logits: f32 [..., n, K] (views on the leading dims); weights: [..., n].
    temperature, num_iters, marginal, axis_name: as `sinkhorn_targets`, which runs over
      all views at once; `num_iters=0` gives `softmap(teacher_logits, weights, tau)`.
  Returns:
    f32 [..., n, K], no gradient; each column of a view with weighted points sums to 1.
  """
  q = sinkhorn_targets(teacher_logits, weights, temperature, num_iters, marginal, axis_name)
  return _normalize_over_points(q)


def _normalize_over_points(q: jax.Array) -> jax.Array:
  """q [..., n, K] with zero rows off the weighted points -> columns summing to 1."""
  return q / jnp.maximum(jnp.sum(q, axis=-2, keepdims=True), 1e-30)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  w = (weights > 0).astype(jnp.float32)
  return jnp.sum(jnp.where(w > 0, values, 0.0) * w) / jnp.maximum(jnp.sum(w), 1.0)


def _entropy_terms(p: jax.Array) -> jax.Array:
  """-p log p elementwise, 0 where p = 0."""
  return -jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)


def distillation_loss(student_logits: jax.Array, teacher_targets: jax.Array,
                      weights: jax.Array, student_temperature) -> jax.Array:
  """Assignment distillation: mean over weighted points of -sum_k q_k log softmax(s/tau_s)_k.

  Args:
    student_logits: f32 [..., K]; teacher_targets: f32 [..., K], rows summing to 1
      (gradient stopped); weights: [...]. Returns an f32 scalar, 0 if no point is weighted.
    The KL form is this minus `assignment_entropy(teacher_targets, weights)`.
  """
  _check_weights(student_logits, weights, "distillation_loss")
  # Rows of weight 0 are zeroed first so that garbage there cannot reach the gradient.
  scaled = jnp.where((weights > 0)[..., None], student_logits.astype(jnp.float32), 0.0)
  log_p = jax.nn.log_softmax(scaled / student_temperature, axis=-1)
  per_point = -jnp.sum(jax.lax.stop_gradient(teacher_targets) * log_p, axis=-1)
  return _weighted_mean(per_point, weights)


def assignment_entropy(targets: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean over weighted points of the entropy (nats) of the target rows [..., K]."""
  return _weighted_mean(jnp.sum(_entropy_terms(targets), axis=-1), weights)


def _view_mean(per_view: jax.Array, weights: jax.Array) -> jax.Array:
  """Mean of per-view values [...] over views having at least one weighted point."""
  return _weighted_mean(per_view, jnp.any(weights > 0, axis=-1))


def softmap_loss(student_logits: jax.Array, teacher_softmaps: jax.Array, weights: jax.Array,
                 student_temperature) -> jax.Array:
  """Softmap distillation (DOS, reconstruction).

  Per view and prototype: -sum_i t_ik log softmap_s(i, k) over the weighted points i;
  averaged over prototypes, then over views with weighted points.

  Args:
    student_logits: f32 [..., n, K]; teacher_softmaps: f32 [..., n, K] (gradient
      stopped); weights: [..., n]. Returns an f32 scalar (0 if nothing is weighted).
    The KL form is this minus `softmap_entropy(teacher_softmaps, weights)`.
  """
  log_s = log_softmap(student_logits, weights, student_temperature)
  t = jax.lax.stop_gradient(teacher_softmaps) * (weights > 0)[..., None]
  per_view = -jnp.mean(jnp.sum(t * log_s, axis=-2), axis=-1)
  return _view_mean(per_view, weights)


def softmap_entropy(softmaps: jax.Array, weights: jax.Array) -> jax.Array:
  """Entropy (nats) of each softmap over points, averaged like `softmap_loss`."""
  t = softmaps * (weights > 0)[..., None]
  per_view = jnp.mean(jnp.sum(_entropy_terms(t), axis=-2), axis=-1)
  return _view_mean(per_view, weights)


def distill(student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, *,
            target: str, teacher_temperature, student_temperature, num_iters: int = 3,
            marginal: Optional[jax.Array] = None,
            axis_name: Optional[str] = None) -> tuple[jax.Array, dict]:
  """One semantic distillation term (within-view or cross-view), config `semantic.target`.

  Args:
    student_logits: f32 [V, n, K] per scene view (any leading dims).
    teacher_logits: f32 [V, n, K], already matched row by row to the student's points
      (same view: the same array; other view: `cross_view_rows`).
    weights: [V, n], 1 on the student's observable points that have a teacher match.
    target: 'assignment' (Sonata) or 'softmap' (DOS).
    teacher_temperature, student_temperature, num_iters, marginal, axis_name: see
      `sinkhorn_targets` / the losses.
  Returns:
    (loss scalar, {"kl": loss minus the targets' entropy (scalar), "assignments": the
    Sinkhorn rows f32 [V, n, K] (for `prototype_usage_entropy`)}).
  """
  if target not in TARGETS:
    raise ValueError(f"config.semantic.target={target!r}: use one of {TARGETS}.")
  if target == "assignment" and num_iters < 1:
    raise ValueError("target='assignment' needs config.semantic.sinkhorn_iters >= 1 so that "
                     f"each point's target sums to 1, got {num_iters}.")
  q = sinkhorn_targets(teacher_logits, weights, teacher_temperature, num_iters, marginal,
                       axis_name)
  if target == "assignment":
    loss = distillation_loss(student_logits, q, weights, student_temperature)
    kl = loss - assignment_entropy(q, weights)
  else:
    t = _normalize_over_points(q)
    loss = softmap_loss(student_logits, t, weights, student_temperature)
    kl = loss - softmap_entropy(t, weights)
  return loss, {"kl": kl, "assignments": q}


def cross_view_rows(x: jax.Array, cross_index: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Rows of the other view matched to each point through the original point index.

  Within-view matching needs no gather (the student's point p is the teacher's point p);
  this is the cross-view one.

  Args:
    x: [B, 2, N, ...] per-view arrays (e.g. teacher logits).
    cross_index: i32 [B, 2, N], batch field: position of the same original point in the
      other view, -1 if absent there.
  Returns:
    (rows [B, 2, N, ...] with rows[b, v, p] = x[b, 1 - v, cross_index[b, v, p]] (row 0 of
    the other view where the index is -1), found bool [B, 2, N]; use `found` as weight).
  """
  if x.ndim < 3 or x.shape[1] != 2 or cross_index.shape != x.shape[:3]:
    raise ValueError(f"cross_view_rows: need x [B, 2, N, ...] and cross_index [B, 2, N], "
                     f"got {x.shape} and {cross_index.shape}.")
  other = x[:, ::-1]
  index = jnp.maximum(cross_index, 0).reshape(cross_index.shape + (1,) * (x.ndim - 3))
  return jnp.take_along_axis(other, index, axis=2), cross_index >= 0


def prototype_usage_entropy(q: jax.Array, weights: jax.Array) -> jax.Array:
  """Entropy (nats) of the mean assignment over weighted points, for collapse logging.

  q: f32 [..., K] rows summing to 1; weights [...]. log K = every prototype used
  equally, 0 = all mass on one prototype.
  """
  _check_weights(q, weights, "prototype_usage_entropy")
  w = (weights > 0)[..., None]
  usage = jnp.sum(jnp.where(w, q, 0.0).reshape(-1, q.shape[-1]), axis=0)
  return jnp.sum(_entropy_terms(usage / jnp.maximum(jnp.sum(usage), 1e-30)))
