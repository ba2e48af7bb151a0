"""Probing / finetuning on outdoor LiDAR data (SemanticKITTI-19 classes).

`--config configs/probe_outdoor.py:MODE_TASK[,demo]`; see configs/probe_indoor.py.
"""
from configs import probe_common


def get_config(arg=None):
  return probe_common.get_probe_config("outdoor", arg, default_variant="linear_panseg")
