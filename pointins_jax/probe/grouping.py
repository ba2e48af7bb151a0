"""PointGroup-style grouping of offset-shifted points into instance proposals.

As Pointcept's PG-v1m2 (ptv3_ssl_spec.md §7.2): points predicted as a thing class are
shifted by their predicted offsets; points of the same predicted class whose shifted
positions are close are linked; connected components with at least `min_points` points are
proposals, classed by their label and scored by the mean probability of that class. Only
shifted coordinates are clustered (no dual set), no ScoreNet and no NMS, as in Pointcept.

Pointcept groups the grid-sampled points of a scan with a fixed radius of 1.5 voxels, which
is right only when every voxel of a surface holds a point. Scans sparser than the grid (the
small synthetic rooms: ~150 points/m^2, a ~3.7 cm median gap on a 2 cm grid; LiDAR sweeps,
whose ring gaps grow with range) fall apart into fragments at that radius. So grouping here
runs in three steps, on the host (scipy):

1. Grid sampling: the active points are binned into cubes of `voxel_size` (the model's grid)
   on their original coordinates; each (cube, group) pair becomes one representative at the
   mean original coordinate and the mean shifted coordinate of its points.
2. Linking radius, per representative i (`linking_radii`):
     r_i = max(radius, 1.5 * voxel_size, SPACING_FACTOR * s_i),   SPACING_FACTOR = 1,
   where s_i is the local sampling spacing: the distance from i to its
   SPACING_NEIGHBOUR-th (4th) nearest representative of the same group, on original
   (unshifted) coordinates. So every point reaches at least its 4 nearest neighbours of the
   raw sampling, a link in every direction along a surface, whatever the density; offsets
   that pull an instance together only shorten its links. Representatives i and j are
   linked when their shifted positions are closer than min(r_i, r_j) (both ends must find
   the link plausible, so a sparse region cannot reach into a dense one) and j is among the
   `k_neighbors` nearest shifted representatives of i (Pointcept's ball query is capped the
   same way). On dense scans (ScanNet on a 2 cm grid: a voxel's 4 nearest occupied voxels
   lie 2 cm away) r_i is Pointcept's 1.5 voxels = 3 cm; on sparse ones it follows the gaps
   (small synthetic rooms: ~9 cm; LiDAR: growing with range).
3. Connected components of that graph (scipy.sparse.csgraph) are carried back to every
   original point through its representative, so proposals and `min_points` count the full
   scan, which the metrics score.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial

from pointins_jax.data import transforms

# Local sampling spacing: distance to this many-th nearest representative (a surface point's
# 4 nearest neighbours surround it, so a gap in any direction shows), times this factor. A
# larger factor also links raw surfaces of separate objects (zero offsets would then find
# the isolated synthetic objects); checked with experiments.oracle_grouping.
SPACING_NEIGHBOUR = 4
SPACING_FACTOR = 1.0
VOXEL_FACTOR = 1.5  # Pointcept: radius 1.5 voxels


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


def linking_radii(coord: np.ndarray, *, voxel_size: float, radius: float) -> np.ndarray:
  """Per-point linking radius of grid-sampled points of one group (module docstring, step 2).

  Args:
    coord: float [M, 3] original (unshifted) coordinates, metres, one point per voxel.
    voxel_size: the grid the points were sampled on, metres.
    radius: the smallest radius wanted, metres.
  Returns:
    f64 [M] max(radius, 1.5 voxel_size, SPACING_FACTOR x distance to the
    SPACING_NEIGHBOUR-th nearest other point), metres; groups of <= SPACING_NEIGHBOUR
    points use their farthest point.
  """
  coord = np.asarray(coord, np.float64)
  floor = max(float(radius), VOXEL_FACTOR * float(voxel_size))
  if coord.shape[0] < 2:
    return np.full(coord.shape[0], floor)
  k = min(SPACING_NEIGHBOUR, coord.shape[0] - 1) + 1  # the point itself comes first
  distance, _ = scipy.spatial.cKDTree(coord).query(coord, k=k)
  return np.maximum(floor, SPACING_FACTOR * distance[:, -1])


def _components(coord, shifted, *, voxel_size, radius, k_neighbors) -> np.ndarray:
  """Component label (0..) of every representative of one group (module docstring, 2-3)."""
  m = coord.shape[0]
  if m < 2:
    return np.zeros(m, np.int64)
  radii = linking_radii(coord, voxel_size=voxel_size, radius=radius)
  k = min(int(k_neighbors) + 1, m)  # + the point itself
  distance, neighbour = scipy.spatial.cKDTree(shifted).query(
      shifted, k=k, distance_upper_bound=float(radii.max()))
  rows = np.broadcast_to(np.arange(m)[:, None], neighbour.shape)
  found = neighbour < m  # misses come back as index m, distance inf
  cols = np.where(found, neighbour, 0)
  linked = found & (distance < np.minimum(radii[rows], radii[cols]))
  graph = scipy.sparse.coo_matrix((np.ones(int(linked.sum()), np.int8),
                                   (rows[linked], cols[linked])), shape=(m, m))
  _, labels = scipy.sparse.csgraph.connected_components(graph, directed=True,
                                                        connection="weak")
  return labels


def offset_components(coord, offsets, group, active, *, voxel_size: float, radius: float,
                      k_neighbors: int) -> np.ndarray:
  """Connected components of coord + offsets among `active` points of equal `group`.

  See the module docstring for the grid sampling and the choice of the linking radius.

  Args:
    coord, offsets: float [N, 3] metres (same frame); the points clustered are their sum.
    group: int [N] points link only within one group (a class, or all 0 class-agnostic).
    active: bool [N] points taking part.
    voxel_size: grouping grid, metres (the model's grid size).
    radius: smallest linking radius, metres.
    k_neighbors: most neighbours a point links to.
  Returns:
    int32 [N] component label (0..K-1, distinct across groups), -1 for inactive points.
  """
  coord = np.asarray(coord, np.float64)
  shifted = coord + np.asarray(offsets, np.float64)
  group = np.asarray(group, np.int64)
  labels = np.full(coord.shape[0], -1, np.int32)
  index = np.flatnonzero(np.asarray(active, bool))
  if index.size == 0:
    return labels
  cells = transforms.cell_index(coord[index], float(voxel_size))
  keys = np.stack([transforms.pack_cells(cells), group[index]], axis=1)
  _, rep, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
  rep = rep.reshape(-1)  # numpy 2 keeps the key axis on the inverse
  mean = lambda x: np.stack([np.bincount(rep, x[:, d]) for d in range(3)], 1) / counts[:, None]
  rep_coord, rep_shifted = mean(coord[index]), mean(shifted[index])
  rep_group = np.zeros(len(counts), np.int64)
  rep_group[rep] = group[index]
  rep_label = np.zeros(len(counts), np.int64)
  next_label = 0
  for g in np.unique(rep_group):
    members = np.flatnonzero(rep_group == g)
    comps = _components(rep_coord[members], rep_shifted[members], voxel_size=voxel_size,
                        radius=radius, k_neighbors=k_neighbors)
    rep_label[members] = next_label + comps
    next_label += int(comps.max()) + 1
  labels[index] = rep_label[rep]
  return labels


def components_to_proposals(labels: np.ndarray, point_class: np.ndarray, probs: np.ndarray,
                            min_points: int) -> Proposals:
  """Host side: components with >= min_points points become scored proposals.

  Args:
    labels: int [N] component per point, -1 = none; every component has one class.
    point_class: int [N]; probs: float [N, C].
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  on = np.flatnonzero(labels >= 0)
  ids, first, inverse, counts = np.unique(labels[on], return_index=True, return_inverse=True,
                                          return_counts=True)
  keep = counts >= min_points
  classes = np.asarray(point_class)[on[first]].astype(np.int32)
  # Mean probability of each component's class over its points.
  sums = np.bincount(inverse, np.asarray(probs)[on, classes[inverse]], minlength=len(ids))
  scores = (sums / np.maximum(counts, 1)).astype(np.float32)
  kept = ids[keep]
  masks = labels[None, :] == kept[:, None] if kept.size else np.zeros((0, n), bool)
  return Proposals(masks=masks, classes=classes[keep], scores=scores[keep])


def pointgroup_proposals(coord, offsets, probs, valid, thing_classes, *, voxel_size: float,
                         radius: float = 0.03, k_neighbors: int = 64,
                         min_points: int = 50) -> Proposals:
  """Instance proposals for one scene.

  Args:
    coord: f32 [N, 3] metres; offsets: f32 [N, 3] predicted offsets (same frame).
    probs: f32 [N, C] semantic probabilities; valid: bool [N].
    thing_classes: class ids that form instances (others are stuff / ignored).
    voxel_size: grouping grid in metres (the model's grid size; module docstring).
    radius: smallest linking distance in metres (Pointcept: 1.5 voxels of 2 cm); the
      radius actually used also follows the scan's sampling spacing (module docstring).
    min_points: smallest proposal kept, in full-scan points (Pointcept's
      cluster_min_points / propose_points).
  """
  probs = np.asarray(probs)
  label = probs.argmax(-1).astype(np.int32)
  active = np.asarray(valid) & np.isin(label, np.asarray(thing_classes))
  comps = offset_components(coord, offsets, label, active, voxel_size=voxel_size,
                            radius=radius, k_neighbors=k_neighbors)
  return components_to_proposals(comps, label, probs, min_points)
