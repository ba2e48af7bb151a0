"""PointINS train state and the pure, jit-compiled train step (Algorithm 1).

`train_step(state, batch, rng) -> (state, metrics)`:
  1. teacher (EMA, no drop path) encodes both full views; student encodes the visible
     points of both views;
  2. semantic branch: prototype distillation, within-view and cross-view;
  3. offset branch: teacher offsets -> original frame -> ODR -> SCR -> targets O*,
     distilled into the student's offsets (within-view and cross-view);
  4. AdamW update of the student (skipped when the loss or a gradient is not finite),
     then the EMA update of the teacher.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from pointins_jax import compilation
from pointins_jax.pointins import network as network_lib
from pointins_jax.pointins import odr as odr_lib
from pointins_jax.pointins import offsets as offsets_lib
from pointins_jax.pointins import schedules
from pointins_jax.pointins import semantic


# The batch fields the step reads (the loader's other fields stay on the host).
BATCH_KEYS = ("coord", "feat", "grid", "valid", "visible", "cross_index", "view_linear",
              "origin_coord")


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # i32 [], optimizer steps taken (skipped steps included)
  params: Any  # student parameters
  teacher_params: Any  # EMA of the student
  opt_state: Any
  num_skipped: jax.Array  # i32 [], steps whose update was skipped (non-finite)


def build_network(config) -> network_lib.PointINSNetwork:
  return network_lib.PointINSNetwork(config.model, config.heads)


def make_offsets_fn(config):
  """(params, batch of numpy/jax arrays) -> offsets f32 [B, P, 3]: the network in eval mode
  (no drop path), jitted; reads coord/feat/grid/valid and, when the batch carries them, its
  data-following `stage_capacities` / `stage_point_counts` (a `CapacityPlanner` keeps the
  compiled shapes few)."""
  net = build_network(config)

  @functools.partial(jax.jit, static_argnames=("stage_capacities",))
  def offsets(params, batch, stage_capacities=None):
    out = net.apply({"params": params}, batch["coord"], batch["feat"], batch["grid"],
                    batch["valid"], train=False, rngs={"order": jax.random.key(0)},
                    stage_capacities=stage_capacities)
    return out["offsets"]  # the projection head is dead code here, pruned by XLA

  planner = compilation.CapacityPlanner()

  def apply(params, batch):
    batch = dict(batch)
    capacities = planner.pop_and_choose(batch)
    model_inputs = {k: batch[k] for k in ("coord", "feat", "grid", "valid")}
    return offsets(params, model_inputs, stage_capacities=capacities)

  return apply


def learning_rate_schedule(config, total_steps: int):
  return lambda step: schedules.warmup_cosine_lr(
      step, total_steps, config.optim.lr, warmup_ratio=config.optim.warmup_ratio)


def build_optimizer(config, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clip (`optim.clip_norm`) + AdamW (`optim.lr` schedule, `optim.b1`,
  `optim.b2`) with the constant weight decay `optim.weight_decay` of Table 9 (no schedule;
  see `schedules.weight_decay` for Sonata's)."""
  return optax.chain(
      optax.clip_by_global_norm(config.optim.clip_norm),
      optax.adamw(learning_rate_schedule(config, total_steps), b1=config.optim.b1,
                  b2=config.optim.b2, weight_decay=config.optim.weight_decay))


def dummy_inputs(config, num_points: int = 64):
  c = config.model.in_channels
  return (jnp.zeros((1, num_points, 3), jnp.float32), jnp.zeros((1, num_points, c), jnp.float32),
          jnp.zeros((1, num_points, 3), jnp.int32), jnp.ones((1, num_points), bool))


def init_train_state(config, rng, total_steps: int) -> TrainState:
  """Fresh state; jit this with `out_shardings` to create it already sharded."""
  net = build_network(config)
  params = net.init({"params": rng, "dropout": rng, "order": rng}, *dummy_inputs(config),
                    train=False)["params"]
  opt_state = build_optimizer(config, total_steps).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, teacher_params=params,
                    opt_state=opt_state, num_skipped=jnp.zeros((), jnp.int32))


def magnitude_and_direction_priors(config):
  cfg = config.offset
  return odr_lib.prior_from_config(cfg.magnitude_prior), cfg.direction_prior


# ---------------------------------------------------------------------------------------
# Losses


