"""Synthetic indoor rooms with ScanNet-20 labels (the `synthetic-indoor` dataset).

A room is a floor and four walls holding 5-30 furniture instances. Every object is a
composition of boxes (a chair is a seat, a back and four legs) placed with a random yaw
so that the xy bounding boxes of different objects are disjoint (no interpenetration);
doors, windows, pictures and curtains hang on the walls. Surfaces are sampled at
`point_density` points per m^2, faces hidden inside other boxes or on the floor are not
sampled, and the cloud gets sensor-like noise along the normal plus spherical occlusion
gaps. Colours are per instance with per-point jitter; normals are the face normals.

Floor and walls have instance -1, as after Pointcept's `InstanceParser` with
segment_ignore_index (-1, 0, 1): only the 18 thing classes carry instances.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from pointins_jax.data import labels
from pointins_jax.data.scene import NO_INSTANCE, Scene, SceneError

CLASS = {name: index for index, name in enumerate(labels.SCANNET20_NAMES)}
DEFAULT_POINT_DENSITY = 900.0  # points / m^2: 50k-200k points a room
SMALL_POINT_DENSITY = 150.0  # ~5k-15k points a room, for tests and CPU demos
NOISE_ALONG_NORMAL = 0.005  # metres, depth noise of an RGB-D sensor
NOISE_ISOTROPIC = 0.002  # metres
PLACEMENT_MARGIN = 0.05  # metres between the xy bounding boxes of objects
PLACEMENT_TRIES = 300
YAW_JITTER = np.deg2rad(10.0)  # free-standing objects: a multiple of 90 deg +- this
WALL_OVERLAP = 0.01  # metres, see _wall_panel
SIZE_LOG_SIGMA = 0.2  # spread of the per-object size factor


@dataclasses.dataclass(frozen=True)
class Box:
  """An oriented box: centre [3] metres, half extents [3] metres, yaw (radians about z)."""
  center: np.ndarray
  half: np.ndarray
  yaw: float


def _box(x, y, z, sx, sy, sz) -> tuple:
  """A box in the object's frame by its minimum corner (x, y, z) and size (sx, sy, sz)."""
  return (x + sx / 2, y + sy / 2, z + sz / 2), (sx / 2, sy / 2, sz / 2)


def _legs(w, d, h, t=0.04):
  return [_box(x, y, 0, t, t, h) for x in (-w / 2, w / 2 - t) for y in (-d / 2, d / 2 - t)]


# Builders: size factors s [3] -> boxes (centre, half extents) in the object frame:
# centred in xy, standing on z = 0, back towards +y (wall-mounted ones: back at y = 0).
def _chair(s):
  w, d = 0.45 * s[0], 0.45 * s[1]
  seat_h = 0.45 * s[2]
  return _legs(w, d, seat_h) + [_box(-w / 2, -d / 2, seat_h, w, d, 0.05),
                                _box(-w / 2, d / 2 - 0.05, seat_h + 0.05, w, 0.05, 0.45 * s[2])]


def _table(s):
  w, d, h = 1.2 * s[0], 0.8 * s[1], 0.72 * s[2]
  return _legs(w, d, h - 0.05, 0.06) + [_box(-w / 2, -d / 2, h - 0.05, w, d, 0.05)]


def _desk(s):
  w, d, h = 1.4 * s[0], 0.7 * s[1], 0.75 * s[2]
  return [_box(-w / 2, -d / 2, h - 0.04, w, d, 0.04), _box(-w / 2, -d / 2, 0, 0.04, d, h - 0.04),
          _box(w / 2 - 0.45, -d / 2, 0, 0.45, d, h - 0.04)]


def _sofa(s):
  w, d = 2.0 * s[0], 0.9 * s[1]
  return [_box(-w / 2 + 0.2, -d / 2, 0, w - 0.4, d - 0.2, 0.42 * s[2]),
          _box(-w / 2, d / 2 - 0.2, 0, w, 0.2, 0.85 * s[2]),
          _box(-w / 2, -d / 2, 0, 0.2, d - 0.2, 0.6 * s[2]),
          _box(w / 2 - 0.2, -d / 2, 0, 0.2, d - 0.2, 0.6 * s[2])]


def _bed(s):
  w, d = 1.6 * s[0], 2.0 * s[1]
  return [_box(-w / 2, -d / 2, 0, w, d - 0.08, 0.3 * s[2]),
          _box(-w / 2 + 0.05, -d / 2 + 0.05, 0.3 * s[2], w - 0.1, d - 0.2, 0.2 * s[2]),
          _box(-w / 2, d / 2 - 0.08, 0, w, 0.08, 1.0 * s[2])]


