"""grain pipelines: scene sources, per-record seeded views, bucketed batches, resumable iterators.

  MapDataset.source(scenes)[shard::count].seed(seed).shuffle().repeat()
      .random_map(views).batch(batch_size, batch_fn=collate) -> to_iter_dataset [-> mp_prefetch]

Bad scenes (README "Faults and bad input"): with `data.bad_scenes='skip'` (the default) the
training iterators wrap their source in `SkipBadScenes`: a scene its reader refuses
(`SceneError`: NaN coordinates, mismatched files, labels out of range, fewer points than
`min_view_points`) is replaced by the next readable scene, named once per process in a
WARNING line, and counted in the batch's `bad_scenes`; `'raise'` stops at the first one.

The random map's generator is derived by grain from (seed, position in the shuffled,
repeated stream), so a record gets the same views whatever the worker count, and batching on
the MapDataset (before the workers) fixes batch composition and order. The iterator's
`get_state()` / `set_state()` round-trip exactly (the state is the stream position).
"""
from __future__ import annotations

import collections
import copy
import functools
import logging
import math
import threading
from typing import Callable, Iterator, Optional, Sequence

from absl import flags
import grain
import numpy as np

from pointins_jax.data import batching
from pointins_jax.data import config as config_lib
from pointins_jax.data import views as views_lib
from pointins_jax.data.scene import Scene, SceneError

# Synthetic scenes of the evaluation split use seeds from here on, disjoint from training.
_EVAL_SEED_OFFSET = 1_000_000
# Rays per beam of a small synthetic sweep (32 beams x 300 = ~7k points, for CPU demos).
_SMALL_AZIMUTH_STEPS = 300
# Bytes of generated synthetic scenes each source keeps: a small outdoor sweep takes ~0.4 s
# to ray-cast, as long as a CPU demo's train step, and every step would redo it.
_SYNTHETIC_CACHE_BYTES = 256 << 20


class SyntheticSource:
  """`num_scenes` synthetic scenes generated in memory from their index (no disk step)."""

  def __init__(self, dataset: str, num_scenes: int, *, small: bool, seed_offset: int = 0,
               kinds: Sequence[str] = ()):
    if dataset not in ("synthetic-indoor", "synthetic-outdoor"):
      raise ValueError(f"data config dataset={dataset!r}: with root='' only synthetic-indoor / "
                       "synthetic-outdoor can be generated in memory; set data.root.")
    if num_scenes <= 0:
      raise ValueError(f"data config num_scenes={num_scenes} must be positive.")
    self._dataset, self._num_scenes = dataset, num_scenes
    self._small, self._seed_offset = small, seed_offset
    self._kinds = tuple(kinds)  # synthetic-indoor furniture kinds (() = all)
    self._cache, self._cache_bytes = collections.OrderedDict(), 0
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._num_scenes

  def __getstate__(self):  # grain workers pickle the source: each starts with an empty cache
    state = dict(self.__dict__, _cache=collections.OrderedDict(), _cache_bytes=0)
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state, _lock=threading.Lock())

  def __getitem__(self, index: int) -> Scene:
    """The scene of seed `seed_offset + index` (generated once, then a copy from an LRU
    cache of `_SYNTHETIC_CACHE_BYTES`; copies, so transforms can never alter the cache)."""
    seed = self._seed_offset + int(index)
    with self._lock:
      if seed in self._cache:
        self._cache.move_to_end(seed)
        return _copy_scene(self._cache[seed])
    scene = self._generate(seed)
    size = sum(a.nbytes for a in vars(scene).values() if isinstance(a, np.ndarray))
    with self._lock:
      if seed not in self._cache and size <= _SYNTHETIC_CACHE_BYTES:
        self._cache[seed], self._cache_bytes = scene, self._cache_bytes + size
        while self._cache_bytes > _SYNTHETIC_CACHE_BYTES:
          _, old = self._cache.popitem(last=False)
          self._cache_bytes -= sum(a.nbytes for a in vars(old).values()
                                   if isinstance(a, np.ndarray))
    return _copy_scene(scene)

  def _generate(self, seed: int) -> Scene:
    if self._dataset == "synthetic-indoor":
      from pointins_jax.data import synthetic_indoor  # pylint: disable=import-outside-toplevel
      return synthetic_indoor.generate_room(seed, small=self._small, kinds=self._kinds)
    from pointins_jax.data import synthetic_outdoor  # pylint: disable=import-outside-toplevel
    return synthetic_outdoor.generate_sweep(
        seed, azimuth_steps=_SMALL_AZIMUTH_STEPS if self._small else None)