def compute_losses(params, teacher_params, batch, rng, step, total_steps, config,
                   stage_capacities=None):
  """All losses of one step; returns (total loss, aux metrics)."""
  net = build_network(config)
  b, v, n = batch["valid"].shape
  flat = lambda x: x.reshape((b * v,) + x.shape[2:])  # [B, V, ...] -> [B*V, ...]
  coord, feat, grid = flat(batch["coord"]), flat(batch["feat"]), flat(batch["grid"])
  valid, visible = flat(batch["valid"]), flat(batch["visible"]) & flat(batch["valid"])
  view_linear = flat(batch["view_linear"])
  origin_coord = flat(batch["origin_coord"])

  rng_t, rng_s, rng_scr = jax.random.split(rng, 3)
  teacher = net.apply({"params": teacher_params}, coord, feat, grid, valid, train=False,
                      rngs={"order": rng_t}, stage_capacities=stage_capacities)
  teacher = jax.lax.stop_gradient(teacher)
  # Visible points are a subset of the view's, so the view's capacities hold them.
  student = net.apply({"params": params}, coord, feat, grid, visible, train=True,
                      rngs={"order": rng_s, "dropout": jax.random.fold_in(rng_s, 1)},
                      stage_capacities=stage_capacities)

  sem = config.semantic
  teacher_temp = schedules.teacher_temperature(
      step, total_steps, sem.teacher_temp_start, sem.teacher_temp_end, sem.teacher_temp_warmup)
  usage = jnp.sum(jax.nn.softmax(teacher["logits"] / teacher_temp, axis=-1)
                  * valid[..., None], axis=(0, 1))
  distill = functools.partial(
      semantic.distill, target=sem.target, teacher_temperature=teacher_temp,
      student_temperature=sem.student_temperature, num_iters=sem.sinkhorn_iters,
      marginal=semantic.prototype_marginal(sem.prototype_prior, usage, sem.alpha_zipf))
  per_view = lambda x: x.reshape((b, v) + x.shape[1:])  # [B*V, ...] -> [B, V, ...]

  def other_view(x):
    """x [B*V, N, ...] read at each point's match in the other view (+ found mask)."""
    rows, found = semantic.cross_view_rows(per_view(x), batch["cross_index"])
    return flat(rows), flat(found)

  w_within = visible.astype(jnp.float32)
  # Within-view: the student's point p is the teacher's point p of the same view.
  sem_within, within = distill(student["logits"], teacher["logits"], w_within)
  losses = {"sem_within": sem_within}
  sem_loss, sem_kl = sem_within, within["kl"]
  w_cross = jnp.zeros_like(w_within)
  if sem.cross_view or config.offset.cross_view:
    t_cross_logits, found = other_view(teacher["logits"])
    w_cross = (visible & found).astype(jnp.float32)
  if sem.cross_view:
    sem_cross, cross_aux = distill(student["logits"], t_cross_logits, w_cross)
    losses["sem_cross"] = sem_cross
    sem_loss, sem_kl = 0.5 * (sem_within + sem_cross), 0.5 * (within["kl"] + cross_aux["kl"])

  metrics = {"teacher_temperature": teacher_temp,
             # KL = cross-entropy minus the targets' entropy: the part the student can
             # still reduce (the CE itself moves with the teacher's temperature schedule).
             "semantic_kl": sem_kl,
             "prototype_entropy": semantic.prototype_usage_entropy(within["assignments"],
                                                                   w_within)}
  off_cfg = config.offset
  off_weight = jnp.zeros((), jnp.float32)
  off_loss = jnp.zeros((), jnp.float32)
  s_off = offsets_lib.to_original_frame(student["offsets"], view_linear)
  if off_cfg.enabled:
    off_weight = schedules.offset_loss_weight(step, total_steps, off_cfg.weight,
                                              off_cfg.warmup_ratio)
    magnitude_prior, direction_prior = magnitude_and_direction_priors(config)
    t_off = offsets_lib.to_original_frame(teacher["offsets"], view_linear)
    keys = jax.random.split(rng_scr, b * v)
    targets = jax.vmap(functools.partial(
        offsets_lib.teacher_offset_targets, cfg=off_cfg, magnitude_prior=magnitude_prior,
        direction_prior=direction_prior))(t_off, origin_coord, teacher["features"], valid, keys)
    target, has_target = targets["target"], targets["has_target"]
    loss_within, parts = offsets_lib.offset_loss(s_off, target, w_within * has_target)
    off_loss = loss_within
    losses["off_within"] = loss_within
    if off_cfg.cross_view:
      t_cross, _ = other_view(target)
      h_cross, _ = other_view(has_target)
      loss_cross, _ = offsets_lib.offset_loss(s_off, t_cross, w_cross * h_cross)
      losses["off_cross"] = loss_cross
      off_loss = 0.5 * (loss_within + loss_cross)
    if off_cfg.student_odr_kl:  # Table 8 dagger: ODR as a student-side loss
      kl = offsets_lib.student_odr_kl(s_off.reshape(-1, 3), visible.reshape(-1),
                                      magnitude_prior)
      losses["odr_kl"] = kl
      off_loss = off_loss + kl
    num_valid = jnp.maximum(jnp.sum(valid), 1)
    metrics.update({
        "scr_target_fraction": jnp.sum(has_target & valid) / num_valid,
        "pseudo_instances": jnp.mean(targets["num_instances"].astype(jnp.float32)),
        "offset_l1": parts["l1"], "offset_direction": parts["direction"]})

  total = sem_loss + off_weight * off_loss
  magnitude = jnp.linalg.norm(s_off, axis=-1)
  metrics.update({f"loss_{k}": val for k, val in losses.items()})
  metrics.update({
      "loss": total, "loss_semantic": sem_loss, "loss_offset": off_loss,
      "offset_weight": off_weight,
      "offset_magnitude_mean": jnp.sum(magnitude * w_within) / jnp.maximum(jnp.sum(w_within), 1),
      "offset_magnitude_max": jnp.max(jnp.where(visible, magnitude, 0.0)),
      "visible_fraction": jnp.sum(visible) / jnp.maximum(jnp.sum(valid), 1),
      "stage_overflow": jnp.any(jnp.asarray(student["aux"].get("overflow", False)))
                        | jnp.any(jnp.asarray(teacher["aux"].get("overflow", False))),
  })
  return total, metrics


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, config,
               total_steps: int, stage_capacities=None) -> tuple[TrainState, dict]:
  """One PointINS optimisation step. Pure; jit with `donate_argnums=0` and
  `stage_capacities` (the batch's data-following capacities, a tuple) static."""
  grad_fn = jax.value_and_grad(compute_losses, has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, state.teacher_params, batch, rng, state.step,
                                   total_steps, config, stage_capacities)
  optimizer = build_optimizer(config, total_steps)
  updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  momentum = schedules.ema_momentum(state.step, total_steps, config.semantic.ema_base)
  new_teacher = jax.tree.map(lambda t, s: momentum * t + (1.0 - momentum) * s,
                             state.teacher_params, new_params)
  # A non-finite loss or gradient must never reach the parameters or a checkpoint.
  ok = jnp.isfinite(loss) & _all_finite(grads)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  new_state = TrainState(
      step=state.step + 1,
      params=keep(new_params, state.params),
      teacher_params=keep(new_teacher, state.teacher_params),
      opt_state=keep(new_opt_state, state.opt_state),
      num_skipped=state.num_skipped + (~ok).astype(jnp.int32))
  metrics = dict(metrics)
  metrics.update({
      "grad_norm": optax.global_norm(grads),
      "param_norm": optax.global_norm(state.params),
      "learning_rate": learning_rate_schedule(config, total_steps)(state.step),
      "ema_momentum": momentum,
      "skipped": (~ok).astype(jnp.int32),
      "num_skipped": new_state.num_skipped,
  })
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, total_steps: int, state_sharding,
                    batch_sharding, replicated):
  """The jit-compiled `step(state, batch, rng, stage_capacities)` with explicit shardings
  and the state donated; one compilation per distinct `stage_capacities` tuple (static: a
  short ladder, see model.configs; None = the fixed capacities)."""
  def step(state, batch, rng, stage_capacities):
    return train_step(state, batch, rng, config=config, total_steps=total_steps,
                      stage_capacities=stage_capacities)

  step.__name__ = "train_step"  # the name compile counting and profiles see
  return jax.jit(step, in_shardings=(state_sharding, batch_sharding, replicated),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,),
                 static_argnums=(3,))
