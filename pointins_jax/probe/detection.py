"""CenterPoint-style 3D detection on point features: BEV scatter, 2D neck, centre heads.

Pieces (CenterPoint, Yin et al. 2021, nuScenes configuration; Table 11 of the paper):

  point features [B, P, C] (the probe backbone's per-point output, view frame)
    -> Dense + LayerNorm + ReLU, max over the points of each BEV cell (over height)
    -> neck: 2 conv3x3, one stride-2 stage of 2 conv3x3, transposed-conv up, concat, conv3x3
    -> per class group: heatmap logits [n_g] and regression [R] per cell.

Regression per cell (R = 8, or 10 with velocity), in this order:
  sub-cell offset (dx, dy) of the box centre in cells, z (m), log(length, width, height),
  sin(yaw), cos(yaw) [, vx, vy (m/s)].
CenterPoint orders its targets (reg, height, dim, vel, rot); its code weights
[1]*8 + [0.2, 0.2] therefore weight *rot* by 0.2. We weight velocity by 0.2 (the task
brief's reading); `code_weights` is a config field.

Targets are built on the host in numpy (`build_targets`: CenterPoint's gaussian_radius /
draw_umich_gaussian, min overlap 0.1, min radius 2 cells) with static shapes; losses (the
CenterNet focal loss on the heatmaps, weighted L1 at the centre cells) and the decoding
(3x3 max-pool peaks, top-k per group) are jittable; circle NMS runs on the host.

All norms are LayerNorm (no batch statistics), as in the rest of the probe.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pointins_jax.data.boxes import DETECTION_CLASSES

# CenterPoint's nuScenes tasks (class groups) and their circle-NMS min_radius.
CENTERPOINT_GROUPS = (("car",), ("truck", "construction_vehicle"), ("bus", "trailer"),
                      ("barrier",), ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"))
CENTERPOINT_MIN_RADIUS = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
HEATMAP_BIAS = -2.19  # CenterNet's initial heatmap logit (prior 0.1)


@dataclasses.dataclass(frozen=True)
class DetectionSpec:
  """Static geometry and class layout of the detector (hashable: a jit static value).

  Attributes:
    x_min, y_min: the BEV grid's lower corner in the view frame (m).
    cell: BEV cell size (m), square.
    height, width: BEV cells along y and x (the heatmap is [H, W], row = y).
    groups: per class group, the class ids (into DETECTION_CLASSES) it predicts.
    with_velocity: regress (vx, vy).
    min_overlap, min_radius: CenterPoint's gaussian_overlap and min_radius (cells).
    min_box_points: boxes holding fewer of the view's points get no target (CenterPoint
      trains on boxes with at least one LiDAR or radar point); 0 keeps all.
  """

  x_min: float
  y_min: float
  cell: float
  height: int
  width: int
  groups: tuple
  with_velocity: bool = False
  min_overlap: float = 0.1
  min_radius: int = 2
  min_box_points: int = 0

  @property
  def num_classes(self) -> int:  # heatmap channels, groups concatenated
    return sum(len(g) for g in self.groups)

  @property
  def reg_dim(self) -> int:
    return 10 if self.with_velocity else 8

  @property
  def group_slices(self) -> list:
    starts = np.cumsum([0] + [len(g) for g in self.groups])
    return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]

  @property
  def channel_class(self) -> np.ndarray:
    """Heatmap channel -> class id: int32 [num_classes]."""
    return np.asarray([c for g in self.groups for c in g], np.int32)

  def class_to_channel(self) -> dict:
    return {c: (g, i, s + i) for g, (group, (s, _)) in enumerate(zip(self.groups,
                                                                      self.group_slices))
            for i, c in enumerate(group)}


def spec_from_config(det) -> DetectionSpec:
  """The `DetectionSpec` of `config.detection` (names -> ids, range -> grid shape).

  Raises:
    ValueError: naming the config field (unknown class, a class in two groups, a range
      that is not a whole even number of cells).
  """
  x0, y0, x1, y1 = (float(v) for v in det.xy_range)
  cell = float(det.bev_cell)
  shape = []
  for lo, hi, name in ((y0, y1, "y"), (x0, x1, "x")):
    n = (hi - lo) / cell
    if hi <= lo or abs(n - round(n)) > 1e-6 or round(n) % 2:
      raise ValueError(f"config.detection.xy_range={tuple(det.xy_range)} / bev_cell={cell}: "
                       f"the {name} extent must be a positive even number of cells.")
    shape.append(int(round(n)))
  groups, seen = [], set()
  for group in det.class_groups:
    ids = []
    for name in group:
      if name not in DETECTION_CLASSES:
        raise ValueError(f"config.detection.class_groups: unknown class {name!r}; use "
                         f"{DETECTION_CLASSES}.")
      if name in seen:
        raise ValueError(f"config.detection.class_groups: {name!r} is in two groups.")
      seen.add(name)
      ids.append(DETECTION_CLASSES.index(name))
    groups.append(tuple(ids))
  if len(det.nms_min_radius) != len(groups):
    raise ValueError(f"config.detection.nms_min_radius has {len(det.nms_min_radius)} values "
                     f"for {len(groups)} class_groups; give one per group.")
  return DetectionSpec(x_min=x0, y_min=y0, cell=cell, height=shape[0], width=shape[1],
                       groups=tuple(groups), with_velocity=bool(det.with_velocity),
                       min_overlap=float(det.min_overlap), min_radius=int(det.min_radius),
                       min_box_points=int(det.get("min_box_points", 0)))


# ----------------------------------------------------------------------------- targets


def gaussian_radius(det_size, min_overlap: float = 0.5) -> float:
  """CenterPoint's (CornerNet's) gaussian_radius of a (height, width) box in cells."""
  height, width = det_size
  b1 = height + width
  c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
  r1 = (b1 + np.sqrt(b1 ** 2 - 4 * c1)) / 2
  b2 = 2 * (height + width)
  c2 = (1 - min_overlap) * width * height
  r2 = (b2 + np.sqrt(b2 ** 2 - 16 * c2)) / 2
  a3 = 4 * min_overlap
  b3 = -2 * min_overlap * (height + width)
  c3 = (min_overlap - 1) * width * height
  r3 = (b3 + np.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
  return float(min(r1, r2, r3))


def gaussian_2d(diameter: int, sigma: float) -> np.ndarray:
  m = (diameter - 1) / 2.0
  y, x = np.ogrid[-m:m + 1, -m:m + 1]
  h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  h[h < np.finfo(h.dtype).eps * h.max()] = 0
  return h


def draw_gaussian(heatmap: np.ndarray, center_xy, radius: int) -> None:
  """CenterPoint's draw_umich_gaussian: heatmap [H, W] = max(heatmap, gaussian), in place."""
  diameter = 2 * radius + 1
  gaussian = gaussian_2d(diameter, sigma=diameter / 6)
  x, y = int(center_xy[0]), int(center_xy[1])
  height, width = heatmap.shape
  left, right = min(x, radius), min(width - x, radius + 1)
  top, bottom = min(y, radius), min(height - y, radius + 1)
  masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
  masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
  if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
    np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)


