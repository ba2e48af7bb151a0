"""Probing / fine-tuning entry point (linear | decoder | finetune x semseg | insseg | panseg,
and decoder | finetune x detection: Table 11's CenterPoint-style detector).

  python -m experiments.probe --config configs/probe_indoor.py:linear_insseg,demo \
      --config.pretrained=runs/demo/export --workdir runs/probe_demo
  python -m experiments.probe --config configs/probe_outdoor.py:linear_panseg,demo \
      --config.pretrained=runs/demo_outdoor/export --workdir runs/probe_outdoor
  python -m experiments.probe --config configs/probe_outdoor.py:decoder_detection,demo \
      --config.pretrained=runs/demo_outdoor/export --workdir runs/det_demo

Without --config.pretrained the backbone starts from random weights (the baseline).
Re-running with the same --workdir resumes from its latest checkpoint. Writes
metrics.jsonl, checkpoints/, eval.json (full-scan validation), figures/*.png (detection:
also predictions/<scene>.npz and BEV figures).
"""
from absl import flags
from ml_collections import config_flags

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.probe import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (file.py:variant).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, eval).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run_absl(main, name="probe")
