"""Train-step overhead of the offset branch: DOS baseline vs full PointINS, same process.

  python -m benchmarks.bench_train_step            # demo config (tiny model), 2 scenes x 2 views
  python -m benchmarks.bench_train_step --points 4096 --repeats 10
  python -m benchmarks.bench_train_step --model base --points 8192   # GPU-sized

Both variants run the same jit-compiled `train_step` on the same batches; the baseline
sets `config.offset.enabled=False` (the DOS baseline: no offset head loss, no ODR/SCR).
The step counter is placed after the offset warm-up so the PointINS step pays for every
term. Reports the median wall time per step over `--repeats` steps after compilation and
the ratio PointINS / DOS (the paper reports about 1.25x). `--knn-impls host,xla` times the
PointINS step once per kNN implementation of SCR.
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median_seconds
from configs import common
from configs import pointins_indoor
from pointins_jax.data import loader as loader_lib
from pointins_jax.model import configs as model_configs
from pointins_jax.pointins import train as train_lib


def make_config(model: str, points: int, offset_enabled: bool, knn_impl: str = "auto"):
  config = pointins_indoor.get_config("demo")
  if model != "tiny":
    config.model = model_configs.model_config(model)
    config.model.in_channels = 9
    config.heads = common.pretrain_config("indoor").heads
  config.data.buckets = (points,)
  config.offset.enabled = offset_enabled
  config.offset.knn_impl = knn_impl
  return config


def first_batch(config):
  """The pretraining loader's first host batch for `config` (seed 0)."""
  iterator = loader_lib.make_pretrain_iterator(
      config.data, seed=0, batch_size=config.train.batch_size,
      stage_capacities_fn=functools.partial(model_configs.stage_capacities, config.model))
  return next(iterator)


def build_step(config, host_batch, total_steps: int):
  """(jitted train_step, its (state, batch, rng) arguments) for timing or profiling."""
  state = jax.jit(functools.partial(train_lib.init_train_state, config,
                                    total_steps=total_steps))(jax.random.key(0))
  # Past the offset warm-up (10% of training): every loss term is live.
  state = state.replace(step=jnp.asarray(total_steps // 2, jnp.int32))
  step = jax.jit(functools.partial(train_lib.train_step, config=config,
                                   total_steps=total_steps))
  batch = {k: jnp.asarray(host_batch[k]) for k in train_lib.BATCH_KEYS}
  # No donation here: the same state is stepped repeatedly, each call is one full step.
  return step, (state, batch, jax.random.key(1))


def time_step(config, host_batch, total_steps: int, repeats: int) -> float:
  step, args = build_step(config, host_batch, total_steps)
  return median_seconds(lambda: step(*args)[1]["loss"], repeats)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="tiny", help="tiny | base | large")
  parser.add_argument("--points", type=int, default=2048, help="points per view (bucket)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--knn-impls", default="auto",
                      help="comma-separated offset.knn_impl values for the PointINS rows")
  args = parser.parse_args()
  base_config = make_config(args.model, args.points, offset_enabled=True)
  host_batch = first_batch(base_config)
  real = int(np.sum(host_batch["valid"]))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); model "
        f"{args.model}; batch {base_config.train.batch_size} scenes x 2 views x {args.points} "
        f"capacity ({real} real points); median of {args.repeats} steps")
  print("| variant | step ms | points/s | vs DOS |")
  print("|---|---|---|---|")
  baseline = None
  variants = [("DOS baseline (offset off)", False, "auto")]
  variants += [(f"PointINS (ODR + SCR), kNN {impl}", True, impl)
               for impl in args.knn_impls.split(",")]
  for name, enabled, knn_impl in variants:
    seconds = time_step(make_config(args.model, args.points, enabled, knn_impl), host_batch,
                        100, args.repeats)
    baseline = baseline or seconds
    print(f"| {name} | {seconds * 1e3:.0f} | {real / seconds:,.0f} | {seconds / baseline:.2f}x |",
          flush=True)


if __name__ == "__main__":
  main()
