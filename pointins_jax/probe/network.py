"""Probing networks: a (pretrained) PTv3 backbone plus PointGroup heads.

Heads as Pointcept's PG-v1m2 (ptv3_ssl_spec.md §7.1): `seg_head` = Dense(num_classes);
`bias_head` = Dense(C) -> norm -> ReLU -> Dense(3) for the instance offsets. Pointcept's
bias head uses BatchNorm; we use LayerNorm so the probe carries no batch statistics
(the pretraining backbone is LayerNorm-only too).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from pointins_jax.model import ptv3


class BiasHead(nn.Module):
  hidden_dim: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden_dim, name="fc1")(x)
    x = nn.LayerNorm(epsilon=1e-5, name="norm")(x)
    return nn.Dense(3, name="fc2")(nn.relu(x))


class ProbeNetwork(nn.Module):
  """Backbone + semantic logits (+ offsets for instance / panoptic tasks).

  Attributes:
    model_config: PTv3 config (decoder-free for linear probing, U-Net otherwise).
    num_classes: semantic classes.
    with_offsets: add the offset (bias) head.
    freeze_backbone: stop gradients at the backbone output (linear / decoder probing
      of a frozen encoder never needs the encoder's backward pass).
  """

  model_config: ml_collections.ConfigDict
  num_classes: int
  with_offsets: bool
  freeze_backbone: bool = False

  @nn.compact
  def __call__(self, coord, feat, grid, valid, *, train: bool, stage_capacities=None):
    features, aux = ptv3.PointTransformerV3(self.model_config, name="backbone")(
        coord, feat, grid, valid, train=train, stage_capacities=stage_capacities)
    if self.freeze_backbone:
      features = jax.lax.stop_gradient(features)
    out = {"logits": nn.Dense(self.num_classes, name="seg_head")(features), "aux": aux}
    if self.with_offsets:
      out["offsets"] = BiasHead(features.shape[-1], name="bias_head")(features)
    return out
