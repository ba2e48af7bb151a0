"""Point Transformer V3 model configurations (ptv3_ssl_spec.md §3.7).

Variants:
  tiny       CPU tests: 5 stages of widths (16, 32, 64, 64, 64), one block each, patch 128.
  base       PointINS pretraining default: decoder-free encoder, m2 conventions (Linear stem,
             LayerNorm everywhere), PTv3-base widths (32, 64, 128, 256, 512).
  large      the Sonata encoder (m2, in 9): depths (3, 3, 3, 12, 3), widths up to 512;
             108.46M parameters.
  base_unet  PTv3-base U-Net (m1: SubMConv k5 stem, BatchNorm in stem and (un)pooling,
             in 6); 46.17M parameters.
  large_unet the Sonata encoder with the probing/fine-tuning decoder (124.79M).

Static capacities: every stage s holds at most `stage_capacities(config, N)[s]` points per
scene. Without counts they come from `stage_capacity_fractions` (fractions of the input
capacity N: fixed upper bounds). Given the batch's real per-stage point counts (computed on
the host from the grid, `stage_point_counts`), each stage instead takes the smallest value of
a short ladder (`capacity_steps_per_octave` sizes per power of two) that holds them, so dense
ops and attention scale with real points rather than with the fixed bounds, and the number of
distinct shapes (compilations) stays small. A scene whose pooling produces more cells than a
capacity raises an error naming the field (`raise_overflow`).
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

VARIANTS = ("tiny", "base", "large", "base_unet", "large_unet")
CAPACITY_FIELD = "model.stage_capacity_fractions"
_HEAD_DIM = 16
_MIN_MULTIPLE = 8


def _heads(channels):
  return tuple(c // _HEAD_DIM for c in channels)


def model_config(variant: str) -> ml_collections.ConfigDict:
  """Returns the ConfigDict of one of `VARIANTS`."""
  if variant not in VARIANTS:
    raise ValueError(f"model_config: unknown variant {variant!r}; use one of {VARIANTS}.")
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.in_channels = 9  # coord, colour/255, normal (indoor); outdoor sets 4 (coord, strength)
  c.stem = "linear"  # 'linear' (m2: Dense + LayerNorm + GELU) | 'conv' (m1: SubMConv k5 + BN + GELU)
  c.norm = "layer"  # (un)pooling norm: 'layer' (m2) | 'batch' (m1)
  c.enc_depths = (2, 2, 2, 6, 2)
  c.enc_channels = (32, 64, 128, 256, 512)
  c.enc_num_head = (2, 4, 8, 16, 32)
  c.enc_patch_size = (1024,) * 5
  c.enc_mode = True  # decoder-free
  c.dec_depths = (2, 2, 2, 2)
  c.dec_channels = (64, 64, 128, 256)
  c.dec_num_head = (4, 4, 8, 16)
  c.dec_patch_size = (1024,) * 4
  # Decoder-free output: number of coarse levels concatenated onto stage-0 features
  # (4 = full walk to stage 0, [C0 | C1 | C2 | C3 | C4], as Sonata's probes use).
  c.upcast_levels = 4
  c.mlp_ratio = 4
  c.drop_path = 0.3
  c.shuffle_orders = True
  c.orders = ("z", "z-trans", "hilbert", "hilbert-trans")
  # Stage capacity / input capacity. Stride-2 pooling of surface scans keeps ~1/4 of the
  # cells per level; these bounds leave a 2x margin.
  c.stage_capacity_fractions = (1.0, 0.5, 0.25, 0.125, 0.0625)
  # Data-following capacities: candidate sizes per power of two for stages > 0 (the loader
  # picks the smallest that holds the batch's real points; 0 = always the fixed fractions).
  # 2 -> at most 1.5x padding per stage and few distinct shapes.
  c.capacity_steps_per_octave = 2
  c.attention_impl = "auto"
  # The incomplete last patch of a stage: 'refill' with the previous patch's points as
  # Pointcept does (imported weights reproduce it), or 'mask' its empty slots.
  c.last_patch = "refill"
  # Hilbert depth (bits per axis): 'batch' = Pointcept's one depth over the whole batch at
  # each stage; 'scene' = each scene's own (its order then ignores its batch mates).
  c.serialization_depth = "batch"
  c.dtype = "float32"  # compute dtype of Dense layers and attention ('float32' | 'bfloat16')
  c.mask_token = False
  # m1 decoders convolve only the projected skip in the first CPE of each stage (§3.6).
  c.unpool_conv_skip_only = False

  if variant == "tiny":
    c.enc_depths = (1, 1, 1, 1, 1)
    c.enc_channels = (16, 32, 64, 64, 64)
    c.enc_num_head = _heads(c.enc_channels)
    c.enc_patch_size = (128,) * 5
    c.dec_depths = (1, 1, 1, 1)
    c.dec_channels = (16, 32, 64, 64)
    c.dec_num_head = _heads(c.dec_channels)
    c.dec_patch_size = (128,) * 4
  elif variant in ("large", "large_unet"):
    c.enc_depths = (3, 3, 3, 12, 3)
    c.enc_channels = (48, 96, 192, 384, 512)
    c.enc_num_head = (3, 6, 12, 24, 32)
    c.dec_channels = (64, 96, 192, 384)
    c.dec_num_head = (4, 6, 12, 24)
    c.mask_token = True
    c.enc_mode = variant == "large"
  elif variant == "base_unet":
    c.in_channels = 6  # colour, normal (PTv3 ScanNet)
    c.stem = "conv"
    c.norm = "batch"
    c.enc_mode = False
    c.unpool_conv_skip_only = True
  return c


def dtype_of(config: ml_collections.ConfigDict) -> Any:
  """The compute dtype named by `config.dtype`."""
  if config.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"model.dtype={config.dtype!r}; use 'float32' or 'bfloat16'.")
  return jnp.dtype(config.dtype)


def stage_patch_sizes(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Largest patch length per stage: the encoder's, and at least the decoder's."""
  sizes = list(config.enc_patch_size)
  if not config.enc_mode:
    for s, p in enumerate(config.dec_patch_size):
      sizes[s] = max(sizes[s], p)
  return tuple(sizes)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def stage_capacities(config: ml_collections.ConfigDict, n_points: int,
                     counts=None) -> list[int]:
  """Static point capacity of every stage for an input capacity of `n_points` per scene.

  With `counts` (real points per stage, `batching.stage_point_counts`), the data-following
  `fitted_capacities`; without, the fixed upper bounds below.

  Stage 0 holds the input (n_points, which must be a multiple of 8 and, when larger than
  the stage-0 patch length, of that length). Stage s > 0 holds
  ceil(fraction[s] * n_points) rounded up to a multiple of 8, then, when that exceeds the
  stage's patch length, to a multiple of the patch length (patches tile the stage), and
  never more than the previous stage (pooling cannot add cells).
  """
  if counts is not None:
    return list(fitted_capacities(config, n_points, counts))
  fractions = tuple(config.stage_capacity_fractions)
  num_stages = len(config.enc_depths)
  if len(fractions) != num_stages or not all(0 < f <= 1 for f in fractions):
    raise ValueError(f"{CAPACITY_FIELD}={fractions} must hold {num_stages} fractions in (0, 1].")
  patches = stage_patch_sizes(config)
  if n_points <= 0 or n_points % _MIN_MULTIPLE or (
      n_points > patches[0] and n_points % patches[0]):
    raise ValueError(
        f"stage_capacities: n_points={n_points} must be a positive multiple of {_MIN_MULTIPLE} "
        f"and, above the stage-0 patch length {patches[0]}, of that length "
        f"(model.enc_patch_size); pad the batch to such a bucket.")
  capacities = [n_points]
  for s in range(1, num_stages):
    cap = _round_up(math.ceil(fractions[s] * n_points), _MIN_MULTIPLE)
    if cap > patches[s]:
      cap = _round_up(cap, patches[s])
    capacities.append(min(cap, capacities[-1]))
  return capacities


