"""The network shared by student and teacher: PTv3 encoder + projection and offset heads."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import ml_collections

from pointins_jax.model import ptv3
from pointins_jax.pointins import heads


class PointINSNetwork(nn.Module):
  """Backbone features, prototype logits and 3D offsets for every point.

  Attributes:
    model_config: `config.model` (PTv3 variant, decoder-free for pretraining).
    head_config: `config.heads` (projection/prototype sizes, offset head width).
  """

  model_config: ml_collections.ConfigDict
  head_config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, coord, feat, grid, valid, *, train: bool,
               stage_capacities=None) -> dict[str, Any]:
    """coord f32 [B, N, 3], feat f32 [B, N, C], grid i32 [B, N, 3], valid bool [B, N];
    stage_capacities: static per-stage point capacities (the batch's `stage_capacities`).

    Returns features [B, N, F], logits [B, N, K] (cosine similarity to prototypes),
    offsets [B, N, 3] (view frame, metres) and the backbone's aux dict.
    """
    features, aux = ptv3.PointTransformerV3(self.model_config, name="backbone")(
        coord, feat, grid, valid, train=train, stage_capacities=stage_capacities)
    hc = self.head_config
    logits = heads.ProjectionHead(hidden_dim=hc.proj_hidden, bottleneck_dim=hc.proj_bottleneck,
                                  num_prototypes=hc.num_prototypes, name="projection_head")(features)
    offsets = heads.OffsetHead(hidden_dim=hc.offset_hidden, name="offset_head")(features)
    return {"features": features, "logits": logits, "offsets": offsets, "aux": aux}
