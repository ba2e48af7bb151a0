"""The pretraining loop: data -> sharded train step -> metrics -> checkpoints -> export.

Read top to bottom: set up the mesh and data, create (or restore) the sharded state,
then step, log and checkpoint until `total_steps`; finally export the encoder. With
`train.eval_every` > 0 the offset quality (`monitor`) is scored on validation scans before
training, every `eval_every` steps and at the end, and drawn to WORKDIR/offset_quality.png.
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import numpy as np
from tqdm import tqdm

from pointins_jax import checkpointing
from pointins_jax import compilation
from pointins_jax import export as export_lib
from pointins_jax import metric_writer
from pointins_jax import parallel
from pointins_jax.data import loader as loader_lib
from pointins_jax.model import configs as model_configs
from pointins_jax.pointins import monitor
from pointins_jax.pointins import train as train_lib


def resolve_total_steps(config, num_scenes: int) -> int:
  """`train.total_steps`, or epochs x scenes / batch size when it is 0."""
  if config.train.total_steps > 0:
    return int(config.train.total_steps)
  if config.train.epochs <= 0:
    raise ValueError("Set config.train.total_steps or config.train.epochs to a positive value.")
  return max(1, int(config.train.epochs * num_scenes // config.train.batch_size))


def _host_metrics(metrics) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) PointINS pretraining into `workdir`; returns the last metrics."""
  mesh, is_main = parallel.start_run(config, workdir)

  # Data: each process reads its own slice of the global batch.
  capacities = functools.partial(model_configs.stage_capacities, config.model)
  iterator = loader_lib.make_pretrain_iterator(
      config.data, seed=config.seed, batch_size=config.train.batch_size // jax.process_count(),
      stage_capacities_fn=capacities, shard_index=jax.process_index(),
      shard_count=jax.process_count())
  total_steps = resolve_total_steps(config, loader_lib.num_scenes(config.data))

  # State: shapes from eval_shape, created already replicated on the mesh.
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  init = functools.partial(train_lib.init_train_state, config, total_steps=total_steps)
  state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh),
                                jax.eval_shape(init, init_rng))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.train.keep_checkpoints,
                                    save_every=config.train.checkpoint_every)
  start, state = checkpointing.create_or_restore(ckpt, init, (init_rng,), state_sharding,
                                                 iterator)

  planner = compilation.CapacityPlanner()  # few compiled stage-capacity profiles
  compiles = compilation.counter()  # listening before the first compilation
  compiles_before = compiles.snapshot("train_step")  # other runs of this process
  step_fn = train_lib.make_train_step(config, total_steps, state_sharding,
                                      parallel.batch_sharded(mesh), parallel.replicated(mesh))
  writer = metric_writer.MetricWriter(workdir, enabled=is_main,
                                      tensorboard=config.train.tensorboard, resume_step=start)
  last = {}
  bar = tqdm(range(start, total_steps), initial=start, total=total_steps, desc="pretrain",
             disable=not is_main or not config.train.progress_bar, dynamic_ncols=True)
  t_log, steps_since_log, points_since_log = time.perf_counter(), 0, 0
  dropped = loader_lib.DroppedData()  # crops and skipped scenes between log lines
  stop_after = config.train.get("stop_after_steps", 0)  # simulates a kill (tests, preemption)
  eval_every = int(config.train.get("eval_every", 0))
  offsets_fn = train_lib.make_offsets_fn(config) if eval_every > 0 and is_main else None

  def monitor_offsets(step):
    """Offset quality of the weights the export will hold, logged at `step`."""
    weights = (state.params if config.train.get("export_weights", "teacher") == "student"
               else state.teacher_params)
    writer.write(step, monitor.evaluate(config, weights, offsets_fn,
                                        log=bar.write if config.train.progress_bar else print))
    monitor.plot(workdir)

  # Leaving by any path waits for the save in flight; SIGTERM saves and raises Preempted.
  with ckpt, writer, checkpointing.StopSignal() as stop:
    if is_main and start == 0 and monitor.due(0, total_steps, eval_every):
      monitor_offsets(0)
    for step in bar:
      if stop_after and step >= start + stop_after:
        return last  # leaving `ckpt` waits for pending periodic saves only, like a killed job
      host_batch = next(iterator)
      dropped.add(host_batch)
      batch = parallel.put_batch(
          {k: host_batch[k] for k in train_lib.BATCH_KEYS}, mesh)
      state, metrics = step_fn(state, batch, jax.random.fold_in(step_rng, step),
                               parallel.step_capacities(host_batch, planner))
      steps_since_log += 1
      points_since_log += int(np.sum(host_batch["valid"]))
      if (step + 1) % config.train.log_every == 0 or step + 1 == total_steps or step == start:
        last = _host_metrics(metrics)
        if bool(last.pop("stage_overflow")):
          model_configs.raise_overflow(config.model)
        # Fetching the metrics waited for the device, so wall time / steps is step time.
        elapsed = time.perf_counter() - t_log
        num_compiles, compile_seconds = (
            now - before for now, before in zip(compiles.snapshot("train_step"), compiles_before))
        last.update(step_time=elapsed / steps_since_log,
                    points_per_second=points_since_log / max(elapsed, 1e-9), **dropped.pop(),
                    compiles=num_compiles, compile_seconds=compile_seconds)
        t_log, steps_since_log, points_since_log = time.perf_counter(), 0, 0
        record = writer.write(step + 1, last)
        if is_main:
          print(json.dumps({k: record[k] for k in ("step", "loss", "loss_semantic",
                                                   "semantic_kl", "loss_offset", "skipped")
                            if k in record}), flush=True)
          bar.set_postfix(loss=f"{float(last['loss']):.4f}")
      ckpt.save_or_stop(step + 1, state, iterator, total_steps, stop)
      if is_main and monitor.due(step + 1, total_steps, eval_every):
        monitor_offsets(step + 1)
    ckpt.wait()
    # Every process: orbax's save is collective (process 0 alone would wait for the rest).
    export_lib.export_encoder(os.path.join(workdir, "export"), config, state)
  return last