def _cabinet(s):
  return [_box(-0.4 * s[0], -0.25 * s[1], 0, 0.8 * s[0], 0.5 * s[1], 0.9 * s[2])]


def _bookshelf(s):
  w, d, h = 0.9 * s[0], 0.35 * s[1], 1.8 * s[2]
  boxes = [_box(-w / 2, -d / 2, 0, 0.03, d, h), _box(w / 2 - 0.03, -d / 2, 0, 0.03, d, h),
           _box(-w / 2, d / 2 - 0.02, 0, w, 0.02, h)]
  return boxes + [_box(-w / 2 + 0.03, -d / 2, z, w - 0.06, d - 0.02, 0.03)
                  for z in np.linspace(0, h - 0.03, 5)]


def _refrigerator(s):
  return [_box(-0.35 * s[0], -0.35 * s[1], 0, 0.7 * s[0], 0.7 * s[1], 1.8 * s[2])]


def _toilet(s):
  return [_box(-0.2 * s[0], -0.35 * s[1], 0, 0.4 * s[0], 0.5 * s[1], 0.4 * s[2]),
          _box(-0.22 * s[0], 0.15 * s[1], 0, 0.44 * s[0], 0.2 * s[1], 0.75 * s[2])]


def _sink(s):
  return [_box(-0.1, -0.1, 0, 0.2, 0.2, 0.7 * s[2]),
          _box(-0.3 * s[0], -0.25 * s[1], 0.7 * s[2], 0.6 * s[0], 0.45 * s[1], 0.15)]


def _bathtub(s):
  w, d, h, t = 1.6 * s[0], 0.75 * s[1], 0.55 * s[2], 0.06
  return [_box(-w / 2, -d / 2, 0, w, d, t), _box(-w / 2, -d / 2, t, t, d, h - t),
          _box(w / 2 - t, -d / 2, t, t, d, h - t), _box(-w / 2 + t, -d / 2, t, w - 2 * t, t, h - t),
          _box(-w / 2 + t, d / 2 - t, t, w - 2 * t, t, h - t)]


def _counter(s):
  return [_box(-1.0 * s[0], -0.3 * s[1], 0, 2.0 * s[0], 0.6 * s[1], 0.9 * s[2])]


def _otherfurniture(s):
  return [_box(-0.3 * s[0], -0.25 * s[1], 0, 0.6 * s[0], 0.5 * s[1], 0.6 * s[2])]


def _clutter(s):
  """Small loose objects (bins, boxes): the short end of the offset distribution."""
  return [_box(-0.15 * s[0], -0.15 * s[1], 0, 0.3 * s[0], 0.3 * s[1], 0.35 * s[2])]


def _wall_panel(width, depth, bottom, height):
  # The panel reaches WALL_OVERLAP into the wall so that the wall points it covers
  # fall strictly inside it and are removed as hidden.
  def build(s):
    return [_box(-width * s[0] / 2, -depth, bottom, width * s[0], depth + WALL_OVERLAP,
                 height * s[2])]
  return build


@dataclasses.dataclass(frozen=True)
class ObjectKind:
  """A furniture kind: its ScanNet-20 class, box builder and placement statistics.

  x_scale is the range of the size factor along the object's width; wide ranges (long
  counters and curtains, tiny clutter) give the long tail of instance offsets.
  """
  name: str
  segment: int
  builder: Callable
  wall_mounted: bool
  frequency: float
  x_scale: tuple[float, float] = (0.85, 1.15)


