"""Run in a subprocess with 4 forced CPU devices (XLA_FLAGS must precede `import jax`).

Compares one PointINS train step on a 4-device data-parallel mesh with the same step on
one device: loss and updated parameters must agree within 1e-5.
"""
import functools
import os
import sys

# 4 CPU devices share the machine's cores: on a loaded 2-core machine a collective's
# rendezvous can wait past XLA's default termination timeout (an abort seen in CI while
# another job ran), so allow it 15 minutes.
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=900")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from configs import pointins_indoor  # noqa: E402
from kernels import knn as knn_lib  # noqa: E402
from pointins_jax import compilation  # noqa: E402
from pointins_jax import parallel  # noqa: E402
from pointins_jax.data import loader as loader_lib  # noqa: E402
from pointins_jax.model import configs as model_configs  # noqa: E402
from pointins_jax.pointins import train as train_lib  # noqa: E402


def run_step(config, devices, host_batch, total_steps):
  mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
  rng = jax.random.key(0)
  init = lambda r: train_lib.init_train_state(config, r, total_steps)
  abstract = jax.eval_shape(init, rng)
  sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
  state = jax.jit(init, out_shardings=sharding)(rng)
  step = train_lib.make_train_step(config, total_steps, sharding, parallel.batch_sharded(mesh),
                                   parallel.replicated(mesh))
  batch = parallel.put_batch({k: host_batch[k] for k in train_lib.BATCH_KEYS}, mesh)
  caps = parallel.step_capacities(host_batch, compilation.CapacityPlanner())
  # Step past the offset warm-up so every loss term contributes.
  state = state.replace(step=jax.numpy.asarray(total_steps // 2, jax.numpy.int32))
  # The gradient itself, under the same shardings as the step (batch split over `data`).
  grad_fn = jax.jit(
      jax.grad(lambda p, b, r: train_lib.compute_losses(
          p, state.teacher_params, b, r, state.step, total_steps, config, caps)[0]),
      in_shardings=(sharding.params, parallel.batch_sharded(mesh), parallel.replicated(mesh)))
  grads = grad_fn(state.params, batch, jax.random.key(1))
  new_state, metrics = step(state, batch, jax.random.key(1), caps)
  return jax.device_get(new_state.params), jax.device_get(metrics), jax.device_get(grads)


def main():
  flags.FLAGS.mark_as_parsed()
  assert jax.device_count() == 4, jax.devices()
  # Several devices: SCR's kNN stays in the graph (a host callback would gather the batch).
  assert knn_lib.resolve_impl("auto") == "xla", knn_lib.resolve_impl("auto")
  config = pointins_indoor.get_config("demo")
  config.data.num_scenes = 4
  config.train.batch_size = 4
  iterator = loader_lib.make_pretrain_iterator(
      config.data, seed=0, batch_size=4,
      stage_capacities_fn=functools.partial(model_configs.stage_capacities, config.model))
  host_batch = next(iterator)
  p4, m4, g4 = run_step(config, jax.devices(), host_batch, 10)
  p1, m1, g1 = run_step(config, jax.devices()[:1], host_batch, 10)
  # A skipped (non-finite) update would leave both parameter sets untouched and equal.
  assert int(m4["skipped"]) == 0 and int(m1["skipped"]) == 0, (m4["skipped"], m1["skipped"])
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
  # Gradients: per-device shapes differ ([1, ...] vs [4, ...]), so XLA fuses differently and
  # rounding differs at 1e-7; the discrete steps of SCR (K-means assignment, kNN, ranks)
  # can flip on near-ties and carry that to ~1e-3 of a leaf's scale. A summed-instead-of-
  # averaged gradient (the shard_map trap) would be 4x off and fail by far.
  for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(b).max()) + 1e-8)
  # Updated parameters within 1e-5 wherever the update direction is stable. Adam's first
  # update is lr * g / (|g| + eps), i.e. lr * sign(g) for |g| >> eps: an entry whose
  # gradient is within noise of 0 may move either way, bounded by 2 lr. That lr is the
  # optimizer's own (its step count is 0 here), not the one logged at state.step.
  lr = float(train_lib.learning_rate_schedule(config, 10)(0))
  for a, b, g in zip(jax.tree.leaves(p4), jax.tree.leaves(p1), jax.tree.leaves(g1)):
    stable = np.abs(g) > 1e-5
    np.testing.assert_allclose(a[stable], b[stable], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_less(np.abs(a - b), 2 * lr + 1e-6)
  print("SHARDED_OK", float(m4["loss"]), float(m1["loss"]))


if __name__ == "__main__":
  main()
