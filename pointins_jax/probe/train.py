"""Probe / finetune state, optimizer with frozen and slower parameter groups, train step.

Modes (ptv3_ssl_spec.md §4.7, §7.3):
  linear    encoder frozen, only the heads train;
  decoder   encoder frozen, a new PTv3 decoder + heads train;
  finetune  everything trains; the encoder at `optim.encoder_lr_scale` x the head lr.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from pointins_jax.pointins import offsets as offsets_lib
from pointins_jax.pointins import schedules
from pointins_jax.probe import network as network_lib

BATCH_KEYS = ("coord", "feat", "grid", "valid", "segment", "instance_centroid", "has_instance")


@flax.struct.dataclass
class ProbeState:
  step: jax.Array
  params: Any
  opt_state: Any
  num_skipped: jax.Array


def build_network(config) -> network_lib.ProbeNetwork:
  return network_lib.ProbeNetwork(
      config.model, num_classes=config.num_classes,
      with_offsets=config.task in ("insseg", "panseg"),
      freeze_backbone=config.mode == "linear")


def param_group(path: tuple[str, ...], mode: str) -> str:
  """'frozen' | 'encoder' | 'head' for the parameter at `path`."""
  if path[0] != "backbone":
    return "head"
  is_decoder = any(p.startswith("dec") for p in path[1:])
  if mode == "finetune":
    return "head" if is_decoder else "encoder"
  if mode == "decoder":
    return "head" if is_decoder else "frozen"
  if mode == "linear":
    return "frozen"
  raise ValueError(f"config.mode={mode!r}: use 'linear', 'decoder' or 'finetune'.")


def build_optimizer(config, total_steps: int, params) -> optax.GradientTransformation:
  opt = config.optim
  def adamw(scale):
    lr = lambda s: scale * schedules.warmup_cosine_lr(s, total_steps, opt.lr,
                                                      warmup_ratio=opt.warmup_ratio)
    return optax.adamw(lr, weight_decay=opt.weight_decay)
  labels = flax.traverse_util.path_aware_map(lambda path, _: param_group(path, config.mode),
                                             params)
  return optax.chain(
      optax.clip_by_global_norm(opt.clip_norm),
      optax.multi_transform({"frozen": optax.set_to_zero(), "head": adamw(1.0),
                             "encoder": adamw(opt.encoder_lr_scale)}, labels))


def probe_losses(params, batch, rng, net, config, stage_capacities=None):
  """Cross-entropy (ignore -1) + PointGroup offset loss on instance points."""
  out = net.apply({"params": params}, batch["coord"], batch["feat"], batch["grid"],
                  batch["valid"], train=True, stage_capacities=stage_capacities,
                  rngs={"order": rng, "dropout": jax.random.fold_in(rng, 1)})
  seg = batch["segment"]
  labelled = batch["valid"] & (seg >= 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], jnp.maximum(seg, 0))
  loss_seg = jnp.sum(ce * labelled) / jnp.maximum(jnp.sum(labelled), 1)
  metrics = {"loss_semantic": loss_seg,
             "accuracy": jnp.sum((out["logits"].argmax(-1) == seg) & labelled)
                         / jnp.maximum(jnp.sum(labelled), 1)}
  loss = loss_seg
  if "offsets" in out:
    target = batch["instance_centroid"] - batch["coord"]
    weight = batch["valid"] & batch["has_instance"]
    loss_off, parts = offsets_lib.offset_loss(out["offsets"], target, weight)
    loss = loss + loss_off
    metrics.update(loss_offset=loss_off, offset_l1=parts["l1"])
  metrics["loss"] = loss
  return loss, metrics


def init_probe_state(config, rng, total_steps: int, pretrained_backbone=None,
                     net=None) -> ProbeState:
  """A fresh probe state: `net` (default: this module's probe network) initialised, the
  backbone replaced by `pretrained_backbone` where given, and its optimizer state."""
  net = build_network(config) if net is None else net
  c = config.model.in_channels
  dummy = (jnp.zeros((1, 64, 3)), jnp.zeros((1, 64, c)), jnp.zeros((1, 64, 3), jnp.int32),
           jnp.ones((1, 64), bool))
  params = net.init({"params": rng, "order": rng, "dropout": rng}, *dummy, train=False)["params"]
  if pretrained_backbone is not None:
    params = dict(params)
    params["backbone"] = merge_pretrained(params["backbone"], pretrained_backbone)
  opt_state = build_optimizer(config, total_steps, params).init(params)
  return ProbeState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                    num_skipped=jnp.zeros((), jnp.int32))


def merge_pretrained(target, pretrained):
  """Copies every pretrained leaf whose path exists in `target` with the same shape.

  Decoder parameters of a U-Net target have no pretrained counterpart (the encoder was
  pretrained decoder-free) and keep their fresh initialisation. A pretrained leaf with
  the wrong shape is an error: the probe's model config must match the export's.
  """
  flat_t = flax.traverse_util.flatten_dict(flax.core.unfreeze(target))
  flat_p = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained))
  matched = 0
  for path, value in flat_p.items():
    if path not in flat_t:
      continue
    if tuple(flat_t[path].shape) != tuple(value.shape):
      raise ValueError(f"pretrained parameter {'/'.join(path)} has shape {value.shape} but the "
                       f"probe model expects {flat_t[path].shape}: use the export's model config.")
    flat_t[path] = jnp.asarray(value, flat_t[path].dtype)
    matched += 1
  if matched == 0:
    raise ValueError("no pretrained backbone parameter matches the probe model's names.")
  return flax.traverse_util.unflatten_dict(flat_t)


def probe_step(state: ProbeState, batch, rng, *, config, total_steps: int,
               stage_capacities=None):
  """One probing step. Pure; jit with the state donated and `stage_capacities` static."""
  net = build_network(config)
  grad_fn = jax.value_and_grad(functools.partial(probe_losses, net=net, config=config,
                                                 stage_capacities=stage_capacities),
                               has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, batch, rng)
  return apply_gradients(config, total_steps, state, loss, grads, metrics)


def apply_gradients(config, total_steps, state: ProbeState, loss, grads, metrics):
  """The optimizer update of a probe step, skipped (state kept, `skipped` = 1) when the loss
  or a gradient is not finite; returns (new state, metrics + skipped, grad_norm)."""
  optimizer = build_optimizer(config, total_steps, state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ok = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                                               for g in jax.tree.leaves(grads)]))
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  new_state = ProbeState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state),
                         num_skipped=state.num_skipped + (~ok).astype(jnp.int32))
  metrics = dict(metrics, skipped=(~ok).astype(jnp.int32), grad_norm=optax.global_norm(grads))
  return new_state, metrics


def predict(params, batch, *, config, stage_capacities=None):
  """Eval-mode forward: probabilities [B, N, C] and offsets [B, N, 3] (zeros if absent)."""
  net = build_network(config)
  out = net.apply({"params": params}, batch["coord"], batch["feat"], batch["grid"],
                  batch["valid"], train=False, rngs={"order": jax.random.key(0)},
                  stage_capacities=stage_capacities)
  probs = jax.nn.softmax(out["logits"], axis=-1)
  offsets = out.get("offsets", jnp.zeros(batch["coord"].shape, jnp.float32))
  return probs, offsets