OBJECTS = (
    ObjectKind("chair", CLASS["chair"], _chair, False, 4.0),
    ObjectKind("table", CLASS["table"], _table, False, 1.5, (0.7, 1.6)),
    ObjectKind("desk", CLASS["desk"], _desk, False, 1.0),
    ObjectKind("sofa", CLASS["sofa"], _sofa, False, 1.0, (0.7, 1.4)),
    ObjectKind("bed", CLASS["bed"], _bed, False, 0.7),
    ObjectKind("cabinet", CLASS["cabinet"], _cabinet, False, 1.5),
    ObjectKind("bookshelf", CLASS["bookshelf"], _bookshelf, False, 1.0),
    ObjectKind("refrigerator", CLASS["refrigerator"], _refrigerator, False, 0.5),
    ObjectKind("toilet", CLASS["toilet"], _toilet, False, 0.5),
    ObjectKind("sink", CLASS["sink"], _sink, False, 0.5),
    ObjectKind("bathtub", CLASS["bathtub"], _bathtub, False, 0.4),
    ObjectKind("counter", CLASS["counter"], _counter, False, 0.6, (0.6, 1.8)),
    ObjectKind("otherfurniture", CLASS["otherfurniture"], _otherfurniture, False, 1.0),
    ObjectKind("clutter", CLASS["otherfurniture"], _clutter, False, 5.0, (0.3, 1.5)),
    ObjectKind("door", CLASS["door"], _wall_panel(0.9, 0.05, 0.0, 2.05), True, 1.0),
    ObjectKind("window", CLASS["window"], _wall_panel(1.2, 0.06, 0.9, 1.1), True, 1.0),
    ObjectKind("picture", CLASS["picture"], _wall_panel(0.6, 0.03, 1.4, 0.5), True, 1.0),
    ObjectKind("curtain", CLASS["curtain"], _wall_panel(1.4, 0.08, 0.1, 2.2), True, 0.6,
               (0.7, 2.2)),
)
_KIND = {kind.name: kind for kind in OBJECTS}
SMALL_FALLBACK = (_KIND["clutter"], _KIND["picture"], _KIND["chair"])


def _rotation(yaw: float) -> np.ndarray:
  c, s = np.cos(yaw), np.sin(yaw)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)


def _sample_rectangle(rng, origin, u, v, density):
  """Uniform points on the parallelogram origin + a u + b v, a, b in [0, 1]."""
  area = np.linalg.norm(np.cross(u, v))
  count = rng.poisson(area * density)
  ab = rng.random((count, 2))
  return origin + ab[:, :1] * u + ab[:, 1:] * v


def _sample_box(rng, box: Box, density, skip_bottom: bool, skip_back: bool):
  """(points [M, 3], normals [M, 3]) on the faces of `box` (world frame).

  skip_bottom / skip_back leave out the -z face (on the floor) / the +y face (on a wall).
  """
  rot = _rotation(box.yaw)
  points, normals = [], []
  for axis in range(3):
    for sign in (-1.0, 1.0):
      if (axis == 2 and sign < 0 and skip_bottom) or (axis == 1 and sign > 0 and skip_back):
        continue
      a, b = [i for i in range(3) if i != axis]
      normal = np.zeros(3)
      normal[axis] = sign
      origin = -box.half.copy()
      origin[axis] = sign * box.half[axis]
      u, v = np.zeros(3), np.zeros(3)
      u[a], v[b] = 2 * box.half[a], 2 * box.half[b]
      local = _sample_rectangle(rng, origin, u, v, density)
      points.append(local @ rot.T + box.center)
      normals.append(np.broadcast_to(rot @ normal, local.shape))
  return np.concatenate(points), np.concatenate(normals)


def _inside(points: np.ndarray, box: Box, eps: float = 1e-4) -> np.ndarray:
  local = (points - box.center) @ _rotation(box.yaw)
  return np.all(np.abs(local) < box.half - eps, axis=1)


def _footprint(boxes: list[Box]) -> np.ndarray:
  """xy axis-aligned bounds [xmin, ymin, xmax, ymax] of the boxes' corners."""
  corners = []
  for box in boxes:
    signs = np.array([[sx, sy, 0] for sx in (-1, 1) for sy in (-1, 1)], np.float64)
    corners.append((signs * box.half) @ _rotation(box.yaw).T + box.center)
  corners = np.concatenate(corners)[:, :2]
  return np.concatenate([corners.min(0), corners.max(0)])