def encode_boxes(center, size, yaw, velocity, spec: DetectionSpec):
  """Boxes -> (cell x, cell y, regression [M, R]) in the BEV grid (no range check)."""
  cx = (center[:, 0] - spec.x_min) / spec.cell
  cy = (center[:, 1] - spec.y_min) / spec.cell
  ix, iy = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
  parts = [cx - ix, cy - iy, center[:, 2], np.log(size[:, 0]), np.log(size[:, 1]),
           np.log(size[:, 2]), np.sin(yaw), np.cos(yaw)]
  if spec.with_velocity:
    parts += [velocity[:, 0], velocity[:, 1]]
  return ix, iy, np.stack(parts, axis=-1).astype(np.float32)


def points_in_boxes(coord: np.ndarray, center, size, yaw) -> np.ndarray:
  """Points of `coord` [P, 3] inside each upright box (inclusive): int64 [M] counts."""
  counts = np.zeros(len(center), np.int64)
  for k in range(len(center)):
    d = coord - center[k]
    c, s = np.cos(yaw[k]), np.sin(yaw[k])
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    counts[k] = np.count_nonzero(np.all(np.abs(local) <= size[k] / 2, axis=1))
  return counts


def build_targets(batch: dict, spec: DetectionSpec) -> dict:
  """Heatmap and regression targets of a host batch's padded boxes.

  Args:
    batch: box_center f32 [B, M, 3], box_size [B, M, 3], box_yaw [B, M], box_label i32
      [B, M], box_valid bool [B, M] and, with velocity, box_velocity [B, M, 2]; view frame.
  Returns:
    heatmap f32 [B, H, W, num_classes] (Gaussian peaks, exactly 1 at centre cells),
    reg_target f32 [B, M, R], reg_index i32 [B, M] (flat cell y * W + x),
    reg_group i32 [B, M], reg_mask bool [B, M] (a box of a grouped class inside the grid),
    and boxes_outside i32 [B] (valid boxes outside the BEV grid, of no group, or with
    fewer than `spec.min_box_points` of the row's valid points; needs batch "coord" and
    "valid" then).
  """
  b, m = batch["box_valid"].shape
  heatmap = np.zeros((b, spec.height, spec.width, spec.num_classes), np.float32)
  reg_target = np.zeros((b, m, spec.reg_dim), np.float32)
  reg_index = np.zeros((b, m), np.int32)
  reg_group = np.zeros((b, m), np.int32)
  reg_mask = np.zeros((b, m), bool)
  outside = np.zeros(b, np.int32)
  channel = spec.class_to_channel()
  if spec.with_velocity and "box_velocity" not in batch:
    raise ValueError("config.detection.with_velocity=True but the batch has no box "
                     "velocities (the dataset has none); set with_velocity=False.")
  for r in range(b):
    valid = np.flatnonzero(batch["box_valid"][r])
    if valid.size == 0:
      continue
    center = batch["box_center"][r, valid].astype(np.float64)
    size = batch["box_size"][r, valid].astype(np.float64)
    velocity = batch["box_velocity"][r, valid] if spec.with_velocity else None
    yaw = batch["box_yaw"][r, valid].astype(np.float64)
    ix, iy, reg = encode_boxes(center, size, yaw, velocity, spec)
    enough = np.ones(len(valid), bool)
    if spec.min_box_points > 0:
      points = batch["coord"][r][batch["valid"][r]].astype(np.float64)
      enough = points_in_boxes(points, center, size, yaw) >= spec.min_box_points
    for j, k in enumerate(valid):
      label = int(batch["box_label"][r, k])
      if (label not in channel or not enough[j]
          or not (0 <= ix[j] < spec.width and 0 <= iy[j] < spec.height)):
        outside[r] += 1
        continue
      group, _, ch = channel[label]
      radius = gaussian_radius((size[j, 0] / spec.cell, size[j, 1] / spec.cell),
                               spec.min_overlap)
      radius = max(spec.min_radius, int(radius))
      draw_gaussian(heatmap[r, :, :, ch], (ix[j], iy[j]), radius)
      reg_target[r, k] = reg[j]
      reg_index[r, k] = iy[j] * spec.width + ix[j]
      reg_group[r, k] = group
      reg_mask[r, k] = True
  return dict(heatmap=heatmap, reg_target=reg_target, reg_index=reg_index,
              reg_group=reg_group, reg_mask=reg_mask, boxes_outside=outside)


