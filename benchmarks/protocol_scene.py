"""The benchmark protocol's scene: one voxelised, cropped indoor room, numpy only.

  from benchmarks import protocol_scene
  scene = protocol_scene.protocol_room(20000, seed=0)
  protocol_scene.save_scene("scene_20k.npz", scene)   # read back by the PyTorch reference too

An 8 x 8 x 3 m room (floor, ceiling, 4 walls, 12 random axis-aligned boxes standing on the
floor) sampled densely (10,000 points per m^2, about 4 per 2 cm cell) with 3 mm Gaussian
noise, voxelised at 2 cm keeping one point per voxel, and cropped to the `n_points` voxels
nearest a random centre (a random surface point). Features are 6 channels: RGB in [0, 1]
(a colour per surface plus noise) and the unit normal of the surface the point was drawn
from (pointing into the room, out of the boxes). Labels are random in [0, 20). The same
seed gives the same arrays on every machine (numpy's PCG64).

Voxelisation follows Pointcept's GridSample: cells of the room-frame lattice
floor(coord / 0.02) (origin at a floor corner), one random point kept per cell, then
`grid` = cell - cell.min(0) over the kept points, so the cells are distinct and start at 0.
That lattice puts the floor and the x = 0 / y = 0 walls on cell boundaries, so their noisy
points fill two cell layers at 2 cm and one at 4 cm: for 20k points the five PTv3 stages
(grid >> 0..4) hold about 20000 / 3000 / 800 / 200 / 50 points. The grid equals
floor((coord - coord.min(0)) / 0.02) only up to that anchoring: recomputing it from `coord`
with the crop's own minimum as origin shifts the lattice by up to a cell and merges about
half of the points into shared cells, so take `grid` from the scene, not from `coord`.
"""
from __future__ import annotations

import numpy as np

GRID_SIZE = 0.02  # metres
NUM_CLASSES = 20
ROOM = (8.0, 8.0, 3.0)  # metres, x y z
NUM_BOXES = 12
DENSITY = 10000.0  # dense samples per m^2 of surface
NOISE = 0.003  # metres, std of the isotropic Gaussian noise


def _faces(rng):
  """The room's planar faces: list of (origin [3], edge u [3], edge v [3], normal [3]), metres."""
  sx, sy, sz = ROOM
  ex, ey, ez = np.eye(3)
  faces = [
      (np.zeros(3), ex * sx, ey * sy, ez),  # floor
      (ez * sz, ex * sx, ey * sy, -ez),  # ceiling
      (np.zeros(3), ex * sx, ez * sz, ey),  # wall y = 0
      (ey * sy, ex * sx, ez * sz, -ey),  # wall y = 8
      (np.zeros(3), ey * sy, ez * sz, ex),  # wall x = 0
      (ex * sx, ey * sy, ez * sz, -ex),  # wall x = 8
  ]
  size = rng.uniform([0.3, 0.3, 0.3], [1.5, 1.5, 1.2], (NUM_BOXES, 3))
  low = rng.uniform([0.2, 0.2, 0.0], [sx - 0.2, sy - 0.2, 0.0], (NUM_BOXES, 3))
  low[:, :2] = np.minimum(low[:, :2], np.array([sx, sy]) - 0.2 - size[:, :2])
  for lo, d in zip(low, size):
    dx, dy, dz = ex * d[0], ey * d[1], ez * d[2]
    faces += [
        (lo + dz, dx, dy, ez),  # top (the bottom lies on the floor)
        (lo, dx, dz, -ey), (lo + dy, dx, dz, ey),
        (lo, dy, dz, -ex), (lo + dx, dy, dz, ex),
    ]
  return faces


def _dense_room(rng):
  """Dense noisy samples of every face: (points f32 [M, 3] metres, feat f32 [M, 6])."""
  faces = _faces(rng)
  colours = rng.uniform(0.1, 0.9, (len(faces), 3))
  points, feats = [], []
  for (origin, u, v, normal), colour in zip(faces, colours):
    count = int(round(np.linalg.norm(np.cross(u, v)) * DENSITY))
    s, t = rng.random((2, count, 1), dtype=np.float32)
    noise = rng.standard_normal((count, 3), dtype=np.float32) * np.float32(NOISE)
    points.append(origin.astype(np.float32) + s * u.astype(np.float32)
                  + t * v.astype(np.float32) + noise)
    rgb = colour.astype(np.float32) + rng.standard_normal((count, 3), dtype=np.float32) * 0.05
    feats.append(np.concatenate([np.clip(rgb, 0.0, 1.0),
                                 np.broadcast_to(normal.astype(np.float32), (count, 3))], 1))
  order = rng.permutation(sum(len(p) for p in points))  # which point of a voxel is kept
  return np.concatenate(points)[order], np.concatenate(feats)[order]


def protocol_room(n_points: int, seed: int = 0) -> dict:
  """The protocol scene: the n_points voxels of the room nearest a random surface point.

  Returns a dict of numpy arrays:
    coord: f32 [n, 3], metres (room frame, origin at a floor corner); one point per cell.
    feat: f32 [n, 6], RGB in [0, 1] then the unit surface normal.
    grid: i32 [n, 3], floor(coord / 0.02) - its minimum: distinct 2 cm cells, min 0.
    label: i32 [n], random class ids in [0, 20).
  """
  rng = np.random.default_rng(seed)
  points, feats = _dense_room(rng)
  cell = np.floor(points / np.float32(GRID_SIZE)).astype(np.int64)
  cell -= cell.min(0)
  span = cell.max(0) + 1
  key = (cell[:, 0] * span[1] + cell[:, 1]) * span[2] + cell[:, 2]
  _, first = np.unique(key, return_index=True)  # the dense order is random: a random point
  if len(first) < n_points:
    raise ValueError(f"the room has {len(first)} voxels, fewer than {n_points}")
  centre = points[rng.integers(len(points))]
  dist = np.sum(np.square(points[first] - centre), axis=1)
  keep = np.sort(first[np.argsort(dist, kind="stable")[:n_points]])
  grid = cell[keep]
  grid = (grid - grid.min(0)).astype(np.int32)
  label = rng.integers(0, NUM_CLASSES, n_points).astype(np.int32)
  return {"coord": points[keep], "feat": feats[keep], "grid": grid, "label": label}


def save_scene(path: str, scene: dict) -> None:
  """Writes the scene's arrays to one .npz file (np.savez; '.npz' is appended if missing)."""
  np.savez(path, **scene)


def load_scene(path: str) -> dict:
  """Reads a scene written by `save_scene`: {name: numpy array}."""
  with np.load(path) as data:
    return {name: data[name] for name in data.files}
