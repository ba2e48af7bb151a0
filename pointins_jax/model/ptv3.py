"""Point Transformer V3 encoder (decoder-free, multi-scale) and U-Net, in Flax.

Follows Pointcept's PT-v3m1 / PT-v3m2 (ptv3_ssl_spec.md §3) on per-scene-padded batches:
every structural step (serialization, neighbour tables, pooling) is a per-scene function
vmapped over B, so patches and pooled cells never span two scenes, and every shape is
static (stage capacities from `configs.stage_capacities`).

Randomness: 'order' shuffles the curve rows of every stage when `config.shuffle_orders`
(and an 'order' rng is given; Pointcept shuffles at inference too); 'dropout' drives
per-point stochastic depth when `train`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pointins_jax.model import blocks
from pointins_jax.model import layer_norm
from pointins_jax.model import configs
from pointins_jax.model import pooling
from pointins_jax.model import serialization
from pointins_jax.model import sparse_conv

_STEM_KERNEL = 5
_CPE_KERNEL = 3


def _stage_structure(grid, valid, coord, orders, depth_mode, unique_cells=False):
  """Batched per-stage structure: CPE neighbour table and every curve's order/inverse.

  unique_cells: a pooled stage (one point per cell), whose sorts need no tie-break.
  """
  if unique_cells:  # no ties to break: any order will do
    by_coord = jnp.broadcast_to(jnp.arange(valid.shape[1], dtype=jnp.int32), valid.shape)
  else:
    by_coord = jax.vmap(serialization.coordinate_order)(coord)
  neighbors = sparse_conv.neighbor_tables(grid, valid, coord, _CPE_KERNEL, by_coord)
  if depth_mode == "batch":  # Pointcept: one depth over the whole batch, every stage
    depth = serialization.batch_depth(grid, valid)
  elif depth_mode == "scene":
    depth = jax.vmap(serialization.scene_depth)(grid, valid)
  else:
    raise ValueError(f"model.serialization_depth={depth_mode!r}; use 'batch' or 'scene'.")
  order, inverse = jax.vmap(lambda g, v, c, d, p: serialization.serialize(
      g, v, c, orders, d, unique_cells, p))(grid, valid, coord, depth, by_coord)  # [B, k, N]
  return {"neighbors": neighbors, "orders": order, "inverses": inverse, "valid": valid,
          "grid": grid, "coord": coord, "by_coord": by_coord}


def _block_view(stage, row):
  """The structure seen by a block using curve `row` (a traced index into the rows)."""
  return {"neighbors": stage["neighbors"], "valid": stage["valid"],
          "order": jnp.take(stage["orders"], row, axis=1),
          "inverse": jnp.take(stage["inverses"], row, axis=1)}


def _check_inputs(coord, feat, grid, valid, config):
  batch, n = valid.shape
  expected = {"coord": (coord, (batch, n, 3)), "feat": (feat, (batch, n, config.in_channels)),
              "grid": (grid, (batch, n, 3))}
  for name, (x, shape) in expected.items():
    if x.shape != shape:
      raise ValueError(f"PointTransformerV3: {name} has shape {x.shape}, expected {shape} "
                       f"(valid is {valid.shape}, model.in_channels={config.in_channels}).")
  if valid.dtype != jnp.bool_ or not jnp.issubdtype(grid.dtype, jnp.integer):
    raise ValueError(f"PointTransformerV3: valid must be bool and grid integer, got "
                     f"{valid.dtype} and {grid.dtype}.")


class PointTransformerV3(nn.Module):
  """PTv3 on per-scene-padded batches.

  __call__(coord f32 [B, N, 3], feat f32 [B, N, C_in], grid i32 [B, N, 3] (>= 0, < 2^16),
  valid bool [B, N], *, train, token_mask bool [B, N] | None) -> (feats, aux):
    feats f32 [B, N, C_out] at input resolution, zeros on padding. Decoder-free
      (`enc_mode`): stage-0 features concatenated with the `upcast_levels` coarsest stages'
      features read back through the pooling chain (4 = the full walk [C0|...|C4] that
      Sonata's probes use; the PointINS paper concatenates "the last three encoder
      stages"). U-Net: the decoder output, dec_channels[0].
    aux: 'num_points' i32 [B, S] real points per stage, 'overflow' bool [B, S] (a stage's
      parents exceeded its capacity; check on the host with `configs.check_overflow`).
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, coord, feat, grid, valid, *, train: bool, token_mask=None,
               stage_capacities=None):
    cfg = self.config
    _check_inputs(coord, feat, grid, valid, cfg)
    dtype = configs.dtype_of(cfg)
    capacities = configs.resolve_capacities(cfg, valid.shape[1], stage_capacities)
    orders = tuple(cfg.orders)
    grid = grid.astype(jnp.int32)
    coord = jnp.where(valid[..., None], coord, 0.0)
    feat = jnp.where(valid[..., None], feat, 0.0)

    def shuffled(stage):
      if cfg.shuffle_orders and self.has_rng("order"):
        stage["rows"] = jax.random.permutation(self.make_rng("order"), len(orders))
      else:
        stage["rows"] = jnp.arange(len(orders))
      return stage

    def run_blocks(x, stage, s, prefix, depths, channels, heads, patch, rates, conv_input=None):
      length = configs.patch_length(capacities[s], patch)
      for i in range(depths):
        x = blocks.Block(channels, heads, length, cfg.mlp_ratio, rates[i], cfg.attention_impl,
                         dtype, cfg.get("last_patch", "refill"), name=f"{prefix}_block{i}")(
                             x, _block_view(stage, stage["rows"][i % len(orders)]), train=train,
                             conv_input=conv_input if i == 0 else None)
      return x

    # Stem.
    depth_mode = cfg.get("serialization_depth", "batch")
    stage = shuffled(_stage_structure(grid, valid, coord, orders, depth_mode))
    c0 = cfg.enc_channels[0]
    if cfg.stem == "conv":
      stem_neighbors = sparse_conv.neighbor_tables(grid, valid, coord, _STEM_KERNEL,
                                                   stage["by_coord"])
      x = sparse_conv.SubMConv3d(c0, _STEM_KERNEL, use_bias=False, name="stem_conv")(
          feat, stem_neighbors)
      x = pooling.MaskedNorm("batch", name="stem_norm")(x, valid, train)
    elif cfg.stem == "linear":
      x = nn.Dense(c0, dtype=dtype, kernel_init=blocks.DENSE_INIT, name="stem_linear")(feat)
      x = layer_norm.LayerNorm(blocks.LAYER_NORM_EPS, name="stem_norm")(x)
    else:
      raise ValueError(f"model.stem={cfg.stem!r}; use 'linear' or 'conv'.")
    x = blocks.gelu(x).astype(jnp.float32)
    if cfg.mask_token:
      token = self.param("mask_token", nn.initializers.zeros, (c0,))
      if token_mask is not None:
        x = jnp.where(token_mask[..., None], token, x)
    x = jnp.where(valid[..., None], x, 0.0)

    # Encoder.
    enc_rates = np.linspace(0.0, cfg.drop_path, sum(cfg.enc_depths)).tolist()
    stages, enc_feats, counts, overflow = [], [], [], []
    for s, depth in enumerate(cfg.enc_depths):
      if s > 0:
        coarse = jax.vmap(lambda g, v, c: pooling.grid_pool(g, v, c, capacities[s]))(
            stage["grid"], stage["valid"], stage["coord"])
        x = pooling.GridPooling(cfg.enc_channels[s], cfg.norm, dtype, name=f"enc{s}_down")(
            x, coarse, train=train)
        # Recorded on the finer stage (already in `stages`): fine point -> slot at stage s.
        stage["cluster"] = coarse["cluster"]
        overflow.append(coarse["overflow"])
        stage = shuffled(_stage_structure(coarse["grid"], coarse["valid"], coarse["coord"],
                                          orders, depth_mode, unique_cells=True))
      else:
        overflow.append(jnp.zeros(valid.shape[:1], bool))
      start = sum(cfg.enc_depths[:s])
      x = run_blocks(x, stage, s, f"enc{s}", depth, cfg.enc_channels[s], cfg.enc_num_head[s],
                     cfg.enc_patch_size[s], enc_rates[start:start + depth])
      x = jnp.where(stage["valid"][..., None], x, 0.0)
      stages.append(stage)
      enc_feats.append(x)
      counts.append(jnp.sum(stage["valid"], axis=1, dtype=jnp.int32))
    aux = {"num_points": jnp.stack(counts, axis=1), "overflow": jnp.stack(overflow, axis=1)}

    if cfg.enc_mode:
      return self._upcast(enc_feats, stages), aux
    return self._decode(x, enc_feats, stages, run_blocks, dtype, train), aux

  def _upcast(self, enc_feats, stages):
    """Concatenates coarse features onto finer stages down to stage 0 (Sonata up-casting)."""
    top = len(enc_feats) - 1
    levels = self.config.upcast_levels
    if not 0 <= levels <= top:
      raise ValueError(f"model.upcast_levels={levels} must be in [0, {top}].")
    x = enc_feats[top]
    for s in range(top - 1, -1, -1):
      x = pooling.upcast(x, stages[s]["cluster"])
      if s >= top - levels:
        x = jnp.concatenate([enc_feats[s], x], axis=-1)
    return jnp.where(stages[0]["valid"][..., None], x, 0.0)

  def _decode(self, x, enc_feats, stages, run_blocks, dtype, train):
    """U-Net decoder: unpool to each finer stage, add the skip, run the decoder blocks."""
    cfg = self.config
    dec_rates = np.linspace(0.0, cfg.drop_path, sum(cfg.dec_depths)).tolist()
    for s in range(len(cfg.dec_depths) - 1, -1, -1):
      stage, coarse = stages[s], stages[s + 1]
      x, skip = pooling.Unpooling(cfg.dec_channels[s], cfg.norm, dtype, name=f"dec{s}_up")(
          x, coarse["valid"], enc_feats[s], stage["valid"], stage["cluster"], train=train)
      start = sum(cfg.dec_depths[:s])
      rates = dec_rates[start:start + cfg.dec_depths[s]][::-1]
      x = run_blocks(x, stage, s, f"dec{s}", cfg.dec_depths[s], cfg.dec_channels[s],
                     cfg.dec_num_head[s], cfg.dec_patch_size[s], rates,
                     conv_input=skip if cfg.unpool_conv_skip_only else None)
      x = jnp.where(stage["valid"][..., None], x, 0.0)
    return x
