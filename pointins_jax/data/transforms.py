"""Host-side point-cloud transforms (numpy, seeded by an explicit `np.random.Generator`).

Grid sampling, crops and the Sonata augmentations (ptv3_ssl_spec.md §1.3, §4.1). Every
geometric augmentation updates a `ViewRecord`, so that the composition

  x_view = A @ x_orig + t + d

(A: 3x3 rotation·flip·scale, t: translation from centre shifts and off-centre rotations,
d: per-point displacement from jitter and elastic distortion) can be inverted exactly.
PointINS maps predicted offsets back to the original frame with A alone; why d is left
out is in `pointins_jax.pointins.offsets`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import matplotlib.colors
import numpy as np
import scipy.interpolate
import scipy.ndimage

# Cell indices are packed into one int64 key, 21 bits per axis: 2^21 cells of 2 cm = 42 km.
_KEY_BITS = 21


def cell_index(coord: np.ndarray, cell_size: float) -> np.ndarray:
  """Integer cell of every point: floor((coord - coord.min(0)) / cell_size), int64 [N, 3] >= 0."""
  if coord.shape[0] == 0:
    return np.zeros((0, 3), np.int64)
  return np.floor((coord - coord.min(axis=0)) / cell_size).astype(np.int64)


def pack_cells(cells: np.ndarray) -> np.ndarray:
  """One int64 key per cell (non-negative int [N, 3], each axis < 2^21) -> int64 [N]."""
  if cells.size and cells.max() >= (1 << _KEY_BITS):
    raise ValueError(f"cell index {int(cells.max())} exceeds 2^{_KEY_BITS}: the scene is too "
                     "large for its cell size (check grid_size / mask_size and the units).")
  cells = cells.astype(np.int64)
  return (cells[:, 0] << (2 * _KEY_BITS)) | (cells[:, 1] << _KEY_BITS) | cells[:, 2]


def count_cells(cells: np.ndarray) -> int:
  """Number of distinct rows of a non-negative int [N, 3] cell array."""
  return int(np.unique(pack_cells(cells)).size)


def _cells_sorted(coord: np.ndarray, grid_size: float):
  """Points sorted by cell: (order [N], cell start [M], cell count [M], inverse [N])."""
  _, inverse, counts = np.unique(pack_cells(cell_index(coord, grid_size)), return_inverse=True,
                                 return_counts=True)
  order = np.argsort(inverse, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return order, starts, counts, inverse


def grid_sample_train(coord: np.ndarray, grid_size: float, rng: np.random.Generator):
  """Train-mode grid sampling: one uniformly random point per occupied cell.

  Args:
    coord: f32 [N, 3] metres.
    grid_size: cell edge, metres.
    rng: source of randomness.

  Returns:
    index: int64 [M] kept point ids (one per cell, in cell-key order).
    inverse: int64 [N] for every input point, the position in `index` of its cell.
  """
  order, starts, counts, inverse = _cells_sorted(coord, grid_size)
  return order[starts + rng.integers(0, counts)], inverse


def grid_sample_fragments(coord: np.ndarray, grid_size: float) -> list[np.ndarray]:
  """Test-mode grid sampling: fragments that together hold every point exactly once.

  Fragment i takes the (i mod count)-th point of every cell (Pointcept's test mode): each
  fragment has one point per occupied cell, there are max(count) fragments, and together
  they hold every point (points of cells with fewer than max(count) points recur).

  Returns:
    list of int64 [M] original point ids, one array per fragment (max cell count of them).
  """
  order, starts, counts, _ = _cells_sorted(coord, grid_size)
  return [order[starts + (i % counts)] for i in range(int(counts.max()))]


def nearest_crop(coord: np.ndarray, center: np.ndarray, size: int) -> np.ndarray:
  """Ids (sorted, int64 [min(size, N)]) of the `size` points nearest to `center` [3]."""
  if size >= coord.shape[0]:
    return np.arange(coord.shape[0])
  dist2 = np.sum((coord - center) ** 2, axis=1)
  return np.sort(np.argpartition(dist2, size - 1)[:size])


def center_shift_offset(coord: np.ndarray) -> np.ndarray:
  """CenterShift(apply_z): the xy bounding-box centre and the z minimum, f64 [3] metres."""
  lo, hi = coord.min(axis=0), coord.max(axis=0)
  return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], np.float64)


@dataclasses.dataclass
class ViewRecord:
  """The transform that took original coordinates to view coordinates.

  Attributes:
    linear: f64 [3, 3] A.
    translation: f64 [3] t.
    displacement: f64 [N, 3] d, the non-affine part (jitter, elastic distortion) in the
      view frame, metres.
  """

  linear: np.ndarray
  translation: np.ndarray
  displacement: np.ndarray

  @classmethod
  def identity(cls, num_points: int) -> "ViewRecord":
    return cls(np.eye(3), np.zeros(3), np.zeros((num_points, 3)))


def invert_view(coord_view: np.ndarray, record: ViewRecord) -> np.ndarray:
  """Original coordinates of view points: A^-1 (x_view - t - d), f64 [N, 3]."""
  shifted = coord_view.astype(np.float64) - record.translation - record.displacement
  return np.linalg.solve(record.linear, shifted.T).T


class GeometricAugmenter:
  """Applies geometric transforms to (coord, normal) and records their composition.

  Attributes: coord f64 [N, 3] metres, normal f64 [N, 3] unit vectors or None, record.
  Every method replaces `coord` / `normal` with the transformed arrays and updates `record`.
  """

  def __init__(self, coord: np.ndarray, normal: Optional[np.ndarray] = None):
    self.coord = coord.astype(np.float64)
    self.normal = None if normal is None else normal.astype(np.float64)
    self.record = ViewRecord.identity(coord.shape[0])

  def affine(self, matrix: np.ndarray, offset: Optional[np.ndarray] = None) -> None:
    """x <- M x + c for coordinates, record (A, t, d) and normals (inverse transpose)."""
    offset = np.zeros(3) if offset is None else offset
    self.coord = self.coord @ matrix.T + offset
    rec = self.record
    rec.linear = matrix @ rec.linear
    rec.translation = matrix @ rec.translation + offset
    rec.displacement = rec.displacement @ matrix.T
    if self.normal is not None:
      normal = self.normal @ np.linalg.inv(matrix)  # rows: (M^-T n)^T
      self.normal = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)

  def displace(self, delta: np.ndarray) -> None:
    """x <- x + delta (per point, f64 [N, 3])."""
    self.coord = self.coord + delta
    self.record.displacement = self.record.displacement + delta

  def center_shift(self, apply_z: bool = True) -> None:
    """Moves the xy bounding-box centre (and the z minimum if apply_z) to the origin."""
    shift = center_shift_offset(self.coord)
    if not apply_z:
      shift[2] = 0.0
    self.affine(np.eye(3), -shift)

  def rotate(self, angle: float, axis: int, about_bbox_center: bool = False) -> None:
    """Rotation by `angle` radians about axis 0/1/2, through the origin or the bbox centre."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    center = ((self.coord.min(axis=0) + self.coord.max(axis=0)) / 2 if about_bbox_center
              else np.zeros(3))
    self.affine(matrix, center - matrix @ center)

  def scale(self, factor: float) -> None:
    self.affine(np.eye(3) * factor)

  def flip(self, axis: int) -> None:
    self.affine(np.diag([-1.0 if a == axis else 1.0 for a in range(3)]))

  def jitter(self, rng: np.random.Generator, sigma: float, clip: float) -> None:
    self.displace(np.clip(sigma * rng.standard_normal(self.coord.shape), -clip, clip))

  def elastic(self, rng: np.random.Generator, granularity: float, magnitude: float) -> None:
    """Pointcept's ElasticDistortion: smoothed noise on a lattice, trilinearly interpolated."""
    lo = self.coord.min(axis=0)
    dims = ((self.coord - lo).max(axis=0) // granularity).astype(int) + 3
    noise = rng.standard_normal((*dims, 3)).astype(np.float32)
    for _ in range(2):
      for axis in range(3):
        noise = scipy.ndimage.uniform_filter1d(noise, 3, axis=axis, mode="constant")
    axes = [np.linspace(a, b, d) for a, b, d in
            zip(lo - granularity, lo + granularity * (dims - 2), dims)]
    interp = scipy.interpolate.RegularGridInterpolator(axes, noise, bounds_error=False,
                                                       fill_value=0)
    self.displace(interp(self.coord).astype(np.float64) * magnitude)


def augment_geometry(coord: np.ndarray, normal: Optional[np.ndarray], aug,
                     rng: np.random.Generator) -> GeometricAugmenter:
  """The Sonata per-view spatial recipe (ptv3_ssl_spec.md §4.1) driven by config `aug`.

  Order: CenterShift(z), RandomScale, RandomRotate z (about the origin), x and y (about the
  bbox centre), RandomFlip x / y, RandomJitter, ElasticDistortion. Switches: see
  `config.data_config` (`augment.*`).
  """
  out = GeometricAugmenter(coord, normal)
  out.center_shift(apply_z=True)
  out.scale(rng.uniform(*aug.scale))
  if rng.random() < aug.rotate_z_p:
    out.rotate(rng.uniform(-aug.rotate_z, aug.rotate_z) * np.pi, axis=2)
  for axis in (0, 1):
    if rng.random() < aug.rotate_xy_p:
      out.rotate(rng.uniform(-aug.rotate_xy, aug.rotate_xy) * np.pi, axis, about_bbox_center=True)
  for axis in (0, 1):
    if rng.random() < aug.flip_p:
      out.flip(axis)
  if aug.jitter_sigma > 0:
    out.jitter(rng, aug.jitter_sigma, aug.jitter_clip)
  for granularity, magnitude in aug.elastic:
    if rng.random() < aug.elastic_p:
      out.elastic(rng, granularity, magnitude)
  return out


def auto_contrast(color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """ChromaticAutoContrast: blend with the per-channel min-max stretched colours (0-255)."""
  lo, hi = color.min(axis=0), color.max(axis=0)
  stretched = (color - lo) * (255.0 / np.maximum(hi - lo, 1e-6))
  blend = rng.random()
  return (1 - blend) * color + blend * stretched


def color_jitter(color: np.ndarray, rng: np.random.Generator, strengths: Sequence[float],
                 p: float) -> np.ndarray:
  """RandomColorJitter: brightness, contrast, saturation, hue in random order, each with p.

  color: f32 [N, 3] in [0, 255]; strengths = (brightness, contrast, saturation, hue).
  """
  brightness, contrast, saturation, hue = strengths
  rgb = color / 255.0
  for op in rng.permutation(4):
    if rng.random() >= p:
      continue
    if op == 0:
      rgb = rgb * rng.uniform(1 - brightness, 1 + brightness)
    elif op == 1:
      mean = np.mean(rgb @ np.array([0.299, 0.587, 0.114]))
      rgb = (rgb - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
    elif op == 2:
      gray = (rgb @ np.array([0.299, 0.587, 0.114]))[:, None]
      rgb = (rgb - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
    else:
      hsv = matplotlib.colors.rgb_to_hsv(np.clip(rgb, 0, 1))
      hsv[:, 0] = (hsv[:, 0] + rng.uniform(-hue, hue)) % 1.0
      rgb = matplotlib.colors.hsv_to_rgb(hsv)
    rgb = np.clip(rgb, 0, 1)
  return (rgb * 255.0).astype(np.float32)


def augment_color(color: np.ndarray, aug, rng: np.random.Generator) -> np.ndarray:
  """Sonata's colour recipe on raw 0-255 colours; returns f32 [N, 3] in [0, 255]."""
  color = color.astype(np.float32)
  if rng.random() < aug.auto_contrast_p:
    color = auto_contrast(color, rng)
  color = color_jitter(color, rng, aug.color_jitter, aug.color_jitter_p)
  if rng.random() < aug.chromatic_translation_p:
    shift = (rng.random(3) - 0.5) * 2 * 255 * aug.chromatic_translation_ratio
    color = color + shift
  return np.clip(color, 0, 255).astype(np.float32)
