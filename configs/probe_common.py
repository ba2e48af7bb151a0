"""Fields shared by the probing configs (ptv3_ssl_spec.md §4.7, §7.3)."""
from __future__ import annotations

import ml_collections

MODES = ("linear", "decoder", "finetune")
TASKS = ("semseg", "insseg", "panseg", "detection")
# CenterPoint's nuScenes heads (class groups) and their circle-NMS min_radius (compared
# with the squared centre distance, m^2, as CenterPoint does).
DETECTION_GROUPS = (("car",), ("truck", "construction_vehicle"), ("bus", "trailer"),
                    ("barrier",), ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"))
DETECTION_NMS_MIN_RADIUS = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)


def split_variant(variant: str):
  """'linear_insseg' -> ('linear', 'insseg')."""
  try:
    mode, task = variant.split("_")
  except ValueError:
    mode, task = "", ""
  if mode not in MODES or task not in TASKS:
    raise ValueError(f"probe variant {variant!r}: use MODE_TASK with MODE in {MODES} and TASK "
                     f"in {TASKS}, e.g. configs/probe_indoor.py:linear_insseg.")
  return mode, task


def probe_config(kind: str, variant: str) -> ml_collections.ConfigDict:
  from pointins_jax.data.config import data_config  # pylint: disable=import-outside-toplevel
  mode, task = split_variant(variant)
  indoor = kind == "indoor"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mode = mode
  config.task = task
  config.pretrained = ""  # an export/ folder of experiments.pretrain; "" = random init
  # Or a Pointcept/Sonata checkpoint (.pth needs torch; .npz state_dict does not), loaded
  # into model_variant (e.g. large for Sonata's 108M encoder).
  config.pretrained_pointcept = ""
  config.data = data_config(kind)
  config.data.label_fraction = 1.0  # Table 7: fraction of labelled training scenes
  config.model_variant = "tiny"  # used only without a pretrained export
  config.num_classes = 20 if indoor else 19
  config.optim = ml_collections.ConfigDict(dict(
      lr=2e-3, weight_decay=0.05 if task == "insseg" else 0.02, warmup_ratio=0.05,
      clip_norm=3.0, encoder_lr_scale=0.1))
  config.grouping = ml_collections.ConfigDict(dict(
      # Smallest linking radius (Pointcept: 1.5 voxels of 2 cm / 5 cm); sparse scans get
      # more, following their sampling spacing (probe/grouping.py).
      radius=0.03 if indoor else 0.075,
      k_neighbors=64, min_points=100 if indoor else 50))
  config.train = ml_collections.ConfigDict(dict(
      batch_size=8, total_steps=2000, log_every=20, checkpoint_every=500, keep_checkpoints=2,
      tensorboard=True, progress_bar=True, eval_every=0, num_eval_scenes=-1,
      num_figures=3))
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=-1, process_id=-1))
  if task == "detection":
    add_detection_fields(config)
  return config


def add_detection_fields(config) -> None:
  """Table 11: a CenterPoint-style BEV head on the backbone's per-point features."""
  config.num_classes = 10  # boxes.DETECTION_CLASSES (nuScenes detection benchmark)
  config.optim.weight_decay = 0.01
  config.data.with_boxes = True  # views carry their boxes (moved with the augmentation)
  config.data.augment.rotate_xy_p = 0.0  # upright boxes cannot tilt
  config.data.max_boxes = 128  # padded box slots per view (more are dropped and counted)
  config.detection = ml_collections.ConfigDict(dict(
      class_groups=DETECTION_GROUPS, nms_min_radius=DETECTION_NMS_MIN_RADIUS,
      # BEV grid in the (centred) view frame: (x_min, y_min, x_max, y_max) m, square cells.
      xy_range=(-51.2, -51.2, 51.2, 51.2), bev_cell=0.8,
      with_velocity=False,  # regress (vx, vy); set for nuScenes (boxes carry velocity)
      bev_channels=64, neck_channels=64, head_channels=64,
      min_overlap=0.1, min_radius=2,  # CenterPoint's gaussian_overlap / min_radius (cells)
      min_box_points=1,  # boxes with fewer of the view's points get no target
      # L1 weights of (dx, dy, z, log l, log w, log h, sin, cos, vx, vy); loss weight of reg.
      code_weights=(1.0,) * 8 + (0.2, 0.2), reg_weight=0.25,
      topk=500, score_threshold=0.1, post_max_size=83, max_detections=500))


def get_probe_config(kind: str, arg, default_variant: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of configs/probe_{indoor,outdoor}.py: MODE_TASK[,demo][,dataset=][,root=].

  `demo` probes on synthetic scenes generated on the fly with a CPU-sized budget.
  """
  from configs import common  # pylint: disable=import-outside-toplevel
  synthetic = f"synthetic-{kind}"
  arg = common.parse_arg(arg, variant=default_variant, demo=False, dataset=synthetic, root="")
  config = probe_config(kind, arg.variant)
  config.data.dataset = arg.dataset
  config.data.root = arg.root
  if config.task == "detection":
    config.detection.with_velocity = arg.dataset == "nuscenes"
  if arg.demo:
    config.data.dataset = synthetic
    config.data.num_scenes = 16
    config.data.synthetic_small = True
    config.data.buckets = (2048,)
    config.train.update(batch_size=2, total_steps=150, log_every=10, checkpoint_every=50,
                        num_eval_scenes=4)
    config.optim.lr = 5e-3
    if config.task == "detection":  # small sweeps cropped to 2048 points: a smaller grid
      config.detection.update(xy_range=(-38.4, -38.4, 38.4, 38.4), bev_channels=32,
                              neck_channels=32, head_channels=32, with_velocity=False)
  return config
