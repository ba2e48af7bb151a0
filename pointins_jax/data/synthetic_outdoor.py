"""Synthetic LiDAR sweeps with SemanticKITTI-19 labels (the `synthetic-outdoor` dataset).

A street scene (road, parking strip, sidewalks, terrain, buildings, fences, trees,
poles with signs; cars, trucks, buses, parked bicycles and motorcycles, pedestrians and
cyclists) is ray-cast from a spinning LiDAR `SENSOR_HEIGHT` above the road with 32
(nuScenes-like) or 64 (SemanticKITTI-like) beams. Every primitive is analytic: ground
strips are horizontal planes, buildings / vehicles / crowns are yawed boxes, poles /
trunks / people are vertical cylinders, and each ray keeps its nearest hit (vectorised
numpy over rays x primitives). Objects occlude each other, the ego vehicle's roof
swallows the steepest beams (self-occlusion), density falls with range by construction,
and a small fraction of returns drops out. Intensity is a per-class reflectivity times
an incidence-angle term, with noise, in [0, 1].

Coordinates are in the sensor frame like real sweeps: the road lies at z = -SENSOR_HEIGHT.
Things (SemanticKITTI classes 0-7) get instance ids; stuff (poles and signs included, as
in the SemanticKITTI panoptic protocol) has instance -1.

Detection boxes (`Scene.boxes`, nuScenes detection classes): one box per thing instance
of the sweep, box k <-> instance id k, enclosing the instance's primitives exactly as
placed (the tightest box in the object's heading frame: a car's body and cabin, a rider's
cycle and body cylinder), in the sweep's frame. Only instances with at least one return
are instances of the sweep, so objects the LiDAR misses entirely (occluded, out of range)
have no box (nuScenes' evaluation drops zero-point boxes too). Class mapping
(`THING_TO_DETECTION`): car -> car, truck -> truck, other-vehicle (here the 11 m
bus) -> bus, bicycle and bicyclist -> bicycle, motorcycle and motorcyclist -> motorcycle
(riders inside the cycle's box, as nuScenes annotates them), person -> pedestrian. Every
SemanticKITTI thing has a counterpart; stuff (poles, signs, fences, ...) gets no box, and
the generator places no barriers, traffic cones, trailers or construction vehicles.
Attributes follow the layout: parked-strip vehicles vehicle.parked, lane traffic
vehicle.moving, parked cycles cycle.without_rider, ridden ones cycle.with_rider,
pedestrians pedestrian.standing. The scene is a single static sweep, so velocity is None.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from pointins_jax.data import labels
from pointins_jax.data.boxes import DETECTION_ATTRIBUTES, DETECTION_CLASSES, Boxes
from pointins_jax.data.scene import NO_INSTANCE, Scene, SceneError

CLASS = {name: index for index, name in enumerate(labels.SEMANTICKITTI_NAMES)}
SENSOR_HEIGHT = 1.8  # metres above the road
EGO_HEIGHT = 1.3  # metres; the roof below the sensor hides the steepest beams
MAX_RANGE = 80.0  # metres; rays hitting nothing closer give no return
RANGE_NOISE = 0.02  # metres (1 sigma)
DROPOUT = 0.03  # fraction of returns lost
SCENE_HALF_LENGTH = 90.0  # metres of street in front of and behind the sensor
# (elevation of the lowest beam, of the highest, azimuth steps a revolution) in degrees.
BEAM_LAYOUTS = {32: (-30.67, 10.67, 1600), 64: (-24.8, 2.0, 2048)}
RAY_CHUNK = 8192  # rays intersected at once; bounds memory to ~RAY_CHUNK x primitives
REFLECTIVITY = {  # base intensity per class
    "road": 0.12, "parking": 0.15, "other-ground": 0.2, "sidewalk": 0.25, "terrain": 0.3,
    "building": 0.35,
    "fence": 0.3, "vegetation": 0.4, "trunk": 0.3, "pole": 0.45, "traffic-sign": 0.9,
    "car": 0.2, "truck": 0.25, "other-vehicle": 0.25, "bicycle": 0.3, "motorcycle": 0.3,
    "person": 0.3, "bicyclist": 0.3, "motorcyclist": 0.3}
# SemanticKITTI thing class -> nuScenes detection class (module docstring).
THING_TO_DETECTION = {"car": "car", "truck": "truck", "other-vehicle": "bus",
                      "bicycle": "bicycle", "bicyclist": "bicycle",
                      "motorcycle": "motorcycle", "motorcyclist": "motorcycle",
                      "person": "pedestrian"}


@dataclasses.dataclass
class _Primitives:
  """Analytic scene primitives; `label`/`instance` arrays are parallel to the geometry.

  strips: horizontal planes [S] at height z over x in [-L, L], y in [y0, y1].
  boxes: centre [B, 3], half extents [B, 3], yaw [B].
  cylinders: vertical, centre xy [C, 2], radius [C], z range [C, 2].
  """
  strip_z: list = dataclasses.field(default_factory=list)
  strip_y: list = dataclasses.field(default_factory=list)
  strip_label: list = dataclasses.field(default_factory=list)
  box_center: list = dataclasses.field(default_factory=list)
  box_half: list = dataclasses.field(default_factory=list)
  box_yaw: list = dataclasses.field(default_factory=list)
  box_label: list = dataclasses.field(default_factory=list)
  box_instance: list = dataclasses.field(default_factory=list)
  cyl_xy: list = dataclasses.field(default_factory=list)
  cyl_radius: list = dataclasses.field(default_factory=list)
  cyl_z: list = dataclasses.field(default_factory=list)
  cyl_label: list = dataclasses.field(default_factory=list)
  cyl_instance: list = dataclasses.field(default_factory=list)
  # instance id -> nuScenes detection attribute name (not geometry: left out of `arrays`).
  attribute: dict = dataclasses.field(default_factory=dict)

  def strip(self, z, y0, y1, name):
    self.strip_z.append(z)
    self.strip_y.append((y0, y1))
    self.strip_label.append(CLASS[name])

  def box(self, x, y, z0, length, width, height, yaw, name, instance=NO_INSTANCE):
    self.box_center.append((x, y, z0 + height / 2))
    self.box_half.append((length / 2, width / 2, height / 2))
    self.box_yaw.append(yaw)
    self.box_label.append(CLASS[name] if name else -2)  # -2: the ego vehicle
    self.box_instance.append(instance)

  def cylinder(self, x, y, radius, z0, z1, name, instance=NO_INSTANCE):
    self.cyl_xy.append((x, y))
    self.cyl_radius.append(radius)
    self.cyl_z.append((z0, z1))
    self.cyl_label.append(CLASS[name])
    self.cyl_instance.append(instance)

  def arrays(self):
    return {key: np.asarray(value, np.float64) for key, value in vars(self).items()
            if key != "attribute"}


class _Footprints:
  """xy bounding boxes of placed objects, for placement without interpenetration."""

  def __init__(self):
    self.bounds = []

  def free(self, x, y, length, width, yaw, margin=0.3) -> bool:
    c, s = abs(np.cos(yaw)), abs(np.sin(yaw))
    hx, hy = (c * length + s * width) / 2, (s * length + c * width) / 2
    box = np.array([x - hx, y - hy, x + hx, y + hy])
    for other in self.bounds:
      if np.all(box[:2] < other[2:] + margin) and np.all(other[:2] < box[2:] + margin):
        return False
    self.bounds.append(box)
    return True


def _street(rng) -> _Primitives:
  """Random street layout in a frame with the road at z = 0 and the sensor above (0, 0)."""
  prims, placed, instance = _Primitives(), _Footprints(), 0
  road_width = rng.uniform(7.0, 11.0)
  road = (-rng.uniform(0.3, 0.7) * road_width, 0.0)
  road = (road[0], road[0] + road_width)
  z_walk, z_terrain = 0.15, 0.1
  prims.strip(0.0, *road, "road")
  placed.free(0.0, 0.0, 4.6, 2.0, 0.0, margin=0.5)  # the ego vehicle's spot
  prims.box(0.0, 0.0, 0.0, 4.6, 1.9, EGO_HEIGHT, 0.0, None)
  for side in (-1, 1):
    edge = road[1] if side > 0 else road[0]
    parking = rng.random() < 0.5
    parking_width = 2.5 if parking else 0.0
    if parking:
      prims.strip(0.0, *sorted((edge, edge + side * parking_width)), "parking")
    walk = (edge + side * parking_width, edge + side * (parking_width + rng.uniform(2.0, 4.0)))
    prims.strip(z_walk, *sorted(walk), "sidewalk")
    terrain = (walk[1], walk[1] + side * rng.uniform(3.0, 10.0))
    prims.strip(z_terrain, *sorted(terrain), "terrain")
    far = terrain[1]
    # Buildings with gaps, behind the terrain.
    x = -SCENE_HALF_LENGTH
    while x < SCENE_HALF_LENGTH:
      length = rng.uniform(8.0, 25.0)
      if rng.random() < 0.75:
        depth, height = rng.uniform(8.0, 20.0), rng.uniform(4.0, 20.0)
        prims.box(x + length / 2, far + side * depth / 2, 0.0, length, depth, height, 0.0,
                  "building")
      elif rng.random() < 0.5:
        prims.box(x + length / 2, far - side * 0.1, 0.0, length, 0.1, rng.uniform(1.0, 2.0),
                  0.0, "fence")
      x += length + rng.uniform(0.0, 6.0)
    # Trees and bushes on the terrain.
    for _ in range(rng.integers(5, 20)):
      tx, ty = rng.uniform(-SCENE_HALF_LENGTH, SCENE_HALF_LENGTH), rng.uniform(*sorted(terrain))
      crown = rng.uniform(1.0, 3.0)
      if not placed.free(tx, ty, 2 * crown, 2 * crown, 0.0, margin=0.0):
        continue
      if rng.random() < 0.7:
        top = rng.uniform(4.0, 9.0)
        prims.cylinder(tx, ty, rng.uniform(0.12, 0.3), z_terrain, top - crown, "trunk")
        prims.cylinder(tx, ty, crown, top - 2 * crown, top, "vegetation")
      else:
        prims.box(tx, ty, z_terrain, 2 * crown, 2 * crown, rng.uniform(0.5, 1.5),
                  rng.uniform(0, np.pi), "vegetation")
    # Poles (some with a traffic sign) along the kerb.
    kerb = walk[0] + side * 0.4
    for px in np.arange(-SCENE_HALF_LENGTH, SCENE_HALF_LENGTH, rng.uniform(15.0, 30.0)):
      px += rng.uniform(-2.0, 2.0)
      if not placed.free(px, kerb, 0.6, 0.6, 0.0, margin=0.0):
        continue
      height = rng.uniform(3.0, 8.0)
      prims.cylinder(px, kerb, rng.uniform(0.06, 0.15), z_walk, z_walk + height, "pole")
      if rng.random() < 0.4:
        prims.box(px, kerb, z_walk + height, 0.05, 0.7, 0.7, 0.0, "traffic-sign")
    # Pedestrians on the sidewalk.
    for _ in range(rng.integers(2, 12)):
      px, py = rng.uniform(-40.0, 40.0), rng.uniform(*sorted(walk))
      if placed.free(px, py, 0.6, 0.6, 0.0):
        prims.cylinder(px, py, rng.uniform(0.2, 0.3), z_walk, z_walk + rng.uniform(1.5, 1.95),
                       "person", instance)
        prims.attribute[instance] = "pedestrian.standing"
        instance += 1
    # Parked vehicles and two-wheelers on the parking strip (or the road edge).
    lane = edge + side * (1.25 if parking else -1.25)
    for _ in range(rng.integers(3, 12)):
      instance = _vehicle(rng, prims, placed, instance, rng.uniform(-50.0, 50.0), lane,
                          rng.choice([0.0, np.pi]) + rng.normal(0, 0.05), parked=True)
  # Traffic and cyclists in the lanes.
  for lane in np.arange(road[0] + 1.75, road[1] - 1.0, 3.5):
    for _ in range(rng.integers(1, 6)):
      yaw = (0.0 if lane > 0 else np.pi) + rng.normal(0, 0.03)
      instance = _vehicle(rng, prims, placed, instance, rng.uniform(-60.0, 60.0), lane, yaw,
                          parked=False)
  return prims


def _vehicle(rng, prims, placed, instance, x, y, yaw, parked: bool) -> int:
  """Adds one vehicle (a thing) if its spot is free; returns the next instance id."""
  kind = rng.choice(["car", "truck", "other-vehicle", "bicycle", "motorcycle"] if parked else
                    ["car", "car", "truck", "other-vehicle", "bicyclist", "motorcyclist"],
                    p=[0.7, 0.1, 0.05, 0.1, 0.05] if parked else [0.3, 0.3, 0.15, 0.05, 0.15,
                                                                     0.05])
  size = {"car": (4.4, 1.8, 1.5), "truck": (7.5, 2.5, 3.2), "other-vehicle": (11.0, 2.6, 3.2),
          "bicycle": (1.8, 0.6, 1.1), "motorcycle": (2.1, 0.8, 1.2),
          "bicyclist": (1.8, 0.6, 1.1), "motorcyclist": (2.1, 0.8, 1.2)}[kind]
  length, width, height = np.asarray(size) * rng.uniform(0.9, 1.1, 3)
  if not placed.free(x, y, length, width, yaw):
    return instance
  if kind == "car":  # body and cabin
    prims.box(x, y, 0.2, length, width, 0.7 * height - 0.2, yaw, kind, instance)
    prims.box(x - 0.1 * length * np.cos(yaw), y - 0.1 * length * np.sin(yaw), 0.7 * height,
              0.55 * length, 0.9 * width, 0.3 * height, yaw, kind, instance)
  elif kind in ("bicyclist", "motorcyclist"):  # the rider is part of the rider class
    prims.box(x, y, 0.0, length, 0.2, height * 0.7, yaw, kind, instance)
    prims.cylinder(x, y, 0.25, 0.6, 1.75, kind, instance)
  elif kind in ("bicycle", "motorcycle"):
    prims.box(x, y, 0.0, length, 0.25 * width, height, yaw, kind, instance)
  else:  # truck / bus: cab and cargo
    prims.box(x, y, 0.3, length, width, height - 0.3, yaw, kind, instance)
  if kind in ("car", "truck", "other-vehicle"):
    prims.attribute[instance] = "vehicle.parked" if parked else "vehicle.moving"
  else:
    prims.attribute[instance] = ("cycle.with_rider" if kind.endswith("ist")
                                 else "cycle.without_rider")
  return instance + 1


def _thing_boxes(prims: dict, attribute: dict, instances: np.ndarray) -> Boxes:
  """The tightest box around each instance's primitives, in the street frame (road z=0).

  Args:
    prims: `_Primitives.arrays()`.
    attribute: `_Primitives.attribute` (instance -> attribute name).
    instances: int [K] instance ids (as placed), one box each, in this order.

  The box's yaw is the yaw of the instance's box primitives (all of an instance share it;
  0 for a pedestrian, a lone cylinder); the extents are taken in that heading frame:
  a box primitive's corners, a vertical cylinder's xy disc (centre +- radius along both
  axes of the frame) and its z range.
  """
  center, size, yaw, label, attr = [], [], [], [], []
  for inst in instances:
    in_box = prims["box_instance"] == inst if len(prims["box_center"]) else np.zeros(0, bool)
    in_cyl = prims["cyl_instance"] == inst if len(prims["cyl_xy"]) else np.zeros(0, bool)
    yaws = prims["box_yaw"][in_box]
    if len(yaws) and np.ptp(yaws) > 0:
      raise AssertionError(f"instance {inst}: its box primitives have different yaws {yaws}")
    heading = float(yaws[0]) if len(yaws) else 0.0
    c, s = np.cos(heading), np.sin(heading)
    to_local = np.array([[c, s], [-s, c]])  # world xy -> heading frame
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for box_c, box_h in zip(prims["box_center"][in_box], prims["box_half"][in_box]):
      local = to_local @ box_c[:2]  # same yaw: the box is axis-aligned in this frame
      lo = np.minimum(lo, [*(local - box_h[:2]), box_c[2] - box_h[2]])
      hi = np.maximum(hi, [*(local + box_h[:2]), box_c[2] + box_h[2]])
    for xy, radius, (z0, z1) in zip(prims["cyl_xy"][in_cyl], prims["cyl_radius"][in_cyl],
                                    prims["cyl_z"][in_cyl]):
      local = to_local @ xy
      lo = np.minimum(lo, [*(local - radius), z0])
      hi = np.maximum(hi, [*(local + radius), z1])
    middle = (lo + hi) / 2
    center.append([*(to_local.T @ middle[:2]), middle[2]])
    size.append(hi - lo)
    yaw.append(heading)
    kinds = np.concatenate([prims["box_label"][in_box], prims["cyl_label"][in_cyl]])
    name = labels.SEMANTICKITTI_NAMES[int(kinds[0])]
    label.append(DETECTION_CLASSES.index(THING_TO_DETECTION[name]))
    attr.append(DETECTION_ATTRIBUTES.index(attribute[int(inst)]))
  return Boxes(center=np.asarray(center, np.float32).reshape(-1, 3),
               size=np.asarray(size, np.float32).reshape(-1, 3),
               yaw=np.asarray(yaw, np.float32), label=np.asarray(label, np.int32),
               velocity=None, attribute=np.asarray(attr, np.int32))


def _ray_directions(beams: int, azimuth_steps: int) -> np.ndarray:
  low, high, _ = BEAM_LAYOUTS[beams]
  elevation = np.deg2rad(np.linspace(low, high, beams))[:, None]
  azimuth = np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False)[None, :]
  return np.stack(np.broadcast_arrays(np.cos(elevation) * np.cos(azimuth),
                                      np.cos(elevation) * np.sin(azimuth),
                                      np.sin(elevation)), axis=-1).reshape(-1, 3)


def _nearest_hit(origin, d, prims):
  """(t [R], label [R], instance [R], cos incidence [R]) of each ray's nearest hit; t = inf
  where nothing is hit within MAX_RANGE. `d` [R, 3] unit directions."""
  r = len(d)
  best = np.full(r, np.inf)
  label = np.full(r, -1, np.int64)
  instance = np.full(r, NO_INSTANCE, np.int64)
  cosine = np.ones(r)

  def keep(t, lab, inst, cos):  # t [R, K]: nearest of the K primitives, merged into best
    k = np.argmin(t, axis=1)
    t_k = t[np.arange(r), k]
    better = t_k < best
    best[better] = t_k[better]
    label[better], instance[better] = lab[k][better], inst[k][better]
    cosine[better] = cos[np.arange(r), k][better]

  with np.errstate(divide="ignore", invalid="ignore"):
    if len(prims["strip_z"]):  # horizontal planes z = h over a y band
      t = (prims["strip_z"][None] - origin[2]) / d[:, 2:3]
      y = origin[1] + t * d[:, 1:2]
      x = origin[0] + t * d[:, 0:1]
      ok = ((t > 0) & (y >= prims["strip_y"][None, :, 0]) & (y < prims["strip_y"][None, :, 1])
            & (np.abs(x) <= SCENE_HALF_LENGTH))
      keep(np.where(ok, t, np.inf), prims["strip_label"], np.full(len(prims["strip_z"]), -1),
           np.broadcast_to(np.abs(d[:, 2:3]), t.shape))
    if len(prims["box_center"]):  # slab test in each box's frame, one axis at a time
      c, s = np.cos(prims["box_yaw"]), np.sin(prims["box_yaw"])
      rel = origin - prims["box_center"]  # [B, 3]
      o_local = (c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2])
      d_local = (d[:, :1] * c + d[:, 1:2] * s, -d[:, :1] * s + d[:, 1:2] * c, d[:, 2:3])
      t_in, t_out, cos = -np.inf, np.inf, 0.0
      for axis in range(3):  # d_local[axis]: [R, B] (z: [R, 1], yaw does not touch it)
        inverse = 1.0 / d_local[axis]
        t1 = (-prims["box_half"][:, axis] - o_local[axis]) * inverse
        t2 = (prims["box_half"][:, axis] - o_local[axis]) * inverse
        t_near = np.minimum(t1, t2)
        cos = np.where(t_near > t_in, np.abs(d_local[axis]), cos)  # entry face's normal
        t_in, t_out = np.maximum(t_in, t_near), np.minimum(t_out, np.maximum(t1, t2))
      ok = (t_in <= t_out) & (t_in > 0)
      keep(np.where(ok, t_in, np.inf), prims["box_label"], prims["box_instance"], cos)
    if len(prims["cyl_xy"]):  # vertical cylinders: quadratic in xy, then the z range
      rel = origin[:2] - prims["cyl_xy"]  # [C, 2]
      a = d[:, 0:1] ** 2 + d[:, 1:2] ** 2
      b = 2 * (d[:, 0:1] * rel[None, :, 0] + d[:, 1:2] * rel[None, :, 1])
      cc = (rel ** 2).sum(-1)[None] - prims["cyl_radius"][None] ** 2
      t = (-b - np.sqrt(b * b - 4 * a * cc)) / (2 * a)
      z = origin[2] + t * d[:, 2:3]
      ok = (t > 0) & (z >= prims["cyl_z"][None, :, 0]) & (z <= prims["cyl_z"][None, :, 1])
      hit_xy = rel[None] + t[..., None] * d[:, None, :2]
      cos = np.abs((hit_xy * d[:, None, :2]).sum(-1)) / prims["cyl_radius"][None]
      keep(np.where(ok, t, np.inf), prims["cyl_label"], prims["cyl_instance"], cos)
  best[best > MAX_RANGE] = np.inf
  return best, label, instance, np.clip(cosine, 0.0, 1.0)


def generate_sweep(seed: int, *, beams: int = 32, azimuth_steps: Optional[int] = None) -> Scene:
  """One synthetic LiDAR sweep; the same seed gives the same sweep.

  Args:
    seed: random seed.
    beams: 32 (nuScenes-like, ~30k points) or 64 (SemanticKITTI-like, ~100k points).
    azimuth_steps: rays per beam and revolution (default 1200 for 32 beams, 2048 for
      64); lower it for tests (e.g. 256 gives a few thousand points).

  Returns:
    Scene with coord [N, 3] metres (sensor frame), strength [N] in [0, 1], segment [N]
    SemanticKITTI-19 ids, instance [N] (things only, -1 elsewhere) and boxes (one per
    instance id, box k for instance k; module docstring).
  """
  if beams not in BEAM_LAYOUTS:
    raise SceneError(f"synthetic-outdoor: beams must be one of {sorted(BEAM_LAYOUTS)}, got "
                     f"{beams}.")
  azimuth_steps = azimuth_steps or BEAM_LAYOUTS[beams][2]
  if azimuth_steps < 8:
    raise SceneError(f"synthetic-outdoor: azimuth_steps must be >= 8, got {azimuth_steps}.")
  rng = np.random.default_rng(seed)
  placed = _street(rng)
  prims = placed.arrays()
  origin = np.array([0.0, 0.0, SENSOR_HEIGHT])
  directions = _ray_directions(beams, azimuth_steps)
  hits = [_nearest_hit(origin, directions[i:i + RAY_CHUNK], prims)
          for i in range(0, len(directions), RAY_CHUNK)]
  t, label, instance, cosine = (np.concatenate(part) for part in zip(*hits))
  # No return: nothing within range, the ego vehicle's own body, or a random dropout.
  returned = np.isfinite(t) & (label != -2) & (rng.random(len(t)) >= DROPOUT)
  t, label, instance, cosine = t[returned], label[returned], instance[returned], cosine[returned]
  directions = directions[returned]
  t = t + rng.normal(0.0, RANGE_NOISE, len(t))
  coord = origin + t[:, None] * directions - np.array([0.0, 0.0, SENSOR_HEIGHT])
  reflectivity = np.array([REFLECTIVITY[name] for name in labels.SEMANTICKITTI_NAMES])[label]
  strength = np.clip(reflectivity * (0.4 + 0.6 * cosine) + rng.normal(0, 0.03, len(t)), 0, 1)
  placed_ids, instance_ids = np.unique(instance, return_inverse=True)  # contiguous ids ...
  instance = np.where(instance >= 0, instance_ids - int(np.any(instance < 0)), NO_INSTANCE)
  # ... and box k encloses the placed instance that became id k.
  boxes = _thing_boxes(prims, placed.attribute, placed_ids[placed_ids >= 0])
  boxes.center[:, 2] -= SENSOR_HEIGHT  # street frame -> sensor frame (as `coord`)
  return Scene(coord=coord.astype(np.float32), strength=strength.astype(np.float32),
               segment=label.astype(np.int32), instance=instance.astype(np.int32),
               name=f"synthetic_outdoor_{seed:06d}", source=f"synthetic-outdoor seed {seed}",
               boxes=boxes)