def _overlaps(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
  return bool(np.all(a[:2] < b[2:] + margin) and np.all(b[:2] < a[2:] + margin))


def _place(rng, kind: ObjectKind, room, placed):
  """Boxes of one object at a free spot, or None if none is found."""
  lx, ly = room
  for _ in range(PLACEMENT_TRIES):
    # A log-normal size factor per object spreads the object scales multiplicatively.
    scale = (np.exp(rng.normal(0.0, SIZE_LOG_SIGMA)) *
             np.concatenate([rng.uniform(*kind.x_scale, 1), rng.uniform(0.85, 1.15, 2)]))
    parts = kind.builder(scale)
    if kind.wall_mounted:
      wall = rng.integers(4)  # 0: y = 0, 1: x = lx, 2: y = ly, 3: x = 0; back on the wall
      yaw = (wall * np.pi / 2 + np.pi) % (2 * np.pi)
      along = rng.uniform(0.6, (lx, ly)[wall % 2] - 0.6)
      positions = ((along, 0.0), (lx, along), (along, ly), (0.0, along))
      position = np.array(positions[wall], np.float64)
    else:
      yaw = rng.integers(4) * np.pi / 2 + rng.uniform(-YAW_JITTER, YAW_JITTER)
      position = np.array([rng.uniform(0, lx), rng.uniform(0, ly)])
    rot = _rotation(yaw)
    boxes = [Box(rot @ np.asarray(c) + np.append(position, 0.0), np.asarray(h), yaw)
             for c, h in parts]
    bounds = _footprint(boxes)
    slack = WALL_OVERLAP + 1e-6
    if np.any(bounds[:2] < -slack) or bounds[2] > lx + slack or bounds[3] > ly + slack:
      continue
    if any(_overlaps(bounds, other, PLACEMENT_MARGIN) for other in placed):
      continue
    return boxes, bounds
  return None


def object_kinds(names: Sequence[str] = ()) -> tuple:
  """The `ObjectKind`s named (all for ()); ValueError naming the unknown ones."""
  if not names:
    return OBJECTS
  unknown = sorted(set(names) - set(_KIND))
  if unknown:
    raise ValueError(f"synthetic-indoor kinds {unknown} do not exist; choose from "
                     f"{sorted(_KIND)} (data.synthetic_kinds).")
  return tuple(_KIND[n] for n in dict.fromkeys(names))


def _nominal_area(kind: ObjectKind) -> float:
  """xy area of the unscaled object's bounding box, m^2 (for the placement order)."""
  boxes = [Box(np.asarray(c), np.asarray(h), 0.0) for c, h in kind.builder(np.ones(3))]
  bounds = _footprint(boxes)
  return float(np.prod(bounds[2:] - bounds[:2]))


def _instance_colors(rng, segment_class: int) -> np.ndarray:
  hue_base = (segment_class * 0.137) % 1.0
  hsv = np.array([(hue_base + rng.normal(0, 0.04)) % 1.0, rng.uniform(0.2, 0.7),
                  rng.uniform(0.35, 0.95)])
  i = int(hsv[0] * 6) % 6
  f, s, v = hsv[0] * 6 - int(hsv[0] * 6), hsv[1], hsv[2]
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
  return np.asarray(rgb) * 255.0


def generate_room(seed: int, *, num_objects: Optional[int] = None,
                  point_density: Optional[float] = None,
                  room_size: Optional[tuple[float, float]] = None,
                  small: bool = False, kinds: Sequence[str] = ()) -> Scene:
  """One synthetic room; the same seed gives the same room.

  Args:
    seed: random seed.
    num_objects: furniture instances (default: 5-30 scaled with the floor area;
      `small`: 5-10).
    point_density: surface points per m^2 (default 900: 50k-200k points; `small`: 150).
    room_size: (x, y) floor size in metres (default uniform in [4, 8] m; `small`: [3, 4.5]).
    small: preset for tests and CPU demos, ~5k-15k points.
    kinds: furniture kinds to place (names of `OBJECTS`, e.g. ("bed", "sofa")); () = all.
      A subset makes the room easier to segment (fewer, distinct classes); objects that
      find no free spot fall back to the smallest chosen kinds, then are left out.

  Returns:
    Scene with coord [N, 3] metres (floor at z = 0), color [N, 3] 0..255, normal [N, 3],
    segment [N] ScanNet-20 ids, instance [N] 0.. per object (-1 on floor and walls).
  """
  rng = np.random.default_rng(seed)
  name = f"synthetic_indoor_{seed:06d}"
  lo, hi = (3.0, 4.5) if small else (4.0, 8.0)
  lx, ly = room_size if room_size is not None else rng.uniform(lo, hi, 2)
  height = rng.uniform(2.4, 3.0)
  density = point_density or (SMALL_POINT_DENSITY if small else DEFAULT_POINT_DENSITY)
  if num_objects is None:
    max_objects = int(np.clip(lx * ly / 1.5, 5, 10) if small else np.clip(lx * ly / 2.0, 6, 30))
    num_objects = int(rng.integers(5, max_objects + 1))
  if not 1 <= num_objects <= 60 or min(lx, ly) < 2.0 or density <= 0:
    raise SceneError(f"{name}: need 1 <= num_objects <= 60, room sides >= 2 m and a positive "
                     f"point_density; got {num_objects}, {(lx, ly)}, {density}.")

  pool = object_kinds(kinds)
  # Distinct kinds first so that every room with >= 10 objects covers >= 10 classes.
  weights = np.array([kind.frequency for kind in pool])
  first = list(rng.permutation(len(pool))[:num_objects])
  extra = list(rng.choice(len(pool), num_objects - len(first), p=weights / weights.sum()))
  # Largest first; an object that finds no free spot is swapped for a small one.
  chosen = sorted((pool[i] for i in first + extra), key=lambda k: -_nominal_area(k))
  fallback = SMALL_FALLBACK if not kinds else tuple(sorted(pool, key=_nominal_area))[:3]
  objects, placed = [], []
  for kind in chosen:
    for candidate in (kind,) + fallback:
      result = _place(rng, candidate, (lx, ly), placed)
      if result is not None:
        break
    else:
      if kinds:  # a chosen subset may not fill the room: fewer objects, never other kinds
        continue
      raise SceneError(f"{name}: cannot place {num_objects} objects without overlap in a "
                       f"{lx:.1f} x {ly:.1f} m room; use fewer objects or a larger room.")
    objects.append((candidate, result[0]))
    placed.append(result[1])

  parts = []  # (points, normals, segment class, instance id, colour)
  floor = _sample_rectangle(rng, np.zeros(3), np.array([lx, 0, 0]), np.array([0, ly, 0]),
                            density)
  parts.append((floor, np.tile([0.0, 0.0, 1.0], (len(floor), 1)), CLASS["floor"]))
  corners = np.array([[0, 0, 0], [lx, 0, 0], [lx, ly, 0], [0, ly, 0]], np.float64)
  for i in range(4):
    start, end = corners[i], corners[(i + 1) % 4]
    wall = _sample_rectangle(rng, start, end - start, np.array([0, 0, height]), density)
    inward = np.cross([0.0, 0.0, 1.0], end - start)
    parts.append((wall, np.tile(inward / np.linalg.norm(inward), (len(wall), 1)),
                  CLASS["wall"]))
  all_boxes = []
  for kind, boxes in objects:
    points, normals = zip(*(_sample_box(rng, b, density, b.center[2] - b.half[2] < 1e-6,
                                        kind.wall_mounted) for b in boxes))
    parts.append((np.concatenate(points), np.concatenate(normals), kind.segment))
    all_boxes.append(boxes)

  coord, normal, segment, instance, color = [], [], [], [], []
  num_structure = 5  # floor and 4 walls: no instance
  for part, (points, normals, segment_class) in enumerate(parts):
    instance_id = part - num_structure if part >= num_structure else NO_INSTANCE
    # Faces hidden inside a box (the seat under the back, the wall behind a picture).
    hidden = np.zeros(len(points), bool)
    for boxes in all_boxes:
      for box in boxes:
        hidden |= _inside(points, box)
    points, normals = points[~hidden], normals[~hidden]
    base = _instance_colors(rng, segment_class)
    coord.append(points)
    normal.append(normals)
    segment.append(np.full(len(points), segment_class, np.int32))
    instance.append(np.full(len(points), instance_id, np.int32))
    color.append(np.clip(base + rng.normal(0, 8.0, points.shape), 0, 255))
  coord, normal = np.concatenate(coord), np.concatenate(normal)
  segment, instance, color = map(np.concatenate, (segment, instance, color))

  # Occlusion gaps: spherical holes the sensor never saw, ~1 per 20 m^2 of surface.
  num_holes = rng.poisson(len(coord) / density / 20.0) + 1
  centers = coord[rng.integers(len(coord), size=num_holes)]
  radii = rng.uniform(0.1, 0.4, num_holes)
  seen = np.ones(len(coord), bool)
  for center, radius in zip(centers, radii):
    seen &= np.sum((coord - center) ** 2, axis=1) > radius ** 2
  coord, normal, segment, instance, color = (a[seen] for a in
                                             (coord, normal, segment, instance, color))
  coord = (coord + normal * rng.normal(0, NOISE_ALONG_NORMAL, (len(coord), 1))
           + rng.normal(0, NOISE_ISOTROPIC, coord.shape))
  # Instance ids stay contiguous even if a hole removed a whole small object.
  _, compact = np.unique(instance[instance >= 0], return_inverse=True)
  instance[instance >= 0] = compact
  return Scene(coord=coord.astype(np.float32), color=color.astype(np.float32),
               normal=normal.astype(np.float32), segment=segment,
               instance=instance.astype(np.int32), name=name,
               source=f"synthetic-indoor seed {seed}")
