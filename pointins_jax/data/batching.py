"""Static-shape batches: budget crops, stage-capacity fitting, correspondences, bucketed padding.

jit needs static shapes, so every view is padded to a point capacity N taken from a short
sorted list of `buckets` (few shapes = few recompiles). Views larger than the largest bucket,
or whose coarse stages would overflow the model's per-stage capacities, are sphere-cropped and
the number of removed points is reported in `num_cropped` (never silent). The output is the
batch layout of docs/architecture.md.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np

from pointins_jax.data import transforms
from pointins_jax.data import views as views_lib

_PER_POINT = ("coord", "feat", "origin_coord", "origin_index", "index", "visible", "segment",
              "instance")
# Padding value of every per-point output (the layout's "0 on padding" / "-1 on padding").
PAD_VALUES = dict(coord=0.0, feat=0.0, grid=0, valid=False, visible=False, origin_coord=0.0,
            origin_index=-1, index=-1, cross_index=-1, segment=-1, instance=-1)
_DTYPES = dict(coord=np.float32, feat=np.float32, grid=np.int32, valid=bool, visible=bool,
               origin_coord=np.float32, origin_index=np.int32, index=np.int32,
               cross_index=np.int32, segment=np.int32, instance=np.int32)


def choose_bucket(num_points: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= num_points; the largest bucket if none is (callers crop first)."""
  for bucket in buckets:
    if num_points <= bucket:
      return int(bucket)
  return int(buckets[-1])


def view_grid(coord: np.ndarray, grid_size: float) -> np.ndarray:
  """floor((coord - coord.min(0)) / grid_size): int32 [n, 3] >= 0."""
  return transforms.cell_index(coord, grid_size).astype(np.int32)


def center_order(points: np.ndarray) -> np.ndarray:
  """Point ids nearest-first from the bounding-box centre (the order sphere crops keep)."""
  center = (points.min(axis=0) + points.max(axis=0)) / 2.0
  return np.argsort(np.sum((points - center) ** 2, axis=1), kind="stable")


def stage_point_counts(grid: np.ndarray, num_stages: int,
                       strides: Optional[Sequence[int]] = None) -> np.ndarray:
  """Real points per encoder stage of one view: distinct cells of `grid >> b_s`.

  Exactly what the model's stride-2 pooling will produce, computed on the host before the
  device step, so stage capacities can follow the data.

  Args:
    grid: int [n, 3] cells of the view's real points.
    num_stages: number of encoder stages.
    strides: pooling stride between consecutive stages (powers of two); default 2 each.
  Returns:
    i64 [num_stages] (stage 0: n).
  """
  strides = [2] * (num_stages - 1) if strides is None else list(strides)
  shifts = np.concatenate([[0], np.cumsum(np.log2(strides).astype(int))])
  grid = np.asarray(grid, np.int64)
  return np.array([grid.shape[0]] + [transforms.count_cells(grid >> shift)
                                     for shift in shifts[1:]], np.int64)


def fit_stage_capacities(grid: np.ndarray, n_valid: int, stage_capacities: Sequence[int],
                         strides: Optional[Sequence[int]] = None) -> np.ndarray:
  """Which points to keep so that no encoder stage overflows its static capacity.

  Stage s holds the distinct cells of `grid >> b_s`, b_s = sum(log2(strides[:s])); it must
  hold at most stage_capacities[s] of them (stage 0: points, i.e. n_valid <= capacity).
  When a stage overflows, the points are sphere-cropped (nearest to the grid's bbox centre
  kept) to the largest count that fits, found by bisection (cell counts grow with the crop).

  Args:
    grid: int [>= n_valid, 3] cells of one view; rows >= n_valid are padding.
    n_valid: number of real points.
    stage_capacities: static capacity per stage (the model's `stage_capacities`).
    strides: pooling stride between consecutive stages (powers of two); default 2 each.

  Returns:
    bool [n_valid], True = kept.
  """
  strides = [2] * (len(stage_capacities) - 1) if strides is None else list(strides)
  if len(strides) != len(stage_capacities) - 1 or any(s < 1 or s & (s - 1) for s in strides):
    raise ValueError(f"fit_stage_capacities: strides={strides} must be {len(stage_capacities) - 1}"
                     " powers of two (one per pooling between the given stages).")
  shifts = np.concatenate([[0], np.cumsum(np.log2(strides).astype(int))])
  grid = np.asarray(grid[:n_valid], np.int64)

  def fits(rows: np.ndarray) -> bool:
    if rows.shape[0] > stage_capacities[0]:
      return False
    return all(transforms.count_cells(rows >> shift) <= cap
               for shift, cap in zip(shifts[1:], stage_capacities[1:]))

  keep = np.ones(n_valid, bool)
  if fits(grid):
    return keep
  order = center_order(grid.astype(np.float64))
  lo, hi = 0, min(n_valid, stage_capacities[0])  # lo fits (empty), find the largest that does
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(grid[order[:mid]]):
      lo = mid
    else:
      hi = mid - 1
  keep[order[lo:]] = False
  return keep


