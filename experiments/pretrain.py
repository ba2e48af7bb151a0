"""PointINS pretraining entry point.

  python -m experiments.pretrain --config configs/pointins_indoor.py:demo --workdir runs/demo
  python -m experiments.pretrain --config configs/pointins_indoor.py:scannet \
      --config.data.root=data/scannet --config.train.batch_size=8 --workdir runs/scannet

Re-running with the same --workdir resumes from its latest checkpoint.
"""
from absl import flags
from absl import logging
from ml_collections import config_flags

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.pointins import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (file.py:variant).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, export).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # orbax logs every save at INFO; crops and skipped steps are in the metrics instead.
  logging.set_verbosity(logging.WARNING)
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run_absl(main, name="pretrain")
