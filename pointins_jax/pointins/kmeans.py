"""Jittable K-means (Lloyd) over the valid points of one scene (SCR step 2).

Metric: squared Euclidean distance on L2-normalised features, which ranks centres like
cosine similarity for unit-length centres; normalising first keeps the backbone's
concatenated multi-scale channels (whose scales differ by stage) from dominating.
Initialisation: k-means++ (D^2 sampling) from a PRNG key, or uniformly random distinct
valid points. Empty clusters keep their previous centre. Fixed iteration count
(`lax.fori_loop`), static shapes, vmap over scenes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

INITS = ("kmeans++", "random")
# Exact f32 products: on GPUs the default f32 matmul may round inputs to TF32, which
# would flip near-tied assignments between backends.
_PRECISION = jax.lax.Precision.HIGHEST


def squared_distances(features, centers):
  """f32 [N, K] squared Euclidean distances between rows and centres."""
  cross = jnp.dot(features, centers.T, precision=_PRECISION)
  d2 = jnp.sum(features ** 2, -1)[:, None] - 2.0 * cross + jnp.sum(centers ** 2, -1)[None, :]
  return jnp.maximum(d2, 0.0)


def assign_clusters(features, centers):
  """Nearest centre of every row, i32 [N] (ties: lowest centre index)."""
  return jnp.argmin(squared_distances(features, centers), axis=-1).astype(jnp.int32)


def init_centers(features, valid, k: int, key, init: str = "kmeans++"):
  """Initial centres f32 [k, C] drawn from the valid rows.

  'kmeans++': the first centre is a uniform valid row, each next one a valid row drawn
  with probability proportional to its squared distance to the nearest chosen centre
  (uniform among valid rows when all distances are 0, e.g. fewer distinct points than k).
  'random': k distinct valid rows, uniformly (repeats only when fewer than k are valid).
  With no valid row the centres are rows of padding; every assignment is then -1 anyway.
  """
  if init not in INITS:
    raise ValueError(f"kmeans: init={init!r}; use one of {INITS}.")
  if init == "random":
    scores = jnp.where(valid, jax.random.uniform(key, valid.shape), -1.0)
    return features[jax.lax.top_k(scores, k)[1]]

  uniform_logits = jnp.where(valid, 0.0, -jnp.inf)
  keys = jax.random.split(key, k)
  first = features[jax.random.categorical(keys[0], uniform_logits)]
  centers = jnp.zeros((k, features.shape[1]), features.dtype).at[0].set(first)
  nearest = jnp.sum((features - first) ** 2, -1)

  def body(i, state):
    centers, nearest = state
    weighted = jnp.where(valid & (nearest > 0), jnp.log(nearest), -jnp.inf)
    logits = jnp.where(jnp.any(jnp.isfinite(weighted)), weighted, uniform_logits)
    chosen = features[jax.random.categorical(keys[i], logits)]
    nearest = jnp.minimum(nearest, jnp.sum((features - chosen) ** 2, -1))
    return centers.at[i].set(chosen), nearest

  centers, _ = jax.lax.fori_loop(1, k, body, (centers, nearest))
  return centers


def lloyd(features, valid, centers, iters: int):
  """`iters` Lloyd steps (assign, then mean of valid members) from `centers` [k, C]."""
  k = centers.shape[0]

  def body(_, centers):
    # Member sums as a one-hot matmul rather than a scatter-add: GPU scatter-adds of
    # floats run in a nondeterministic order, a matmul does not.
    members = jax.nn.one_hot(assign_clusters(features, centers), k) * valid[:, None]
    sums = jnp.dot(members.T, features, precision=_PRECISION)
    counts = jnp.sum(members, axis=0)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, centers)

  return jax.lax.fori_loop(0, iters, body, centers)


def normalize_features(features):
  """Rows scaled to unit L2 norm (zero rows stay zero); f32 [N, C]."""
  features = features.astype(jnp.float32)
  return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def kmeans(features, valid, k: int, iters: int, key, init: str = "kmeans++"):
  """K-means of the valid rows of one scene (see the module doc for metric and init).

  Args:
    features: f32 [N, C] (L2-normalised here).
    valid: bool [N].
    k: number of clusters (static).
    iters: Lloyd iterations (static).
    key: PRNG key for the initial centres.
    init: 'kmeans++' | 'random'.
  Returns:
    (assign i32 [N], -1 on invalid rows; centers f32 [k, C] on the unit-norm features).
    The assignment is to the returned centres.
  """
  if features.ndim != 2 or valid.shape != features.shape[:1]:
    raise ValueError(f"kmeans: need features [N, C] and valid [N], got {features.shape} and "
                     f"{valid.shape} (vmap over the batch axis).")
  if k < 1 or iters < 0:
    raise ValueError(f"kmeans: need k >= 1 and iters >= 0, got k={k}, iters={iters}.")
  valid = valid.astype(bool)
  # Padding rows are zeroed so that nothing in them (even NaN) reaches a valid result.
  features = normalize_features(jnp.where(valid[:, None], features, 0.0))
  centers = lloyd(features, valid, init_centers(features, valid, k, key, init), iters)
  assign = jnp.where(valid, assign_clusters(features, centers), -1)
  return assign, centers