def subset_view(view: dict, keep: np.ndarray) -> dict:
  """The view restricted to `keep` (bool mask or sorted ids), per-point arrays only.

  Boxes (a detection view's "boxes") are per view, not per point: all are kept here;
  sphere crops (`sphere_crop_view`) drop those centred outside the crop.
  """
  out = dict(view)
  for key in _PER_POINT:
    out[key] = view[key][keep]
  return out


def sphere_crop_view(view: dict, keep: np.ndarray) -> dict:
  """`subset_view` for a sphere crop around the view's bbox centre (`center_order`).

  A view with "boxes" keeps those whose centre lies in the crop's ball (the bbox centre,
  radius: the farthest kept point) and adds the others to "boxes_dropped".
  """
  out = subset_view(view, keep)
  if out.get("boxes") is not None:
    points = view["coord"].astype(np.float64)
    center = (points.min(axis=0) + points.max(axis=0)) / 2.0
    out["boxes"], dropped = transforms.boxes_in_ball(
        view["boxes"], center, transforms.crop_radius(out["coord"], center))
    out["boxes_dropped"] = view.get("boxes_dropped", 0) + dropped
  return out


def crop_view(view: dict, max_points: int) -> tuple[dict, int]:
  """Sphere crop around the view's bbox centre to at most `max_points`: (view, num removed)."""
  n = view["coord"].shape[0]
  if n <= max_points:
    return view, 0
  keep = np.sort(center_order(view["coord"].astype(np.float64))[:max_points])
  return sphere_crop_view(view, keep), n - max_points


def fit_view(view: dict, grid_size: float, stage_capacities: Sequence[int]):
  """Crops a view until its grid fits `stage_capacities`: (view, grid, num removed).

  The grid is relative to the minimum of the kept points, so a crop can re-align cells;
  the check is repeated on the re-computed grid until it holds (points only decrease).
  """
  removed = 0
  while True:
    grid = view_grid(view["coord"], grid_size)
    keep = fit_stage_capacities(grid, grid.shape[0], stage_capacities)
    if keep.all():
      return view, grid, removed
    removed += int((~keep).sum())
    view = sphere_crop_view(view, keep)


def pad_boxes(boxes, max_boxes: int) -> dict:
  """A view's `Boxes` as static-shape arrays: the first `max_boxes` of them.

  Returns box_center f32 [K, 3], box_size f32 [K, 3] (1 on padding), box_yaw f32 [K],
  box_label i32 [K] (-1 on padding), box_velocity f32 [K, 2] (0 where absent) and
  box_valid bool [K], K = max_boxes.
  """
  n = min(len(boxes), max_boxes)
  out = dict(box_center=np.zeros((max_boxes, 3), np.float32),
             box_size=np.ones((max_boxes, 3), np.float32),
             box_yaw=np.zeros(max_boxes, np.float32),
             box_label=np.full(max_boxes, -1, np.int32),
             box_velocity=np.zeros((max_boxes, 2), np.float32),
             box_valid=np.zeros(max_boxes, bool))
  out["box_center"][:n] = boxes.center[:n]
  out["box_size"][:n] = boxes.size[:n]
  out["box_yaw"][:n] = boxes.yaw[:n]
  out["box_label"][:n] = boxes.label[:n]
  if boxes.velocity is not None:
    out["box_velocity"][:n] = boxes.velocity[:n]
  out["box_valid"][:n] = True
  return out


def _pad(values: np.ndarray, capacity: int, key: str) -> np.ndarray:
  out = np.full((capacity,) + values.shape[1:], PAD_VALUES[key], _DTYPES[key])
  out[:values.shape[0]] = values
  return out


