"""Per-scene examples: grid-sampled origin points, global views, block masking, correspondences.

A view is a dict of unpadded numpy arrays (n = its point count):

  coord f32 [n, 3]         view coordinates (augmented frame), metres
  feat f32 [n, C]          model input features (`feat_keys`)
  origin_coord f32 [n, 3]  un-augmented coordinates (scene frame, centred), metres
  origin_index i64 [n]     index in the grid-sampled ("origin") scene
  index i64 [n]            index in the full scan
  visible bool [n]         not masked (what the student sees)
  segment, instance i32 [n]  labels, -1 where absent
  view_linear f64 [3, 3], view_translation f64 [3]: x_view ~ A @ origin_coord + t

With `data.with_boxes` (detection), a view also holds

  boxes                    `boxes.Boxes` in the view frame: the scene's boxes whose centre
                           lies in the view's crop ball, moved by the view's augmentation
  boxes_dropped int        boxes left out because their centre is outside the crop

`batching` crops, pairs (cross_index) and pads views into the static batch layout.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pointins_jax.data import transforms
from pointins_jax.data.scene import Scene, SceneError


def block_mask(coord: np.ndarray, mask_size: float, mask_ratio: float,
               rng: np.random.Generator) -> np.ndarray:
  """Sonata block masking (ptv3_ssl_spec.md §4.3) of one view: bool [N], True = masked.

  Cells floor((coord - min) / mask_size) are permuted at random and the first
  int(num_cells * mask_ratio) of them are masked.
  """
  _, cell = np.unique(transforms.pack_cells(transforms.cell_index(coord, mask_size)),
                      return_inverse=True)
  num_cells = int(cell.max()) + 1 if cell.size else 0
  masked_cells = rng.permutation(num_cells)[:int(num_cells * mask_ratio)]
  is_masked = np.zeros(num_cells, bool)
  is_masked[masked_cells] = True
  return is_masked[cell]


def cross_index(index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
  """For each entry of `index_a`, its position in `index_b` (unique ids), or -1: int64."""
  order = np.argsort(index_b, kind="stable")
  sorted_b = index_b[order]
  pos = np.clip(np.searchsorted(sorted_b, index_a), 0, max(len(sorted_b) - 1, 0))
  found = sorted_b[pos] == index_a if len(sorted_b) else np.zeros(len(index_a), bool)
  return np.where(found, order[pos] if len(sorted_b) else -1, -1)


def global_view_crops(coord: np.ndarray, config, rng: np.random.Generator):
  """Two global crops (Sonata): the `size` nearest points to a random centre.

  size = int(U(global_view_scale) * min(max_view_points, N)); the second centre is a
  random point of the first view. Returns two (sorted int64 index array into `coord`,
  f64 [3] crop centre) pairs.
  """
  n = coord.shape[0]
  views = []
  candidates = np.arange(n)
  for _ in range(2):
    center = coord[rng.choice(candidates)]
    size = int(rng.uniform(*config.global_view_scale) * min(config.max_view_points, n))
    views.append((transforms.nearest_crop(coord, center, max(size, 1)),
                  center.astype(np.float64)))
    candidates = views[0][0]
  return views


def global_view_indices(coord: np.ndarray, config, rng: np.random.Generator):
  """The index arrays of `global_view_crops` (two sorted int64 arrays into `coord`)."""
  return [index for index, _ in global_view_crops(coord, config, rng)]


def _labels(values, n):
  return np.full(n, -1, np.int32) if values is None else values.astype(np.int32)


FEATURE_WIDTHS = dict(coord=3, color=3, normal=3, strength=1)  # feat columns per feat_keys entry


def _features(coord: np.ndarray, scene: Scene, color, normal, feat_keys) -> np.ndarray:
  """Concatenates `feat_keys` in order: f32 [n, C] (colour divided by 255)."""
  sources = dict(coord=coord, normal=normal,
                 color=None if color is None else color / 255.0,
                 strength=None if scene.strength is None else scene.strength[:, None])
  parts = []
  for key in feat_keys:
    if sources[key] is None:
      raise SceneError(f"{scene.source} (scene {scene.name!r}): data config feat_keys includes "
                       f"{key!r} but the scene has no {key}; drop it from feat_keys.")
    parts.append(sources[key])
  return np.concatenate(parts, axis=1).astype(np.float32)


def _view_boxes(origin: Scene, index: np.ndarray, crop_center: Optional[np.ndarray]):
  """The origin's boxes a view keeps: (boxes, number dropped). Without a crop centre the
  view spans the scene (no box dropped); with one, those centred in the crop's ball."""
  if origin.boxes is None:
    raise SceneError(f"{origin.source} (scene {origin.name!r}): data.with_boxes is set but "
                     "the scene has no boxes (no box_*.npy; see experiments.prepare_data).")
  if crop_center is None:
    return origin.boxes, 0
  radius = transforms.crop_radius(origin.coord[index], crop_center)
  return transforms.boxes_in_ball(origin.boxes, crop_center, radius)


