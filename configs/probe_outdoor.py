"""Probing / finetuning on outdoor LiDAR data (SemanticKITTI-19 classes).

`--config configs/probe_outdoor.py:MODE_TASK[,demo]`; see configs/probe_indoor.py.
"""
from configs import common
from configs import probe_common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="linear_panseg", demo=False,
                         dataset="synthetic-outdoor", root="")
  config = probe_common.probe_config("outdoor", arg.variant)
  config.data.dataset = arg.dataset
  config.data.root = arg.root
  if arg.demo:
    config.data.dataset = "synthetic-outdoor"
    config.data.num_scenes = 16
    config.data.synthetic_small = True
    config.data.buckets = (2048,)
    config.train.batch_size = 2
    config.train.total_steps = 150
    config.train.log_every = 10
    config.train.checkpoint_every = 50
    config.train.num_eval_scenes = 4
    config.optim.lr = 5e-3
  return config