def collate(examples: Sequence[Sequence[dict]], *, buckets: Sequence[int], grid_size: float,
            min_view_points: int = 1,
            stage_capacities_fn: Optional[Callable[[int], Sequence[int]]] = None,
            with_views: bool = True, max_boxes: int = 64) -> dict:
  """Pads B examples of V views each into one static-shape batch.

  Every view is first cropped to the largest bucket. With `stage_capacities_fn`, the batch's
  real per-stage point counts are measured and the model's capacities for them taken
  (`stage_capacities` in the output): data-following capacities always hold every point;
  fixed ones (`model.capacity_steps_per_octave=0`) may crop views to fit, counted in
  `num_cropped`. cross_index is computed after the crops.

  Args:
    examples: B lists of views (`views` module layout): 2 each, or 1 without `with_views`.
    buckets: sorted point capacities.
    grid_size: metres, for `grid`.
    min_view_points: views left with fewer points raise (a crop gone wrong, a broken scene).
    stage_capacities_fn: (n_points, counts=None) -> per-stage capacities (the model's
      `configs.stage_capacities`), or None.
    with_views: False for single-view probing batches (no V axis, no cross_index).
    max_boxes: box slots per view when views carry "boxes" (detection, `data.with_boxes`).

  Returns:
    dict of numpy arrays, docs/architecture.md batch layout, plus `num_cropped` i32 [B]
    (points removed by crops per scene), `bad_scenes` i32 [B] (unreadable scenes skipped
    before each row's, from the views' optional "bad_scenes"), `index` (full-scan ids, -1 on
    padding) and, with `stage_capacities_fn`, `stage_capacities` i32 [S] (pass it to the
    model as a static tuple) and `stage_point_counts` i32 [S], the real points per stage
    (max over views). Views with "boxes" add `pad_boxes`' box_* arrays [B(, V), max_boxes,
    ...] and boxes_dropped i32 [B] (boxes left out by crops or beyond max_boxes).
  """
  if with_views and any(len(example) != 2 for example in examples):
    raise ValueError("collate: pretraining examples must hold exactly 2 (global) views.")
  num_cropped = np.zeros(len(examples), np.int32)
  cropped = []
  for b, example in enumerate(examples):
    row = []
    for view in example:
      view, removed = crop_view(view, buckets[-1])
      num_cropped[b] += removed
      row.append(view)
    cropped.append(row)
  capacity = choose_bucket(max(v["coord"].shape[0] for row in cropped for v in row), buckets)
  # Each view's grid and per-stage counts, computed once: they pick the capacities and
  # tell which views (under fixed capacities only) still need a crop.
  view_grids = [[view_grid(view["coord"], grid_size) for view in row] for row in cropped]
  stage_capacities = None
  if stage_capacities_fn is not None:
    num_stages = len(stage_capacities_fn(capacity))
    view_counts = [[stage_point_counts(grid, num_stages) for grid in row] for row in view_grids]
    stage_counts = np.max([c for row in view_counts for c in row], axis=0)
    stage_capacities = list(stage_capacities_fn(capacity, stage_counts))

  batch = {key: [] for key in list(_DTYPES) + ["view_linear", "view_translation"]}
  for b, row in enumerate(cropped):
    grids = []
    for v, view in enumerate(row):
      grid = view_grids[b][v]
      if stage_capacities is not None and np.any(view_counts[b][v] > stage_capacities):
        view, grid, removed = fit_view(view, grid_size, stage_capacities)
        num_cropped[b] += removed
        row[v] = view
      if view["coord"].shape[0] < min_view_points:
        raise ValueError(
            f"{view.get('source', f'batch row {b}')} view {v}: {view['coord'].shape[0]} "
            "points after crops, fewer than "
            f"data config min_view_points={min_view_points}; raise buckets or the model's "
            "stage capacities, or check the scene.")
      grids.append(grid)
    for v, view in enumerate(row):
      n = view["coord"].shape[0]
      if with_views:
        batch["cross_index"].append(
            _pad(views_lib.cross_index(view["origin_index"], row[1 - v]["origin_index"]),
                 capacity, "cross_index"))
      batch["grid"].append(_pad(grids[v], capacity, "grid"))
      batch["valid"].append(_pad(np.ones(n, bool), capacity, "valid"))
      for key in _PER_POINT:
        batch[key].append(_pad(view[key], capacity, key))
      batch["view_linear"].append(view["view_linear"].astype(np.float32))
      batch["view_translation"].append(view["view_translation"].astype(np.float32))
  if not with_views:
    del batch["cross_index"]
  num_views = len(cropped[0]) if with_views else 1
  out = {key: np.stack(values).reshape((len(examples), num_views) + values[0].shape)
         for key, values in batch.items()}
  if cropped[0][0].get("boxes") is not None:
    boxes = [pad_boxes(view["boxes"], max_boxes) for row in cropped for view in row]
    for key in boxes[0]:
      out[key] = np.stack([b[key] for b in boxes]).reshape(
          (len(examples), num_views) + boxes[0][key].shape)
    out["boxes_dropped"] = np.array(
        [sum(view.get("boxes_dropped", 0) + max(len(view["boxes"]) - max_boxes, 0)
             for view in row) for row in cropped], np.int32)
  if not with_views:
    out = {key: value[:, 0] if key != "boxes_dropped" else value for key, value in out.items()}
  out["num_cropped"] = num_cropped
  if stage_capacities is not None:
    out["stage_capacities"] = np.asarray(stage_capacities, np.int32)
    out["stage_point_counts"] = np.asarray(stage_counts, np.int32)
  # Unreadable scenes the loader replaced before each row's scene (`loader.SkipBadScenes`).
  out["bad_scenes"] = np.array([example[0].get("bad_scenes", 0) for example in examples],
                               np.int32)
  if num_cropped.any():
    logging.getLogger(__name__).info("cropped %d points from %d scenes to fit capacity %d",
                                     int(num_cropped.sum()), int((num_cropped > 0).sum()),
                                     capacity)
  return out
