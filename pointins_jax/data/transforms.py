"""Host-side point-cloud transforms (numpy, seeded by an explicit `np.random.Generator`).

Grid sampling, crops and the Sonata augmentations (ptv3_ssl_spec.md §1.3, §4.1). Every
geometric augmentation updates a `ViewRecord`, so that the composition

  x_view = A @ x_orig + t + d

(A: 3x3 rotation·flip·scale, t: translation from centre shifts and off-centre rotations,
d: per-point displacement from jitter and elastic distortion) can be inverted exactly.
PointINS maps predicted offsets back to the original frame with A alone; why d is left
out is in `pointins_jax.pointins.offsets`.

Detection boxes (`boxes.Boxes`) move with the points under every affine step
(`affine_boxes`: centre, yaw, size, velocity). Boxes stay upright (yaw only), so only
affine maps that keep z vertical apply: rotations about z, flips of x / y, uniform scale,
translations. A rotation about x or y (Sonata's small tilt, `augment.rotate_xy_p`) would
tilt them: it raises for scenes with boxes, and detection configs set rotate_xy_p = 0.
The per-point displacements (jitter, elastic distortion) do not move boxes: jitter keeps a
surface point within `jitter_clip` of its box; elastic distortion (indoor only) can carry
points out of their boxes by up to its magnitude. Crops keep the boxes whose centre lies
in the crop's ball (`boxes_in_ball`) and count the others.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import matplotlib.colors
import numpy as np
import scipy.interpolate
import scipy.ndimage

from pointins_jax.data.boxes import BoxError, Boxes

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


def affine_boxes(boxes: Boxes, matrix: np.ndarray, offset: Optional[np.ndarray] = None,
                 source: str = "<memory>") -> Boxes:
  """The boxes under x -> M x + c, the map applied to the points.

  M must keep z vertical: M = [[B, 0], [0, m]] with B^T B = s^2 I (a rotation about z,
  possibly with a flip of x or y, times a uniform xy scale s) and m != 0. Then a box's
  centre maps like a point, its heading (cos yaw, sin yaw) and velocity by B, its length
  and width scale by s and its height by |m|. (Velocity scales with the coordinates, as
  mmdet3d's GlobalRotScaleTrans does.) A mirrored box is the same box, so flips need no
  special case.

  Args:
    boxes: M boxes; matrix: f64 [3, 3]; offset: f64 [3] metres or None.
  Returns:
    New `Boxes` (float32), label / attribute unchanged.
  Raises:
    BoxError: naming `source` when M tilts z or scales x and y differently.
  """
  matrix = np.asarray(matrix, np.float64)
  offset = np.zeros(3) if offset is None else np.asarray(offset, np.float64)
  b = matrix[:2, :2]
  s2 = abs(np.linalg.det(b))
  tol = 1e-9 * max(1.0, np.abs(matrix).max() ** 2)
  if (np.abs(matrix[:2, 2]).max() > tol or np.abs(matrix[2, :2]).max() > tol
      or abs(matrix[2, 2]) <= tol or not np.allclose(b.T @ b, s2 * np.eye(2), atol=tol)):
    raise BoxError(f"{source}: boxes are upright (yaw only) and cannot follow the linear map "
                   f"{np.round(matrix, 6).tolist()} (a rotation about x/y, or unequal x/y "
                   "scales); set augment.rotate_xy_p = 0 (and scale uniformly) for scenes "
                   "with boxes.")
  heading = np.stack([np.cos(boxes.yaw), np.sin(boxes.yaw)], axis=1).astype(np.float64) @ b.T
  scale = np.array([np.sqrt(s2), np.sqrt(s2), abs(matrix[2, 2])])
  return Boxes(
      center=(boxes.center.astype(np.float64) @ matrix.T + offset).astype(np.float32),
      size=(boxes.size * scale).astype(np.float32),
      yaw=np.arctan2(heading[:, 1], heading[:, 0]).astype(np.float32),
      label=boxes.label.copy(),
      velocity=(None if boxes.velocity is None
                else (boxes.velocity.astype(np.float64) @ b.T).astype(np.float32)),
      attribute=None if boxes.attribute is None else boxes.attribute.copy())


def boxes_in_ball(boxes: Boxes, center: np.ndarray, radius: float) -> tuple[Boxes, int]:
  """The boxes whose centre lies within `radius` (m) of `center` [3]: (kept, num dropped).

  A sphere crop (`nearest_crop`) keeps the points within a ball around its centre; its
  boxes are those centred in that ball (a box cut by the ball's surface is kept when its
  centre is inside, with part of its points gone).
  """
  inside = np.linalg.norm(boxes.center.astype(np.float64) - center, axis=1) <= radius
  return boxes.subset(inside), int((~inside).sum())


def crop_radius(coord: np.ndarray, center: np.ndarray) -> float:
  """Radius (m) of the ball around `center` [3] holding the points `coord` [n, 3] of a
  sphere crop (0 for no point)."""
  if coord.shape[0] == 0:
    return 0.0
  return float(np.sqrt(np.max(np.sum((coord.astype(np.float64) - center) ** 2, axis=1))))


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
  """Applies geometric transforms to (coord, normal, boxes) and records their composition.

  Attributes: coord f64 [N, 3] metres, normal f64 [N, 3] unit vectors or None, boxes
  (`Boxes` or None), record. Every method replaces `coord` / `normal` / `boxes` with the
  transformed ones and updates `record`; per-point displacements leave boxes in place.
  """

  def __init__(self, coord: np.ndarray, normal: Optional[np.ndarray] = None,
               boxes: Optional[Boxes] = None, source: str = "<memory>"):
    self.coord = coord.astype(np.float64)
    self.normal = None if normal is None else normal.astype(np.float64)
    self.boxes = boxes
    self.source = source
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
    if self.boxes is not None:
      self.boxes = affine_boxes(self.boxes, matrix, offset, self.source)

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
                     rng: np.random.Generator, boxes: Optional[Boxes] = None,
                     source: str = "<memory>") -> GeometricAugmenter:
  """The Sonata per-view spatial recipe (ptv3_ssl_spec.md §4.1) driven by config `aug`.

  Order: CenterShift(z), RandomScale, RandomRotate z (about the origin), x and y (about the
  bbox centre), RandomFlip x / y, RandomJitter, ElasticDistortion. Switches: see
  `config.data_config` (`augment.*`). `boxes` (or None) move with the points (module
  docstring); they need `aug.rotate_xy_p == 0`.

  Raises:
    BoxError: boxes given with rotate_xy_p > 0 (naming `source`), before any random draw.
  """
  if boxes is not None and aug.rotate_xy_p > 0:
    raise BoxError(f"{source}: the scene has boxes but augment.rotate_xy_p="
                   f"{aug.rotate_xy_p}; upright (yaw-only) boxes cannot follow rotations "
                   "about x/y. Set data.augment.rotate_xy_p=0 for detection.")
  out = GeometricAugmenter(coord, normal, boxes, source)
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