def _copy_scene(scene: Scene) -> Scene:
  """A scene whose arrays (boxes included) are copies of `scene`'s."""
  return copy.deepcopy(scene)


class FolderSource:
  """Pointcept scene folders: `list_scenes(root, split)` over every root, read on access."""

  def __init__(self, roots: Sequence[str], split: str, dataset: Optional[str]):
    from pointins_jax.data import pointcept_io  # pylint: disable=import-outside-toplevel
    self._read = functools.partial(pointcept_io.read_scene, dataset=dataset)
    self._folders = [folder for root in roots for folder in pointcept_io.list_scenes(root, split)]

  def __len__(self) -> int:
    return len(self._folders)

  def __getitem__(self, index: int) -> Scene:
    return self._read(self._folders[index])


def scene_source(data_config, split: Optional[str] = None):
  """The random-access scene source a config names (folders, or synthetic in memory)."""
  split = data_config.split if split is None else split
  if data_config.root:
    roots = [data_config.root, *data_config.get("extra_roots", ())]
    return FolderSource(roots, split, data_config.dataset or None)
  offset = 0 if split == data_config.split else _EVAL_SEED_OFFSET
  return SyntheticSource(data_config.dataset, data_config.num_scenes,
                         small=data_config.synthetic_small, seed_offset=offset,
                         kinds=tuple(data_config.get("synthetic_kinds", ())))


class SkipBadScenes:
  """A scene source that replaces unreadable scenes by the next readable one.

  `source[i]` -> (scene, number of unreadable scenes skipped to reach it). The replacement
  is deterministic (the next index, wrapping), so batches and resumes stay reproducible.
  Each bad scene is reported once per process, in one WARNING line naming its file and why.
  """

  def __init__(self, source, min_points: int = 1):
    self._source, self._min_points = source, int(min_points)
    self._reported: set[str] = set()

  def __len__(self) -> int:
    return len(self._source)

  def read(self, index: int) -> Scene:
    """`source[index]`, refusing scenes with fewer than `min_points` points (SceneError)."""
    scene = self._source[index]
    if scene.num_points < self._min_points:
      raise SceneError(f"{scene.source} (scene {scene.name!r}): {scene.num_points} points, "
                       f"fewer than data config min_view_points={self._min_points}; remove "
                       "the scene or lower min_view_points.")
    return scene

  def __getitem__(self, index: int) -> tuple[Scene, int]:
    count, first = len(self._source), None
    for skipped in range(count):
      try:
        return self.read((index + skipped) % count), skipped
      except SceneError as error:
        first = first or error
        if str(error) not in self._reported:
          self._reported.add(str(error))
          logging.getLogger(__name__).warning(
              "bad scene skipped (data.bad_scenes='skip'): %s", error)
    raise SceneError(f"every one of the {count} scenes is unreadable, e.g. {first}")


class _RaiseBadScenes(SkipBadScenes):
  """`SkipBadScenes`' record layout without skipping: the first bad scene raises."""

  def __getitem__(self, index: int) -> tuple[Scene, int]:
    return self.read(index), 0


def _guarded(source, data_config):
  """`source` wrapped per `data_config.bad_scenes`; records become (scene, skipped)."""
  policy = data_config.get("bad_scenes", "skip")
  wrapper = SkipBadScenes if policy == "skip" else _RaiseBadScenes
  return wrapper(source, data_config.min_view_points)


class DroppedData:
  """Sums a batch's dropped-data counters (`num_cropped`, `bad_scenes`) between log lines."""

  KEYS = ("num_cropped", "bad_scenes")

  def __init__(self):
    self.totals = dict.fromkeys(self.KEYS, 0)

  def add(self, host_batch: dict) -> None:
    """Takes the counters out of `host_batch` (they are not model inputs) and adds them."""
    for key in self.KEYS:
      self.totals[key] += int(np.sum(host_batch.pop(key, 0)))

  def pop(self) -> dict:
    """The totals since the last pop, reset to 0."""
    totals, self.totals = self.totals, dict.fromkeys(self.KEYS, 0)
    return totals


