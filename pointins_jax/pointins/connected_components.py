"""Connected components as array ops: union-find by hooking + pointer jumping.

Each round (1) hooks, for every edge, the larger of its two endpoint roots onto the
smaller one (one scatter-min over all edges), then (2) compresses every tree to depth one
by pointer jumping (`parent = parent[parent]` until stable, O(log depth) steps). Parents
only ever point to smaller ids, so the forest stays acyclic and each root is the smallest
id of its tree. Every root with an edge to a smaller root is merged in a round, so the
number of surviving trees drops geometrically on paths and random graphs: a 10k-node
chain takes a handful of rounds (tests record it), not the N hops of label propagation.
Edges are undirected: an edge listed from either end links both.
Everything is `lax.while_loop` over static shapes: jittable and vmappable.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _compress(parent):
  """Pointer jumping until every node points at its root."""
  def body(state):
    parent, _ = state
    grand = parent[parent]
    return grand, jnp.any(grand != parent)

  return jax.lax.while_loop(lambda s: s[1], body, (parent, jnp.array(True)))[0]


def connected_components(senders, receivers, edge_valid, num_nodes: int, node_valid=None,
                         return_num_rounds: bool = False):
  """Component labels of an undirected graph.

  Args:
    senders, receivers: int [E] edge endpoints. An edge is ignored when `edge_valid` is
      False, when an endpoint is outside [0, num_nodes) (e.g. the -1 of a missing kNN
      neighbour) or when an endpoint is an invalid node.
    edge_valid: bool [E].
    num_nodes: N (static).
    node_valid: bool [N] or None (all valid).
    return_num_rounds: also return the number of hooking rounds (i32 []), the last one
      being the round that found nothing left to merge.
  Returns:
    i32 [N]: the smallest node id of each node's component, -1 for invalid nodes
    (and `num_rounds` when asked).
  """
  if senders.shape != receivers.shape or senders.shape != edge_valid.shape:
    raise ValueError(f"connected_components: senders, receivers and edge_valid must share "
                     f"one shape [E], got {senders.shape}, {receivers.shape}, "
                     f"{edge_valid.shape}.")
  n = num_nodes
  node_valid = jnp.ones((n,), bool) if node_valid is None else node_valid.astype(bool)
  if node_valid.shape != (n,):
    raise ValueError(f"connected_components: node_valid must have shape ({n},), "
                     f"got {node_valid.shape}.")
  in_range = (senders >= 0) & (senders < n) & (receivers >= 0) & (receivers < n)
  s = jnp.where(in_range, senders, 0).astype(jnp.int32)
  r = jnp.where(in_range, receivers, 0).astype(jnp.int32)
  edge_ok = edge_valid.astype(bool) & in_range & node_valid[s] & node_valid[r]

  def body(state):
    parent, _, rounds = state
    root_s, root_r = parent[s], parent[r]
    # Ignored edges scatter to index n, which mode="drop" discards.
    high = jnp.where(edge_ok, jnp.maximum(root_s, root_r), n)
    new = _compress(parent.at[high].min(jnp.minimum(root_s, root_r), mode="drop"))
    return new, jnp.any(new != parent), rounds + 1

  init = (jnp.arange(n, dtype=jnp.int32), jnp.array(n > 0), jnp.int32(0))
  parent, _, rounds = jax.lax.while_loop(lambda st: st[1], body, init)
  labels = jnp.where(node_valid, parent, -1)
  return (labels, rounds) if return_num_rounds else labels


def components_from_knn(index, node_valid=None, return_num_rounds: bool = False):
  """Components of the undirected graph i -- index[i, j] of a kNN table.

  Args:
    index: int [N, k] neighbour ids, -1 for none (as returned by `kernels.knn.knn`, which
      already drops neighbours beyond its max_distance or in another segment).
    node_valid: bool [N] or None.
  Returns:
    As `connected_components`.
  """
  n, k = index.shape
  senders = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
  receivers = index.reshape(-1)
  return connected_components(senders, receivers, receivers >= 0, n, node_valid,
                              return_num_rounds)
