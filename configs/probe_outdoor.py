"""Probing / finetuning on outdoor LiDAR data (SemanticKITTI-19 classes; nuScenes boxes).

`--config configs/probe_outdoor.py:MODE_TASK[,demo]`; see configs/probe_indoor.py.
Detection (Table 11): `decoder_detection` / `finetune_detection` with dataset=nuscenes
(`root=` a prepared nuScenes folder) or the synthetic-outdoor `demo`.
"""
from configs import probe_common


def get_config(arg=None):
  return probe_common.get_probe_config("outdoor", arg, default_variant="linear_panseg")
