"""Detection probe: PTv3 U-Net backbone + CenterPoint-style BEV head; state, step, predict.

Modes (paper Table 11): `decoder` trains the PTv3 decoder and the detection head on a frozen
encoder; `finetune` trains everything, the encoder at `optim.encoder_lr_scale` x the lr.
Parameter groups, the optimizer, pretrained-weight merging and the state record are the
segmentation probe's (`probe.train`); the detection head's parameters (`head/...`) are
"head" parameters like the segmentation heads.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import ml_collections

from pointins_jax.model import ptv3
from pointins_jax.probe import detection as det
from pointins_jax.probe import train as train_lib

BATCH_KEYS = ("coord", "feat", "grid", "valid", "heatmap", "reg_target", "reg_index",
              "reg_group", "reg_mask")
MODES = ("decoder", "finetune")


class DetectionNetwork(nn.Module):
  """Backbone per-point features (the probes' U-Net output) -> `detection.CenterHead`."""

  model_config: ml_collections.ConfigDict
  spec: det.DetectionSpec
  bev_channels: int
  neck_channels: int
  head_channels: int

  @nn.compact
  def __call__(self, coord, feat, grid, valid, *, train: bool, stage_capacities=None):
    features, _ = ptv3.PointTransformerV3(self.model_config, name="backbone")(
        coord, feat, grid, valid, train=train, stage_capacities=stage_capacities)
    return det.CenterHead(self.spec, self.bev_channels, self.neck_channels,
                          self.head_channels, name="head")(coord, features, valid)


def check_mode(config) -> None:
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r} with config.task='detection': use one of "
                     f"{MODES} (Table 11 probes detection with a trained decoder).")


def build_network(config) -> DetectionNetwork:
  d = config.detection
  return DetectionNetwork(config.model, det.spec_from_config(d), bev_channels=d.bev_channels,
                          neck_channels=d.neck_channels, head_channels=d.head_channels)


def init_probe_state(config, rng, total_steps: int, pretrained_backbone=None
                     ) -> train_lib.ProbeState:
  check_mode(config)
  return train_lib.init_probe_state(config, rng, total_steps, pretrained_backbone,
                                    net=build_network(config))


def detection_loss(params, batch, rng, net, config, stage_capacities=None):
  out = net.apply({"params": params}, batch["coord"], batch["feat"], batch["grid"],
                  batch["valid"], train=True, stage_capacities=stage_capacities,
                  rngs={"order": rng, "dropout": jax.random.fold_in(rng, 1)})
  loss, metrics = det.detection_losses(out, batch, net.spec, config.detection.code_weights,
                                       config.detection.reg_weight)
  metrics["loss"] = loss
  return loss, metrics


def probe_step(state: train_lib.ProbeState, batch, rng, *, config, total_steps: int,
               stage_capacities=None):
  """One detection step. Pure; jit with the state donated and `stage_capacities` static.

  A non-finite loss or gradient skips the update (counted), as in `probe.train.probe_step`.
  """
  net = build_network(config)
  grad_fn = jax.value_and_grad(functools.partial(detection_loss, net=net, config=config,
                                                 stage_capacities=stage_capacities),
                               has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, batch, rng)
  return train_lib.apply_gradients(config, total_steps, state, loss, grads, metrics)


def predict(params, batch, *, config, stage_capacities=None):
  """Eval forward + top-k decoding per class group (`detection.decode_topk`), view frame."""
  net = build_network(config)
  out = net.apply({"params": params}, batch["coord"], batch["feat"], batch["grid"],
                  batch["valid"], train=False, rngs={"order": jax.random.key(0)},
                  stage_capacities=stage_capacities)
  return det.decode_topk(out, net.spec, config.detection.topk)
