"""Data pipeline configuration (one ConfigDict; values from Sonata §4.1 and PointINS Table 9)."""
from __future__ import annotations

import ml_collections

KINDS = ("indoor", "outdoor")


def data_config(kind: str = "indoor") -> ml_collections.ConfigDict:
  """Every field the loader reads, for `kind` 'indoor' (ScanNet-like) or 'outdoor' (LiDAR)."""
  if kind not in KINDS:
    raise ValueError(f"data_config: kind={kind!r}; use one of {KINDS}.")
  indoor = kind == "indoor"
  c = ml_collections.ConfigDict()
  c.kind = kind
  # Source: Pointcept folders under `root` (+ `extra_roots` for multi-dataset pretraining), or
  # with root='' and a synthetic dataset, `num_scenes` scenes generated in memory.
  c.dataset = "synthetic-indoor" if indoor else "synthetic-outdoor"
  c.root = ""
  c.extra_roots = ()
  c.split = "train"
  c.eval_split = "val"
  c.num_scenes = 64  # synthetic in-memory source only
  c.synthetic_small = False  # small synthetic scenes (tests, CPU demos)
  # synthetic-indoor: furniture kinds to place (synthetic_indoor.OBJECTS names); () = all.
  c.synthetic_kinds = ()
  c.label_fraction = 1.0  # probing: fraction of labelled training scenes (Table 7)
  # A training scene the reader refuses: 'skip' (replace by the next, name it, count it in
  # metrics.jsonl `bad_scenes`) or 'raise' (stop). Evaluation always raises.
  c.bad_scenes = "skip"

  c.grid_size = 0.02 if indoor else 0.05  # metres
  # Point capacities of a padded view (sorted); a batch takes the smallest that fits.
  c.buckets = (8192, 16384, 32768, 65536) if indoor else (16384, 32768, 65536)
  c.batch_size = 8
  c.num_workers = 0  # grain worker processes (0 = in the main process)
  c.worker_buffer_size = 2  # batches each worker prepares ahead
  # Threads reading / transforming records (per process) and batches prefetched by them;
  # bounded because a full-size batch is tens of MB (grain's default buffer is 500).
  c.num_threads = 2
  c.prefetch_buffer_size = 4
  c.shuffle = True
  c.seed = 0

  # Views (Sonata MultiViewGenerator): a global view is the `size` nearest points to a
  # random centre, size = U(global_view_scale) * min(max_view_points, N).
  c.max_view_points = 65536
  c.global_view_scale = (0.4, 1.0)
  c.num_local_views = 0  # the batch layout carries the two global views only
  c.min_view_points = 64  # fewer points after crops = a broken scene; raise

  # Block masking of the student's views (Table 9: 0.4 m indoor, 1.0 m outdoor, ratio 0.7).
  c.mask_size = 0.4 if indoor else 1.0
  c.mask_ratio = 0.7

  c.augment = ml_collections.ConfigDict(dict(
      enabled=True,
      scale=(0.9, 1.1),
      rotate_z=1.0, rotate_z_p=0.8,  # angles in units of pi: U(-1, 1) * pi
      rotate_xy=1.0 / 64, rotate_xy_p=0.8,
      flip_p=0.5,
      jitter_sigma=0.005, jitter_clip=0.02,  # metres
      # (granularity, magnitude) pairs in metres; outdoor sweeps get none (Pointcept outdoor).
      elastic=((0.2, 0.4), (0.8, 1.6)) if indoor else (),
      elastic_p=0.95,
      auto_contrast_p=0.2,
      color_jitter=(0.4, 0.4, 0.2, 0.02), color_jitter_p=0.8,  # brightness, contrast, sat., hue
      chromatic_translation_p=0.95, chromatic_translation_ratio=0.05))

  # Detection: views carry the scene's boxes (views.py), moved with the points; needs
  # scenes with boxes and augment.rotate_xy_p = 0 (upright boxes cannot tilt).
  c.with_boxes = False

  # Model input: indoor [coord, color/255, normal] (9 ch), outdoor [coord, strength] (4 ch).
  c.feat_keys = ("coord", "color", "normal") if indoor else ("coord", "strength")
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field for values that cannot work."""
  def fail(field, why):
    raise ValueError(f"data config: {field}={config.get(field)!r} {why}")
  buckets = tuple(config.buckets)
  # A command-line string (--config.data.buckets=abc) arrives as a tuple of characters.
  if (not buckets or not all(isinstance(b, int) and not isinstance(b, bool) for b in buckets)
      or any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets))):
    fail("buckets", "must be a non-empty, strictly increasing tuple of positive integer "
         "capacities, e.g. --config.data.buckets='(8192, 16384)'.")
  if not 0.0 <= config.mask_ratio < 1.0:
    fail("mask_ratio", "must lie in [0, 1).")
  if config.mask_size <= 0:
    fail("mask_size", "must be positive (metres).")
  if config.grid_size <= 0:
    fail("grid_size", "must be positive (metres).")
  lo, hi = config.global_view_scale
  if not 0.0 < lo <= hi <= 1.0:
    fail("global_view_scale", "must be (lo, hi) with 0 < lo <= hi <= 1.")
  if config.num_local_views:
    fail("num_local_views", "must be 0: the batch layout (docs/architecture.md) holds the two "
         "global views only.")
  if config.min_view_points <= 0 or config.min_view_points > buckets[0]:
    fail("min_view_points", f"must lie in [1, buckets[0]={buckets[0]}].")
  if config.batch_size <= 0:
    fail("batch_size", "must be positive.")
  if not 0.0 < config.label_fraction <= 1.0:
    fail("label_fraction", "must lie in (0, 1].")
  if config.get("bad_scenes", "skip") not in ("skip", "raise"):
    fail("bad_scenes", "must be 'skip' or 'raise'.")
  if config.get("with_boxes", False) and config.augment.enabled and config.augment.rotate_xy_p:
    raise ValueError(f"data config: with_boxes=True needs augment.rotate_xy_p=0 (got "
                     f"{config.augment.rotate_xy_p}): upright (yaw-only) boxes cannot follow "
                     "rotations about x/y.")
  if config.get("synthetic_kinds", ()):
    if config.dataset != "synthetic-indoor":
      fail("synthetic_kinds", "applies to dataset synthetic-indoor only; set it to ().")
    from pointins_jax.data import synthetic_indoor  # pylint: disable=import-outside-toplevel
    synthetic_indoor.object_kinds(tuple(config.synthetic_kinds))  # names the unknown kinds
  known = {"coord", "color", "normal", "strength"}
  if not config.feat_keys or set(config.feat_keys) - known:
    fail("feat_keys", f"must be a non-empty subset of {sorted(known)}.")
