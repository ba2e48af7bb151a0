"""Probing / finetuning on indoor data (ScanNet-style classes).

`--config configs/probe_indoor.py:MODE_TASK[,demo]` with MODE in {linear, decoder,
finetune} and TASK in {semseg, insseg, panseg}; add `--config.pretrained=EXPORT_DIR`
(from experiments.pretrain). `demo` probes on synthetic-indoor rooms generated on the
fly with a CPU-sized budget.
"""
from configs import probe_common


def get_config(arg=None):
  return probe_common.get_probe_config("indoor", arg, default_variant="linear_semseg")
