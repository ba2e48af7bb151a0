"""A user's own scan from one file: `.ply` (mesh or point cloud), `.npy`, or KITTI `.bin`.

For the demo notebook and quick looks; datasets go through `experiments.prepare_data`.
Unlabelled: the returned Scene has no segment / instance labels.
"""
from __future__ import annotations

import os

import numpy as np
import plyfile
from scipy.spatial import cKDTree

from pointins_jax.data import scannet
from pointins_jax.data import semantickitti
from pointins_jax.data.scene import Scene
from pointins_jax.data.scene import SceneError

SUFFIXES = (".ply", ".npy", ".bin")


def _read_ply(path: str) -> Scene:
  ply = plyfile.PlyData.read(path)
  has_faces = "face" in [element.name for element in ply.elements]
  if has_faces:  # a mesh: vertices with area-weighted normals, as for ScanNet
    coord, color, normal = scannet.read_mesh(path)
    return Scene(coord=coord, color=color, normal=normal, name=os.path.basename(path),
                 source=path)
  vertex = ply["vertex"]
  names = vertex.data.dtype.names
  if not all(k in names for k in ("x", "y", "z")):
    raise SceneError(f"{path}: PLY vertices need x, y, z properties, found {names}.")
  coord = np.stack([vertex[k] for k in ("x", "y", "z")], -1).astype(np.float32)
  color = (np.stack([vertex[k] for k in ("red", "green", "blue")], -1).astype(np.float32)
           if all(k in names for k in ("red", "green", "blue")) else None)
  normal = (np.stack([vertex[k] for k in ("nx", "ny", "nz")], -1).astype(np.float32)
            if all(k in names for k in ("nx", "ny", "nz")) else None)
  return Scene(coord=coord, color=color, normal=normal, name=os.path.basename(path), source=path)


def _read_npy(path: str) -> Scene:
  array = np.load(path)
  if array.ndim != 2 or array.shape[1] not in (3, 4, 6, 9):
    raise SceneError(f"{path}: expected an [N, 3] (xyz), [N, 4] (xyz + intensity), [N, 6] "
                     f"(xyz + rgb 0-255) or [N, 9] (xyz + rgb + normal) array, got "
                     f"{array.shape}.")
  array = array.astype(np.float32)
  width = array.shape[1]
  return Scene(coord=array[:, :3],
               strength=array[:, 3] if width == 4 else None,
               color=array[:, 3:6] if width >= 6 else None,
               normal=array[:, 6:9] if width == 9 else None,
               name=os.path.basename(path), source=path)


def estimate_normals(coord: np.ndarray, k: int = 16) -> np.ndarray:
  """Unit normals f32 [N, 3] from PCA of each point's k nearest neighbours (z-up oriented).

  For scans without normals fed to a model that reads them (the indoor feature set).
  """
  coord = np.asarray(coord, np.float64)
  k = int(min(k, len(coord)))
  _, index = cKDTree(coord).query(coord, k=k)
  neighbours = coord[index.reshape(len(coord), k)]  # [N, k, 3]
  centred = neighbours - neighbours.mean(axis=1, keepdims=True)
  covariance = np.einsum("nki,nkj->nij", centred, centred)
  _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
  normal = vectors[:, :, 0]
  normal *= np.where(normal[:, 2:3] < 0, -1.0, 1.0)  # orientation is ambiguous: pick z-up
  return normal.astype(np.float32)


def read_point_file(path: str) -> Scene:
  """Scene of one file; raises SceneError naming the file for anything unreadable."""
  if not os.path.isfile(path):
    raise SceneError(f"{path}: no such file.")
  suffix = os.path.splitext(path)[1].lower()
  if suffix == ".ply":
    return _read_ply(path)
  if suffix == ".npy":
    return _read_npy(path)
  if suffix == ".bin":
    points = semantickitti.read_points(path)
    return Scene(coord=points[:, :3], strength=np.clip(points[:, 3], 0.0, 1.0),
                 name=os.path.basename(path), source=path)
  raise SceneError(f"{path}: unknown suffix {suffix!r}; use one of {SUFFIXES}.")
