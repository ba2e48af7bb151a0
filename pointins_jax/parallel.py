"""Device mesh, multi-host start-up and batch placement for data parallelism.

Parameters are replicated and the batch is sharded along its leading (scene) axis on
the `data` mesh axis. Plain `jit` with `NamedSharding` inserts the gradient all-reduce
itself, so no shard_map (and none of its psum pitfalls) is needed.
"""
from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pointins_jax import compilation

DATA_AXIS = "data"


def maybe_initialize_distributed(config) -> None:
  """Starts multi-host JAX when the config or the environment asks for it.

  `config.distributed.enabled=True`, or the standard coordinator variables
  (JAX_COORDINATOR_ADDRESS / SLURM / OMPI) being set, triggers
  `jax.distributed.initialize()`, which reads the cluster layout from them.
  """
  dist = config.get("distributed", None)
  wanted = bool(dist is not None and dist.get("enabled", False))
  wanted |= "JAX_COORDINATOR_ADDRESS" in os.environ
  if not wanted:
    return
  kwargs = {}
  if dist is not None:
    for key in ("coordinator_address", "num_processes", "process_id"):
      value = dist.get(key, None)
      if value not in (None, "", -1):
        kwargs[key] = value
  jax.distributed.initialize(**kwargs)


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str = "config.train.batch_size"):
  devices = mesh.devices.size
  if batch_size <= 0:
    raise ValueError(f"{field}={batch_size} must be positive (a multiple of the {devices} "
                     "devices of the mesh).")
  if batch_size % devices:
    raise ValueError(f"{field}={batch_size} is not divisible by the {devices} devices of the "
                     f"mesh; set it to a multiple of {devices}.")


def check_writable(workdir: str) -> None:
  """Creates `workdir` and writes a probe file there, so an unusable folder fails at the
  start, not at the first checkpoint. Raises OSError naming the folder and the fix."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check"):
      pass
  except OSError as error:
    raise OSError(error.errno, f"cannot write the run folder ({error.strerror}); pass a "
                  "writable --workdir", workdir) from error


def start_run(config, workdir: str) -> tuple[Mesh, bool]:
  """Common start of a training job: hosts joined, mesh built, config saved.

  Returns (mesh over every device, whether this is the main process). Process 0 writes
  `workdir/config.json`. Turns on the persistent compilation cache (`compilation`).
  """
  maybe_initialize_distributed(config)
  compilation.enable_persistent_cache()
  mesh = make_mesh()
  check_batch_divisible(config.train.batch_size, mesh)
  is_main = jax.process_index() == 0
  check_writable(workdir)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  return mesh, is_main


def step_capacities(host_batch: dict, planner: compilation.CapacityPlanner) -> tuple[int, ...]:
  """The static stage capacities every process uses for this host batch.

  Each process fits capacities (`stage_capacities`) to its own slice of the batch; they must
  compile the same program, so with several processes the element-wise maxima of the
  capacities and of the real counts (`stage_point_counts`) over processes are taken first,
  then `planner` (identical on every process, as its inputs are) picks the profile.
  """
  caps = np.asarray(host_batch["stage_capacities"], np.int32).reshape(-1)
  counts = np.asarray(host_batch["stage_point_counts"], np.int32).reshape(-1)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    both = np.asarray(multihost_utils.process_allgather(np.stack([caps, counts])))
    caps, counts = np.max(both, axis=0)
  return planner.choose(caps, counts)


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Places a host batch (numpy, global on one process) sharded along its first axis.

  With several processes each one holds its own slice of the global batch
  (`shard_index`/`shard_count` in the loader); the global array is assembled from them.
  """
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
