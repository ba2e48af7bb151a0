"""k-nearest neighbours: Pallas tiled kernel, exact XLA path, jnp reference, dispatch.

(Pallas kernel under construction: the dispatch currently routes every impl to the
brute-force reference.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def knn_reference(queries, keys, k, query_valid=None, key_valid=None, query_segment=None,
                  key_segment=None, max_distance=None):
  """Brute force kNN with an [Q, M] distance matrix.

  Returns (index i32 [Q, k], dist2 f32 [Q, k]) ascending; -1 / inf where fewer than k
  keys qualify.
  """
  q_n, m_n = queries.shape[0], keys.shape[0]
  d2 = jnp.sum((queries[:, None, :] - keys[None, :, :]) ** 2, axis=-1)
  ok = jnp.ones((q_n, m_n), bool)
  if key_valid is not None:
    ok &= key_valid[None, :]
  if query_valid is not None:
    ok &= query_valid[:, None]
  if query_segment is not None:
    ok &= query_segment[:, None] == key_segment[None, :]
  if max_distance is not None:
    ok &= d2 < max_distance ** 2
  d2 = jnp.where(ok, d2, jnp.inf)
  kk = min(k, m_n)
  neg, idx = jax.lax.top_k(-d2, kk)
  dist2 = -neg
  idx = jnp.where(jnp.isfinite(dist2), idx, -1).astype(jnp.int32)
  if kk < k:
    idx = jnp.pad(idx, ((0, 0), (0, k - kk)), constant_values=-1)
    dist2 = jnp.pad(dist2, ((0, 0), (0, k - kk)), constant_values=jnp.inf)
  return idx, dist2


def knn(queries, keys, k, *, query_valid=None, key_valid=None, query_segment=None,
        key_segment=None, max_distance=None, impl="auto", interpret=False):
  """k nearest keys for every query; see `knn_reference` for shapes."""
  del impl, interpret
  return knn_reference(queries, keys, k, query_valid, key_valid, query_segment, key_segment,
                       max_distance)
