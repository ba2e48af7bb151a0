"""PointINS pretraining, outdoor (Table 9, left column).

Variants (`--config configs/pointins_outdoor.py:VARIANT`):
  demo           tiny model on built-in synthetic-outdoor sweeps generated on the fly.
  synthetic      base model on synthetic-outdoor sweeps prepared on disk (data.root).
  nuscenes       nuScenes lidar, 50 epochs, alpha_zipf 1.3.
  semantickitti  SemanticKITTI, 50 epochs, alpha_zipf 1.3.
  large          the 108M encoder for nuScenes + SemanticKITTI + Waymo pretraining.
Add `,runlocal` for a smoke-test sized run of any variant.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="demo", runlocal=False)
  config = common.pretrain_config("outdoor")
  variant = arg.variant
  if variant == "demo":
    config = common.make_tiny(config)
    config.data.dataset = "synthetic-outdoor"
    config.data.root = ""
    config.data.num_scenes = 16
    config.data.synthetic_small = True
    config.data.buckets = (2048,)
    config.train.batch_size = 2
    config.train.total_steps = 120
    config.train.log_every = 10
    config.train.checkpoint_every = 40
  elif variant == "synthetic":
    config.data.dataset = "synthetic-outdoor"
    config.data.root = "data/synthetic-outdoor"
  elif variant in ("nuscenes", "semantickitti"):
    config.data.dataset = variant
    config.data.root = f"data/{variant}"
  elif variant == "large":
    from pointins_jax.model.configs import model_config  # pylint: disable=import-outside-toplevel
    config.model = model_config("large")
    config.model.in_channels = 4
    config.data.dataset = "nuscenes"
    config.data.root = "data/nuscenes"
    config.data.extra_roots = ("data/semantickitti",)
  else:
    raise ValueError(f"Unknown variant {variant!r} of configs/pointins_outdoor.py; use demo, "
                     "synthetic, nuscenes, semantickitti or large.")
  if arg.runlocal:
    config = common.make_tiny(config)
    config.train.total_steps = 4
    config.train.batch_size = 2
    config.train.log_every = 1
  return config