def _ladder_capacity(count: int, steps: int, patch: int) -> int:
  """Smallest ladder size >= count: m * 2^e with m in {1, 1 + 1/steps, ...}, a multiple of 8
  and, above the patch length, of the patch length."""
  size = _MIN_MULTIPLE
  while True:
    for j in range(steps):
      cap = _round_up(math.ceil(size * (1 + j / steps)), _MIN_MULTIPLE)
      if cap > patch:
        cap = _round_up(cap, patch)
      if cap >= count:
        return cap
    size *= 2


def fitted_capacities(config: ml_collections.ConfigDict, n_points: int,
                      counts) -> tuple[int, ...]:
  """Per-stage capacities that follow the data: stage 0 holds `n_points` (the batch bucket);
  stage s > 0 the smallest ladder size holding counts[s] real points (see module doc), at
  most the previous stage's. Counts above the fixed bounds are allowed (nothing is cropped
  for capacity). With `capacity_steps_per_octave` = 0, the fixed `stage_capacities`."""
  fixed = stage_capacities(config, n_points)  # upper bounds: never more than without counts
  steps = int(config.get("capacity_steps_per_octave", 0))
  counts = [int(c) for c in counts]
  if steps <= 0:
    return tuple(fixed)
  if len(counts) != len(fixed) or counts[0] > n_points:
    raise ValueError(f"fitted_capacities: counts {counts} must hold {len(fixed)} stages with "
                     f"counts[0] <= n_points={n_points}.")
  patches = stage_patch_sizes(config)
  caps = [n_points]
  for s in range(1, len(fixed)):
    cap = _ladder_capacity(max(counts[s], 1), steps, patches[s])
    if counts[s] <= fixed[s]:
      cap = min(cap, fixed[s])
    caps.append(min(cap, caps[-1]))
  return tuple(caps)


