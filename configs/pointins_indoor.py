"""PointINS pretraining, indoor (Table 9, right column).

Variants (`--config configs/pointins_indoor.py:VARIANT`):
  demo        tiny model on built-in synthetic-indoor rooms generated on the fly; a few
              minutes on a 2-core CPU (the README's main job).
  synthetic   base model on synthetic-indoor scenes prepared on disk (data.root).
  scannet     ScanNet, 800 epochs, alpha_zipf 0.1.
  scannet200  ScanNet200, 800 epochs, alpha_zipf 1.3.
  s3dis       S3DIS (Area 5 held out), 3000 epochs, alpha_zipf 0.1.
  large       the 108M encoder (enc depths 3,3,3,12,3, widths 48..512) for
              multi-dataset pretraining (Structured3D + ScanNet + S3DIS roots).
Add `,runlocal` for a smoke-test sized run of any variant.
"""
from configs import common


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="demo", runlocal=False)
  config = common.pretrain_config("indoor")
  variant = arg.variant
  if variant == "demo":
    config = common.make_tiny(config)
    config.data.dataset = "synthetic-indoor"
    config.data.root = ""  # generate rooms on the fly, no disk step
    config.data.num_scenes = 16
    config.data.synthetic_small = True
    config.data.buckets = (2048,)
    config.train.batch_size = 2
    config.train.total_steps = 120
    config.train.log_every = 10
    config.train.checkpoint_every = 40
    config.offset.k_nn = 32
    config.offset.tau_min = 10
    # A short CPU run: one compilation of fixed capacities beats fitting them (fitting
    # compiled 3 profiles in 50 steps, 6:00 wall vs 1:53 fixed, docs/performance.md). The
    # fixed capacities follow these sparse rooms, which pooling barely thins: 2048-point
    # views hold at most 2048 / 1926 / 1557 / 770 / 243 points per stage (160 views). The
    # default fractions (1, .5, .25, .125, .0625) cropped every view to about 800 points.
    config.model.capacity_steps_per_octave = 0
    config.model.stage_capacity_fractions = (1.0, 1.0, 0.8125, 0.4375, 0.125)
  elif variant == "synthetic":
    config.data.dataset = "synthetic-indoor"
    config.data.root = "data/synthetic-indoor"
  elif variant in ("scannet", "scannet200", "s3dis"):
    config.data.dataset = variant
    config.data.root = f"data/{variant}"
    config.semantic.alpha_zipf = {"scannet": 0.1, "scannet200": 1.3, "s3dis": 0.1}[variant]
    config.train.epochs = {"scannet": 800, "scannet200": 800, "s3dis": 3000}[variant]
  elif variant == "large":
    from pointins_jax.model.configs import model_config  # pylint: disable=import-outside-toplevel
    config.model = model_config("large")
    config.model.in_channels = 9
    config.data.dataset = "scannet"
    config.data.root = "data/scannet"
    config.data.extra_roots = ("data/structured3d", "data/s3dis")
  else:
    raise ValueError(f"Unknown variant {variant!r} of configs/pointins_indoor.py; use demo, "
                     "synthetic, scannet, scannet200, s3dis or large.")
  if arg.runlocal:
    config = common.make_tiny(config)
    config.train.total_steps = 4
    config.train.batch_size = 2
    config.train.log_every = 1
  return config