def num_scenes(data_config, split: Optional[str] = None) -> int:
  return len(scene_source(data_config, split))


class _PretrainViews(grain.transforms.RandomMap):

  def __init__(self, data_config):
    self._config = data_config

  def random_map(self, record: tuple[Scene, int], rng: np.random.Generator) -> list[dict]:
    scene, skipped = record
    return _tag(views_lib.pretrain_views(scene, self._config, rng), scene, skipped)


class _ProbeView(grain.transforms.RandomMap):

  def __init__(self, data_config):
    self._config = data_config

  def random_map(self, record: tuple[Scene, int], rng: np.random.Generator) -> list[dict]:
    scene, skipped = record
    return _tag([views_lib.probe_view(scene, self._config, rng,
                                      augment=self._config.augment.enabled)], scene, skipped)


def _tag(views: list[dict], scene: Scene, skipped: int) -> list[dict]:
  """Adds the scene's file (for errors) and the bad scenes skipped before it (`batching`)."""
  for view in views:
    view["source"] = scene.source
  views[0]["bad_scenes"] = skipped
  return views


def _iterator(data_config, source, view_map, *, seed: int, batch_size: Optional[int],
              stage_capacities_fn, shard_index: int, shard_count: int, with_views: bool):
  config_lib.validate(data_config)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must lie in [0, shard_count={shard_count}).")
  batch_size = data_config.batch_size if batch_size is None else batch_size
  dataset = grain.MapDataset.source(_guarded(source, data_config))[shard_index::shard_count]
  if len(dataset) == 0:
    raise ValueError(f"data config root={data_config.root!r}: shard {shard_index} of "
                     f"{shard_count} holds no scenes; use fewer shards or more scenes.")
  dataset = dataset.seed(seed)
  if data_config.shuffle:
    dataset = dataset.shuffle()
  collate = functools.partial(
      batching.collate, buckets=tuple(data_config.buckets), grid_size=data_config.grid_size,
      min_view_points=data_config.min_view_points, stage_capacities_fn=stage_capacities_fn,
      with_views=with_views, max_boxes=data_config.get("max_boxes", 64))
  dataset = (dataset.repeat().random_map(view_map(data_config))
             .batch(batch_size, drop_remainder=True, batch_fn=collate))
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=data_config.num_threads,
      prefetch_buffer_size=data_config.prefetch_buffer_size))
  if data_config.num_workers > 0:
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (as under absl.app.run)
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.num_workers,
        per_worker_buffer_size=data_config.worker_buffer_size))
  return iter(iter_dataset)


def make_pretrain_iterator(data_config, *, seed: int, batch_size: Optional[int] = None,
                           stage_capacities_fn: Optional[Callable[[int], Sequence[int]]] = None,
                           shard_index: int = 0, shard_count: int = 1) -> Iterator[dict]:
  """Endless iterator of two-view pretraining batches (docs/architecture.md layout).

  Args:
    data_config: `config.data_config(...)`.
    seed: shuffling and augmentation seed; same seed => same batches (any worker count).
    batch_size: scenes per batch on this process (default data_config.batch_size).
    stage_capacities_fn: n_points -> the model's per-stage capacities; views are cropped
      (counted in `num_cropped`) so no stage overflows. Must pickle when num_workers > 0.
    shard_index, shard_count: this process's slice of the scenes.

  Returns:
    a grain DatasetIterator (`next`, `get_state()`, `set_state(state)`).
  """
  return _iterator(data_config, scene_source(data_config), _PretrainViews, seed=seed,
                   batch_size=batch_size, stage_capacities_fn=stage_capacities_fn,
                   shard_index=shard_index, shard_count=shard_count, with_views=True)


class SubsetSource:
  """The scenes of `source` at `indices`."""

  def __init__(self, source, indices: Sequence[int]):
    self._source, self._indices = source, [int(i) for i in indices]

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> Scene:
    return self._source[self._indices[index]]


def labelled_subset(source, fraction: float, seed: int) -> SubsetSource:
  """ceil(fraction * n) scenes drawn by a seeded permutation (Table 7 label fractions)."""
  count = max(1, math.ceil(fraction * len(source)))
  return SubsetSource(source, np.sort(np.random.default_rng(seed).permutation(len(source))[:count]))