def make_view(origin: Scene, index: np.ndarray, full_index: np.ndarray, color, config,
              rng: Optional[np.random.Generator], *, augment: bool, mask: bool,
              crop_center: Optional[np.ndarray] = None) -> dict:
  """One view of the origin scene restricted to `index` (see the module docstring).

  `rng` may be None when neither `augment` nor `mask` is set. `crop_center` (f64 [3], the
  origin frame): the centre of the sphere crop that chose `index`, or None when the view
  is not a spatial crop; it decides which boxes the view keeps (`data.with_boxes`).
  """
  part = origin.subset(index)
  boxes, boxes_dropped = None, 0
  if config.get("with_boxes", False):
    boxes, boxes_dropped = _view_boxes(origin, index, crop_center)
  if augment:
    geometry = transforms.augment_geometry(part.coord, part.normal, config.augment, rng,
                                           boxes, f"{origin.source} (scene {origin.name!r})")
  else:
    geometry = transforms.GeometricAugmenter(part.coord, part.normal, boxes)
    geometry.center_shift(apply_z=True)
  coord = geometry.coord.astype(np.float32)
  view_color = None if color is None else color[index]
  normal = None if geometry.normal is None else geometry.normal.astype(np.float32)
  visible = (~block_mask(coord, config.mask_size, config.mask_ratio, rng) if mask
             else np.ones(len(index), bool))
  view = dict(
      coord=coord,
      feat=_features(coord, part, view_color, normal, config.feat_keys),
      origin_coord=part.coord,
      origin_index=index.astype(np.int64),
      index=full_index[index].astype(np.int64),
      visible=visible,
      segment=_labels(part.segment, len(index)),
      instance=_labels(part.instance, len(index)),
      view_linear=geometry.record.linear,
      view_translation=geometry.record.translation)
  if boxes is not None:
    view.update(boxes=geometry.boxes, boxes_dropped=boxes_dropped)
  return view


def origin_scene(scene: Scene, grid_size: float, rng: np.random.Generator):
  """Train-mode grid sample, centred (xy bbox centre, z min at 0): (Scene, full-scan ids)."""
  index, _ = transforms.grid_sample_train(scene.coord, grid_size, rng)
  return centred(scene.subset(index)), index


def centred(scene: Scene) -> Scene:
  """The scene moved so that its xy bbox centre is at 0 and its lowest point at z = 0."""
  shift = transforms.center_shift_offset(scene.coord).astype(np.float32)
  boxes = (None if scene.boxes is None
           else transforms.affine_boxes(scene.boxes, np.eye(3), -shift.astype(np.float64)))
  return Scene(coord=scene.coord - shift, color=scene.color, normal=scene.normal,
               strength=scene.strength, segment=scene.segment, instance=scene.instance,
               name=scene.name, source=scene.source, boxes=boxes)


def _shared_color(origin: Scene, config, rng, augment: bool):
  if origin.color is None or not augment:
    return origin.color
  return transforms.augment_color(origin.color, config.augment, rng)


def pretrain_views(scene: Scene, config, rng: np.random.Generator) -> list[dict]:
  """The two masked, augmented global views of one scene (Sonata §4.1 + §4.3)."""
  origin, full_index = origin_scene(scene, config.grid_size, rng)
  augment = bool(config.augment.enabled)
  color = _shared_color(origin, config, rng, augment)  # shared by both global views
  return [make_view(origin, index, full_index, color, config, rng, augment=augment, mask=True,
                    crop_center=center)
          for index, center in global_view_crops(origin.coord, config, rng)]


def probe_view(scene: Scene, config, rng: np.random.Generator, *, augment: bool) -> dict:
  """One unmasked view of the grid-sampled scene (probing / fine-tuning).

  A scene larger than the largest bucket is cut to it around a random point (Pointcept's
  SphereCrop(mode='random')) and the crop is centred again: cropping later, in
  `batching.collate`, would keep the bbox centre of every room, so walls and corners would
  never be trained on while evaluation (`recentre`d chunks) scores them.
  """
  origin, full_index = origin_scene(scene, config.grid_size, rng)
  color = _shared_color(origin, config, rng, augment)
  index, center = np.arange(origin.num_points), None
  max_points = int(config.buckets[-1])
  if origin.num_points > max_points:
    center = origin.coord[rng.integers(origin.num_points)]
    index = transforms.nearest_crop(origin.coord, center, max_points)
  return make_view(origin, index, full_index, color, config, rng, augment=augment, mask=False,
                   crop_center=None if center is None else center.astype(np.float64))


def recentre(view: dict, feat_keys) -> dict:
  """The un-augmented view moved to its own CenterShift(apply_z) frame, features too.

  Evaluation cuts test fragments into chunks that fit the model; each chunk is centred as a
  training crop is (see `probe_view`), so the coordinate features keep their training
  range. A translation changes neither offsets nor neighbourhoods.
  """
  shift = transforms.center_shift_offset(view["coord"].astype(np.float64))
  out = dict(view, coord=(view["coord"] - shift).astype(np.float32),
             view_translation=view["view_translation"] - shift)
  if view.get("boxes") is not None:  # boxes live in the view frame: they move too
    out["boxes"] = transforms.affine_boxes(view["boxes"], np.eye(3), -shift)
  start = 0
  for key in feat_keys:
    if key == "coord":
      out["feat"] = view["feat"].copy()
      out["feat"][:, start:start + 3] = out["coord"]
    start += FEATURE_WIDTHS[key]
  return out


def fragment_views(scene: Scene, config) -> list[dict]:
  """Test-mode fragments covering every point of the scan, un-augmented (centred only)."""
  origin = centred(scene)
  return [make_view(origin, index, np.arange(scene.num_points), origin.color, config, None,
                    augment=False, mask=False)
          for index in transforms.grid_sample_fragments(origin.coord, config.grid_size)]
