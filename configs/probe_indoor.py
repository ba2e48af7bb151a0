"""Probing / finetuning on indoor data (ScanNet-style classes).

`--config configs/probe_indoor.py:MODE_TASK[,demo]` with MODE in {linear, decoder,
finetune} and TASK in {semseg, insseg, panseg}; add `--config.pretrained=EXPORT_DIR`
(from experiments.pretrain). `demo` probes on synthetic-indoor rooms generated on the
fly with a CPU-sized budget.
"""
from configs import common
from configs import probe_common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="linear_semseg", demo=False,
                         dataset="synthetic-indoor", root="")
  config = probe_common.probe_config("indoor", arg.variant)
  config.data.dataset = arg.dataset
  config.data.root = arg.root
  if arg.demo:
    config.data.dataset = "synthetic-indoor"
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
