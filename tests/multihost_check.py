"""One process of a 2-process CPU pretraining run (jax.distributed on localhost).

  python tests/multihost_check.py PROCESS_ID PORT WORKDIR {killed,resumed} OUT.json

Pretrains the demo model for 4 steps (checkpoint every 2); `killed` stops after 3 steps as
a killed job would, `resumed` continues from the checkpoint. Writes to OUT.json what this
process saw: the logged losses, per-leaf sums of its copy of the parameters at every saved
step, and the scene indices its loader read, in order.
"""
import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from configs import pointins_indoor  # noqa: E402
from pointins_jax import checkpointing  # noqa: E402
from pointins_jax import metric_writer  # noqa: E402
from pointins_jax.data import loader as loader_lib  # noqa: E402
from pointins_jax.pointins import loop  # noqa: E402

NUM_SCENES = 6
TOTAL_STEPS = 4


def main():
  flags.FLAGS.mark_as_parsed()
  process_id, port, workdir, phase, out = sys.argv[1:6]
  config = pointins_indoor.get_config("demo")
  config.data.num_scenes = NUM_SCENES
  config.train.update(total_steps=TOTAL_STEPS, log_every=1, checkpoint_every=2, batch_size=2,
                      tensorboard=False, progress_bar=False,
                      stop_after_steps=3 if phase == "killed" else 0)
  config.distributed.update(enabled=True, coordinator_address=f"localhost:{port}",
                            num_processes=2, process_id=int(process_id))
  seen = {"records": [], "params": {}, "reads": []}

  read = loader_lib.SyntheticSource.__getitem__
  def logged_read(self, index):
    seen["reads"].append(int(index))
    return read(self, index)
  loader_lib.SyntheticSource.__getitem__ = logged_read

  write = metric_writer.MetricWriter.write
  def logged_write(self, step, metrics):
    record = write(self, step, metrics)  # returns the record on every process
    seen["records"].append({"step": record["step"], "loss": record["loss"]})
    return record
  metric_writer.MetricWriter.write = logged_write

  save = checkpointing.Checkpointer.save
  def logged_save(self, step, state, *args, **kwargs):
    saved = save(self, step, state, *args, **kwargs)
    if saved:  # this process's replica of every parameter
      seen["params"][int(step)] = [
          float(np.asarray(leaf.addressable_data(0), np.float64).sum())
          for leaf in jax.tree.leaves(state.params)]
    return saved
  checkpointing.Checkpointer.save = logged_save

  loop.train_and_evaluate(config, workdir)
  seen.update(process_index=jax.process_index(), process_count=jax.process_count(),
              devices=jax.device_count())
  with open(out, "w", encoding="utf-8") as f:
    json.dump(seen, f)


if __name__ == "__main__":
  main()