# ----------------------------------------------------------------------------- network


def bev_scatter_max(coord, features, valid, spec: DetectionSpec):
  """Max of point features over each BEV cell (all heights): [B, H, W, C], 0 where empty.

  Points outside the grid's xy range or padding (`valid` False) are ignored. Features
  should be >= 0 (after ReLU) so 0 for empty cells does not clash with real maxima.
  """
  b, p, c = features.shape
  ix = jnp.floor((coord[..., 0] - spec.x_min) / spec.cell).astype(jnp.int32)
  iy = jnp.floor((coord[..., 1] - spec.y_min) / spec.cell).astype(jnp.int32)
  inside = valid & (ix >= 0) & (ix < spec.width) & (iy >= 0) & (iy < spec.height)
  cells = spec.height * spec.width
  seg = jnp.where(inside, iy * spec.width + ix, cells)  # [B, P]; cells = dropped
  seg = seg + (jnp.arange(b) * (cells + 1))[:, None]
  out = jax.ops.segment_max(features.reshape(b * p, c), seg.reshape(-1),
                            num_segments=b * (cells + 1))
  out = out.reshape(b, cells + 1, c)[:, :cells]
  out = jnp.where(jnp.isfinite(out), out, 0.0)
  return out.reshape(b, spec.height, spec.width, c)


class ConvNormReLU(nn.Module):
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), strides=self.stride, padding="SAME", use_bias=False)(x)
    return nn.relu(nn.LayerNorm(epsilon=1e-5)(x))