def make_probe_iterator(data_config, *, seed: int, batch_size: Optional[int] = None,
                        stage_capacities_fn: Optional[Callable[[int], Sequence[int]]] = None,
                        shard_index: int = 0, shard_count: int = 1) -> Iterator[dict]:
  """Endless iterator of labelled single-view batches (probing / fine-tuning).

  Same layout without the V axis, plus `index` (full-scan point ids); augmented when
  data_config.augment.enabled, never masked. Uses data_config.label_fraction of the scenes.
  """
  source = labelled_subset(scene_source(data_config), data_config.label_fraction,
                           data_config.seed)
  return _iterator(data_config, source, _ProbeView, seed=seed, batch_size=batch_size,
                   stage_capacities_fn=stage_capacities_fn, shard_index=shard_index,
                   shard_count=shard_count, with_views=False)


def iterate_eval_fragments(scene: Scene, data_config, *, batch_size: Optional[int] = None,
                           stage_capacities_fn=None,
                           max_fragments: Optional[int] = None) -> Iterator[dict]:
  """Test-mode batches whose valid points cover every point of `scene`.

  Each test-mode grid fragment (one point per cell) is cut into spatial chunks small enough
  for the largest bucket and the model's stage capacities, so no point is cropped away:
  the valid `index` entries of one fragment's batches hold every scan point exactly once.
  Batches have `batch_size` rows (default data_config.batch_size; missing rows are padding)
  and the largest bucket's capacity; with `stage_capacities_fn` they carry data-following
  `stage_capacities` (a few shapes to compile, from the capacity ladder). `max_fragments`:
  only the first fragments (detection scores one test-mode grid sample, not every point).
  """
  config_lib.validate(data_config)
  batch_size = data_config.batch_size if batch_size is None else batch_size
  fragments = views_lib.fragment_views(scene, data_config)[:max_fragments]
  chunks = [chunk for fragment in fragments
            for chunk in _chunks(fragment, data_config, stage_capacities_fn)]
  for start in range(0, len(chunks), batch_size):
    rows = [[chunk] for chunk in chunks[start:start + batch_size]]
    # Chunks were fitted to the largest bucket's stage capacities, so pad to that bucket.
    batch = batching.collate(rows, buckets=(data_config.buckets[-1],),
                             grid_size=data_config.grid_size, with_views=False,
                             stage_capacities_fn=stage_capacities_fn)
    yield _pad_rows(batch, batch_size)


def _chunks(view: dict, data_config, stage_capacities_fn) -> list[dict]:
  """Splits a view into sphere-crop pieces that each fit without further cropping."""
  capacity = data_config.buckets[-1]
  stage_capacities = None if stage_capacities_fn is None else stage_capacities_fn(capacity)
  pieces, rest = [], view
  while rest["coord"].shape[0]:
    order = batching.center_order(rest["coord"].astype(np.float64))
    take = np.zeros(len(order), bool)
    take[order[:capacity]] = True
    piece = batching.subset_view(rest, take)
    if stage_capacities is not None:
      piece, _, removed = batching.fit_view(piece, data_config.grid_size, stage_capacities)
      if removed:  # return the points the fit dropped to `rest`
        take[np.flatnonzero(take)[~np.isin(rest["index"][take], piece["index"])]] = False
    pieces.append(views_lib.recentre(piece, data_config.feat_keys))
    rest = batching.subset_view(rest, ~take)
  return pieces


def _pad_rows(batch: dict, batch_size: int) -> dict:
  """Appends all-padding rows up to `batch_size` so every eval batch has one shape."""
  missing = batch_size - batch["valid"].shape[0]
  if missing == 0:
    return batch
  out = {}
  for key, value in batch.items():
    if key in ("stage_capacities", "stage_point_counts"):  # per batch, not per row
      out[key] = value
      continue
    fill = batching.PAD_VALUES.get(key, 0)
    if key == "view_linear":
      pad = np.broadcast_to(np.eye(3, dtype=value.dtype), (missing, 3, 3))
    else:
      pad = np.full((missing,) + value.shape[1:], fill, value.dtype)
    out[key] = np.concatenate([value, pad])
  return out
