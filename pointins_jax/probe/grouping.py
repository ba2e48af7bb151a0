"""PointGroup-style grouping of offset-shifted points into instance proposals.

As Pointcept's PG-v1m2 (ptv3_ssl_spec.md §7.2): points predicted as a thing class are
shifted by their predicted offsets; points of the same predicted class closer than
`radius` are linked; connected components with at least `min_points` points are
proposals, classed by their label and scored by the mean probability of that class.
Pointcept links through a ball query capped at 1000 neighbours; here the radius graph
is a kNN graph (`k_neighbors` nearest within `radius`) from `kernels.knn`, which keeps
memory static under jit. Only shifted coordinates are clustered (no dual set), no
ScoreNet and no NMS, as in Pointcept.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from kernels import knn as knn_lib
from pointins_jax.pointins import connected_components as cc_lib


@dataclasses.dataclass
class Proposals:
  """Instance proposals of one scene (host side)."""

  masks: np.ndarray  # bool [M, N]
  classes: np.ndarray  # i32 [M]
  scores: np.ndarray  # f32 [M]

  def to_instance_ids(self) -> np.ndarray:
    """i32 [N]: proposal index per point (highest score wins), -1 for none."""
    ids = np.full(self.masks.shape[1], -1, np.int32)
    for m in np.argsort(self.scores, kind="stable"):  # later (higher score) overwrite
      ids[self.masks[m]] = m
    return ids


def shifted_components(points, group, active, *, radius: float, k_neighbors: int):
  """Connected components of the radius graph among `active` points of equal `group`.

  Args:
    points: f32 [N, 3] (e.g. coord + offset).
    group: i32 [N] points link only within the same group (e.g. predicted class).
    active: bool [N] points taking part.
  Returns:
    i32 [N] component label (smallest member index), -1 for inactive points.
  """
  index, _ = knn_lib.knn(points, points, k_neighbors, query_valid=active, key_valid=active,
                         query_segment=group, key_segment=group, max_distance=radius)
  n = points.shape[0]
  senders = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k_neighbors)
  receivers = index.reshape(-1)
  return cc_lib.connected_components(senders, receivers, receivers >= 0, n, node_valid=active)


shifted_components_jit = jax.jit(shifted_components, static_argnames=("radius", "k_neighbors"))


def padded_size(num_points: int) -> int:
  """num_points rounded up to a multiple of 1/8 of the power of two above it (>= 1024).

  Full scans differ in size; padding to these sizes bounds both the recompilations of the
  jitted grouping (8 shapes per octave) and the wasted work (< 25%).
  """
  step = max(128, (1 << max(int(num_points) - 1, 1).bit_length()) // 8)
  return max(1024, -(-int(num_points) // step) * step)


def offset_components(coord, offsets, group, active, *, radius: float,
                      k_neighbors: int) -> np.ndarray:
  """Host wrapper of `shifted_components` on coord + offsets, padded to `padded_size`.

  Args:
    coord, offsets: float [N, 3] metres (same frame); the points clustered are their sum.
    group: int [N] points link only within one group (a class, or all 0 class-agnostic).
    active: bool [N].
  Returns:
    int32 [N] component label (smallest member index), -1 for inactive points.
  """
  shifted = np.asarray(coord, np.float32) + np.asarray(offsets, np.float32)
  n = shifted.shape[0]
  pad = padded_size(n) - n
  comps = shifted_components_jit(
      jnp.asarray(np.pad(shifted, ((0, pad), (0, 0)))),
      jnp.asarray(np.pad(np.asarray(group, np.int32), (0, pad))),
      jnp.asarray(np.pad(np.asarray(active, bool), (0, pad))),  # padding is inactive
      radius=float(radius), k_neighbors=int(k_neighbors))
  return np.asarray(comps)[:n]


def components_to_proposals(labels: np.ndarray, point_class: np.ndarray, probs: np.ndarray,
                            min_points: int) -> Proposals:
  """Host side: components with >= min_points points become scored proposals."""
  labels = np.asarray(labels)
  n = labels.shape[0]
  ids, counts = np.unique(labels[labels >= 0], return_counts=True)
  keep = ids[counts >= min_points]
  masks = labels[None, :] == keep[:, None] if keep.size else np.zeros((0, n), bool)
  classes = np.array([point_class[labels == i][0] for i in keep], np.int32)
  scores = np.array([probs[labels == i, c].mean() for i, c in zip(keep, classes)], np.float32)
  return Proposals(masks=masks, classes=classes, scores=scores)


def pointgroup_proposals(coord, offsets, probs, valid, thing_classes, *, radius: float = 0.03,
                         k_neighbors: int = 64, min_points: int = 50) -> Proposals:
  """Instance proposals for one scene.

  Args:
    coord: f32 [N, 3] metres; offsets: f32 [N, 3] predicted offsets (same frame).
    probs: f32 [N, C] semantic probabilities; valid: bool [N].
    thing_classes: class ids that form instances (others are stuff / ignored).
    radius: linking distance in metres (Pointcept: 1.5 voxels of 2 cm).
    min_points: smallest proposal kept (Pointcept's cluster_min_points / propose_points).
  """
  probs = np.asarray(probs)
  label = probs.argmax(-1).astype(np.int32)
  active = np.asarray(valid) & np.isin(label, np.asarray(thing_classes))
  comps = offset_components(coord, offsets, label, active, radius=radius,
                            k_neighbors=k_neighbors)
  return components_to_proposals(comps, label, probs, min_points)