class CenterHead(nn.Module):
  """Point features -> BEV -> neck -> {"heatmap": [B, H, W, NC] logits, "reg": [B, H, W, G, R]}."""

  spec: DetectionSpec
  bev_channels: int = 64
  neck_channels: int = 64
  head_channels: int = 64

  @nn.compact
  def __call__(self, coord, features, valid):
    x = nn.Dense(self.bev_channels, name="point_proj")(features)
    x = nn.relu(nn.LayerNorm(epsilon=1e-5, name="point_norm")(x))
    bev = bev_scatter_max(coord, x, valid, self.spec)
    c = self.neck_channels
    x = ConvNormReLU(c, name="neck0")(bev)
    x = ConvNormReLU(c, name="neck1")(x)
    d = ConvNormReLU(2 * c, stride=2, name="down0")(x)
    d = ConvNormReLU(2 * c, name="down1")(d)
    u = nn.ConvTranspose(c, (2, 2), strides=(2, 2), use_bias=False, name="up")(d)
    u = nn.relu(nn.LayerNorm(epsilon=1e-5, name="up_norm")(u))
    x = ConvNormReLU(c, name="fuse")(jnp.concatenate([x, u], axis=-1))
    heatmaps, regs = [], []
    for g, group in enumerate(self.spec.groups):
      h = ConvNormReLU(self.head_channels, name=f"hm{g}_conv")(x)
      heatmaps.append(nn.Conv(len(group), (3, 3), padding="SAME", name=f"hm{g}_out",
                              bias_init=nn.initializers.constant(HEATMAP_BIAS))(h))
      r = ConvNormReLU(self.head_channels, name=f"reg{g}_conv")(x)
      regs.append(nn.Conv(self.spec.reg_dim, (3, 3), padding="SAME", name=f"reg{g}_out")(r))
    return {"heatmap": jnp.concatenate(heatmaps, axis=-1), "reg": jnp.stack(regs, axis=3)}


# ----------------------------------------------------------------------------- losses


def focal_loss(logits, target, eps: float = 1e-4):
  """CenterNet's penalty-reduced focal loss (`_neg_loss`), summed / number of peaks.

  Args:
    logits, target: [..., H, W, C]; target Gaussian heatmaps with exact 1 at the peaks.
  """
  pred = jnp.clip(jax.nn.sigmoid(logits), eps, 1 - eps)
  pos = (target == 1).astype(pred.dtype)
  neg_w = (1 - target) ** 4 * (1 - pos)
  pos_loss = jnp.sum(jnp.log(pred) * (1 - pred) ** 2 * pos)
  neg_loss = jnp.sum(jnp.log(1 - pred) * pred ** 2 * neg_w)
  num_pos = jnp.sum(pos)
  return -(pos_loss + neg_loss) / jnp.maximum(num_pos, 1.0)


def gather_reg(reg, index, group):
  """reg [B, H, W, G, R] at flat cells `index` [B, M] and groups `group` [B, M]: [B, M, R]."""
  b, h, w, g, r = reg.shape
  flat = reg.reshape(b, h * w * g, r)
  return jnp.take_along_axis(flat, (index * g + group)[..., None], axis=1)


def detection_losses(out: dict, targets: dict, spec: DetectionSpec, code_weights,
                     reg_weight: float):
  """CenterPoint's loss: sum over groups of focal(heatmap) + reg_weight * weighted L1.

  Each group's L1 is normalised by its number of boxes (CenterPoint's RegLoss, per
  regression dimension, then weighted by `code_weights` and summed).
  Returns (loss, metrics).
  """
  weights = jnp.asarray(code_weights, jnp.float32)[:spec.reg_dim]
  pred = gather_reg(out["reg"], targets["reg_index"], targets["reg_group"])  # [B, M, R]
  l1 = jnp.abs(pred - targets["reg_target"])
  mask = targets["reg_mask"]
  loss_hm, loss_reg = 0.0, 0.0
  for g, (s, e) in enumerate(spec.group_slices):
    loss_hm = loss_hm + focal_loss(out["heatmap"][..., s:e], targets["heatmap"][..., s:e])
    in_g = (mask & (targets["reg_group"] == g)).astype(jnp.float32)
    per_dim = jnp.sum(l1 * in_g[..., None], axis=(0, 1)) / (jnp.sum(in_g) + 1e-4)
    loss_reg = loss_reg + jnp.sum(per_dim * weights)
  loss = loss_hm + reg_weight * loss_reg
  return loss, {"loss_heatmap": loss_hm, "loss_reg": loss_reg,
                "num_boxes": jnp.sum(mask).astype(jnp.float32)}


# ----------------------------------------------------------------------------- decoding


