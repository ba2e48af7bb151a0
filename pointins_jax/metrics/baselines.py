"""Classical unsupervised instance baselines on raw coordinates (PointINS Table 13).

* `hdbscan_instances`: density clustering with `sklearn.cluster.HDBSCAN`.
* `felzenszwalb_instances`: Felzenszwalb-Huttenlocher graph segmentation (IJCV 2004) on a
  symmetric k-nearest-neighbour graph (`scipy.spatial.cKDTree`). Edge weight = Euclidean
  distance in metres, optionally plus `feature_weight` times the feature distance (normals,
  colours). Edges are visited in ascending weight with a union-find; components C1, C2 merge
  when w <= min(Int(C1) + scale / |C1|, Int(C2) + scale / |C2|), Int(C) being the largest edge
  weight inside C (the `k / |C|` threshold of the paper, here `scale`, in metre-points). A
  second pass over the same sorted edges merges components still smaller than `min_size`.

Both return int32 [N] instance ids 0..K-1 numbered by first point, -1 for points left in no
instance of at least `min_size` points (HDBSCAN noise; FH components that no edge could grow).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.spatial
import sklearn.cluster


def _check_coord(coord: np.ndarray) -> np.ndarray:
  coord = np.asarray(coord, np.float64)
  if coord.ndim != 2 or coord.shape[1] != 3 or coord.shape[0] == 0:
    raise ValueError(f"coord: expected shape [N>0, 3] metres, got {coord.shape}.")
  if not np.isfinite(coord).all():
    raise ValueError("coord: has NaN/inf values; drop them with "
                     "pointins_jax.data.scene.drop_non_finite first.")
  return coord


def _relabel(labels: np.ndarray, min_size: int) -> np.ndarray:
  """Components -> consecutive ids by first point; components under min_size -> -1."""
  _, first, inverse, size = np.unique(labels, return_index=True, return_inverse=True,
                                      return_counts=True)
  keep = size >= min_size
  rank = np.full(size.shape, -1, np.int64)
  kept = np.flatnonzero(keep)
  rank[kept[np.argsort(first[kept])]] = np.arange(kept.size)
  return rank[inverse.reshape(-1)].astype(np.int32)


def hdbscan_instances(coord: np.ndarray, min_cluster_size: int = 100,
                      min_samples: Optional[int] = None,
                      cluster_selection_epsilon: float = 0.0) -> np.ndarray:
  """HDBSCAN clusters of raw points.

  Args:
    coord: float [N, 3] metres.
    min_cluster_size, min_samples, cluster_selection_epsilon: `sklearn.cluster.HDBSCAN`'s
      (epsilon in metres).
  Returns:
    int32 [N] instance ids, -1 = noise.
  """
  coord = _check_coord(coord)
  if coord.shape[0] < 2:
    return np.full(coord.shape[0], -1, np.int32)
  labels = sklearn.cluster.HDBSCAN(
      min_cluster_size=min_cluster_size, min_samples=min_samples,
      cluster_selection_epsilon=cluster_selection_epsilon, copy=True).fit_predict(coord)
  noise = labels < 0
  ids = _relabel(np.where(noise, labels.max() + 1, labels), min_size=1)
  return np.where(noise, -1, ids).astype(np.int32)


def knn_graph_edges(coord: np.ndarray, k_neighbors: int, features: Optional[np.ndarray] = None,
                    feature_weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Undirected kNN edges (each once, i < j) and their weights, sorted by weight.

  Returns:
    (int64 [E, 2] endpoints, float64 [E] weights: distance in metres + feature_weight *
    feature distance).
  """
  num_points = coord.shape[0]
  k = min(k_neighbors + 1, num_points)  # the query point itself comes first
  _, neighbours = scipy.spatial.cKDTree(coord).query(coord, k=k)
  neighbours = neighbours.reshape(num_points, k)[:, 1:]
  src = np.repeat(np.arange(num_points), neighbours.shape[1])
  edges = np.sort(np.stack([src, neighbours.reshape(-1)], axis=1), axis=1)
  edges = np.unique(edges, axis=0)
  weight = np.linalg.norm(coord[edges[:, 0]] - coord[edges[:, 1]], axis=1)
  if features is not None:
    features = np.asarray(features, np.float64).reshape(num_points, -1)
    weight += feature_weight * np.linalg.norm(features[edges[:, 0]] - features[edges[:, 1]],
                                              axis=1)
  order = np.argsort(weight, kind="stable")
  return edges[order], weight[order]


def felzenszwalb_instances(coord: np.ndarray, k_neighbors: int = 10, scale: float = 1.0,
                           min_size: int = 100, features: Optional[np.ndarray] = None,
                           feature_weight: float = 1.0) -> np.ndarray:
  """Felzenszwalb-Huttenlocher segmentation of a kNN graph (see the module docstring).

  Args:
    coord: float [N, 3] metres.
    k_neighbors: neighbours per point in the graph.
    scale: the FH constant k (metre-points); larger gives larger segments.
    min_size: components smaller than this are merged into a neighbour, else labelled -1.
    features: optional float [N, F] (e.g. unit normals, colours / 255) added to edge weights.
    feature_weight: metres per unit of feature distance.
  Returns:
    int32 [N] instance ids, -1 = none.
  """
  coord = _check_coord(coord)
  edges, weights = knn_graph_edges(coord, k_neighbors, features, feature_weight)
  num_points = coord.shape[0]
  parent = list(range(num_points))
  size = [1] * num_points
  threshold = [scale] * num_points  # Int(C) + scale / |C|; Int of a single point is 0

  def find(i):
    root = i
    while parent[root] != root:
      root = parent[root]
    while parent[i] != root:  # path compression
      parent[i], i = root, parent[i]
    return root

  def union(a, b):
    if size[a] < size[b]:
      a, b = b, a
    parent[b] = a
    size[a] += size[b]
    return a

  pairs = edges.tolist()
  for (i, j), w in zip(pairs, weights.tolist()):
    a, b = find(i), find(j)
    if a != b and w <= threshold[a] and w <= threshold[b]:
      # Edges arrive in ascending order, so w is the new component's largest inner edge.
      root = union(a, b)
      threshold[root] = w + scale / size[root]
  for i, j in pairs:
    a, b = find(i), find(j)
    if a != b and (size[a] < min_size or size[b] < min_size):
      union(a, b)
  return _relabel(np.array([find(i) for i in range(num_points)]), min_size)