def resolve_capacities(config: ml_collections.ConfigDict, n_points: int,
                       capacities=None) -> list[int]:
  """The model's static stage capacities: `capacities` (from `fitted_capacities`, checked) or
  the fixed `stage_capacities`."""
  if capacities is None:
    return stage_capacities(config, n_points)
  caps = [int(c) for c in capacities]
  patches = stage_patch_sizes(config)
  ok = (len(caps) == len(config.enc_depths) and caps[0] == n_points
        and all(c > 0 and c % _MIN_MULTIPLE == 0 and (c <= p or c % p == 0)
                for c, p in zip(caps, patches))
        and all(b <= a for a, b in zip(caps, caps[1:])))
  if not ok:
    raise ValueError(
        f"PointTransformerV3: stage_capacities={tuple(caps)} must be {len(config.enc_depths)} "
        f"non-increasing multiples of {_MIN_MULTIPLE} starting at the input size {n_points}, "
        f"multiples of the patch length above it ({patches}); use fitted_capacities().")
  return caps


def patch_length(capacity: int, patch_size: int) -> int:
  """Patch length of a stage: the patch size, or the whole stage when it is smaller."""
  return min(capacity, patch_size)


def raise_overflow(config: ml_collections.ConfigDict, stages: str = "some stages"):
  """Raises the error for a batch whose pooling produced more cells than a stage holds."""
  raise ValueError(
      f"PTv3 pooling produced more cells than the static capacity of {stages} "
      f"({CAPACITY_FIELD}={tuple(config.stage_capacity_fractions)}); raise the fractions of "
      f"those stages, or crop inputs with stage_capacities() so they fit.")


def check_overflow(aux: dict, config: ml_collections.ConfigDict):
  """Host-side check of the model's aux['overflow'] (bool [..., num_stages])."""
  overflow = np.asarray(aux["overflow"])
  if overflow.any():
    stages = np.nonzero(overflow.reshape(-1, overflow.shape[-1]).any(0))[0].tolist()
    raise_overflow(config, f"stages {stages}")