def decode_reg(reg, ix, iy, spec: DetectionSpec):
  """Regression values at cells (ix, iy) -> (center [..., 3], size, yaw, velocity or None)."""
  x = (ix + reg[..., 0]) * spec.cell + spec.x_min
  y = (iy + reg[..., 1]) * spec.cell + spec.y_min
  center = jnp.stack([x, y, reg[..., 2]], axis=-1)
  size = jnp.exp(jnp.clip(reg[..., 3:6], -10.0, 10.0))
  yaw = jnp.arctan2(reg[..., 6], reg[..., 7])
  velocity = reg[..., 8:10] if spec.with_velocity else None
  return center, size, yaw, velocity


def peak_scores(heatmap_logits):
  """Sigmoid scores kept only at 3x3 local maxima (CenterPoint's max-pool NMS)."""
  scores = jax.nn.sigmoid(heatmap_logits)
  pooled = jax.lax.reduce_window(scores, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1),
                                 "SAME")
  return jnp.where(scores == pooled, scores, 0.0)


def decode_topk(out: dict, spec: DetectionSpec, k: int) -> dict:
  """Top-k peaks per class group: {score [B, G, K], label (class id), center [.., 3], size,
  yaw [, velocity]}. Jittable; `k` is capped at the group's H * W * n_g."""
  scores = peak_scores(out["heatmap"])
  b = scores.shape[0]
  channel_class = jnp.asarray(spec.channel_class)
  result = {key: [] for key in ("score", "label", "center", "size", "yaw", "velocity")}
  k = min(k, spec.height * spec.width)
  for g, (s, e) in enumerate(spec.group_slices):
    n = e - s
    top, idx = jax.lax.top_k(scores[..., s:e].reshape(b, -1), k)  # flat (y, x, c)
    cell, ch = idx // n, idx % n
    iy, ix = cell // spec.width, cell % spec.width
    reg = jnp.take_along_axis(out["reg"][..., g, :].reshape(b, -1, spec.reg_dim),
                              cell[..., None], axis=1)
    center, size, yaw, velocity = decode_reg(reg, ix, iy, spec)
    result["score"].append(top)
    result["label"].append(channel_class[s + ch])
    result["center"].append(center)
    result["size"].append(size)
    result["yaw"].append(yaw)
    if velocity is not None:
      result["velocity"].append(velocity)
  return {key: jnp.stack(value, axis=1) for key, value in result.items() if value}


def circle_nms(xy: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
  """CenterPoint's circle_nms: greedy by score, drops boxes whose squared centre distance
  to a kept one is <= `thresh` (CenterPoint compares the *squared* distance with its
  min_radius). Returns the kept indices, best first."""
  order = np.argsort(-scores, kind="stable")
  keep = []
  suppressed = np.zeros(len(order), bool)
  xy = np.asarray(xy, np.float64)
  for a, i in enumerate(order):
    if suppressed[i]:
      continue
    keep.append(i)
    rest = order[a + 1:]
    d2 = np.sum((xy[rest] - xy[i]) ** 2, axis=1)
    suppressed[rest[d2 <= thresh]] = True
  return np.asarray(keep, np.int64)


def postprocess(candidates: dict, spec: DetectionSpec, *, score_threshold: float,
                nms_min_radius: Sequence[float], post_max_size: int,
                max_detections: int, group: Optional[np.ndarray] = None) -> dict:
  """Host-side: threshold, per-group circle NMS (post_max_size each), top max_detections.

  Args:
    candidates: numpy arrays of one scene, flat over candidates: score [K], label [K],
      center [K, 3], size, yaw [, velocity]; `group` [K] their class group (derived from
      the labels when None).
  Returns:
    the kept boxes as numpy arrays (same keys), sorted by score.
  """
  if group is None:
    of_class = {c: g for g, grp in enumerate(spec.groups) for c in grp}
    group = np.asarray([of_class[int(c)] for c in candidates["label"]], np.int64)
  keep_all = []
  above = candidates["score"] > score_threshold
  for g in range(len(spec.groups)):
    idx = np.flatnonzero(above & (group == g))
    if idx.size == 0:
      continue
    kept = circle_nms(candidates["center"][idx, :2], candidates["score"][idx],
                      float(nms_min_radius[g]))[:post_max_size]
    keep_all.append(idx[kept])
  keep = np.concatenate(keep_all) if keep_all else np.zeros(0, np.int64)
  keep = keep[np.argsort(-candidates["score"][keep], kind="stable")][:max_detections]
  return {key: np.asarray(value)[keep] for key, value in candidates.items()}
