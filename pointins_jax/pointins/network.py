"""The network shared by student and teacher: PTv3 encoder + projection and offset heads."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import ml_collections

from pointins_jax.model import ptv3
from pointins_jax.pointins import heads


def offset_feature_width(model_config, head_config) -> int:
  """Channels the offset head reads: the last `heads.offset_stages` encoder stages.

  The decoder-free backbone outputs [C0 | C1 | ... | C_top] per point (stage s's features
  read back through the pooling chain, `model.upcast_levels` coarse levels), so the last
  k stages are its trailing sum(enc_channels[-k:]) channels. The paper (Appendix A)
  concatenates "the last three encoder stages" (k = 3); k = number of stages reads all.
  Exports written before the field existed read all stages.

  Raises:
    ValueError: naming the field when the backbone does not output those stages.
  """
  channels = tuple(model_config.enc_channels)
  num_stages = len(channels)
  k = int(head_config.get("offset_stages", num_stages))
  if not 1 <= k <= num_stages:
    raise ValueError(f"heads.offset_stages={k} must lie in [1, {num_stages}] (encoder stages).")
  if k < num_stages and not (model_config.enc_mode and model_config.upcast_levels >= k - 1):
    raise ValueError(f"heads.offset_stages={k} reads the last {k} encoder stages of the "
                     "decoder-free output: needs model.enc_mode=True and model.upcast_levels "
                     f">= {k - 1} (got {model_config.enc_mode}, {model_config.upcast_levels}).")
  return sum(channels[-k:])


class PointINSNetwork(nn.Module):
  """Backbone features, prototype logits and 3D offsets for every point.

  Attributes:
    model_config: `config.model` (PTv3 variant, decoder-free for pretraining).
    head_config: `config.heads` (projection/prototype sizes, offset head width and the
      encoder stages it reads, `offset_feature_width`).
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
    width = offset_feature_width(self.model_config, hc)
    offsets = heads.OffsetHead(hidden_dim=hc.offset_hidden, name="offset_head")(
        features[..., features.shape[-1] - width:])
    return {"features": features, "logits": logits, "offsets": offsets, "aux": aux}
