"""Helpers shared by config files (big_vision style `file.py:arg` arguments)."""
from __future__ import annotations

import ml_collections


def parse_arg(arg, **defaults) -> ml_collections.ConfigDict:
  """Parses 'variant,key=value,flag' into a ConfigDict over `defaults`.

  The first bare word sets `variant` (when `variant` is a default); other bare words
  set boolean defaults to True. Values are cast to the default's type.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for i, token in enumerate(t.strip() for t in arg.split(",") if t.strip()):
    if "=" in token:
      key, value = token.split("=", 1)
      if key not in defaults:
        raise ValueError(f"Unknown config argument {key!r}; known: {sorted(defaults)}.")
      kind = type(defaults[key])
      out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    elif i == 0 and "variant" in defaults:
      out.variant = token
    elif token in defaults and isinstance(defaults[token], bool):
      out[token] = True
    else:
      raise ValueError(f"Unknown config argument {token!r}; known: {sorted(defaults)}.")
  return out


def pretrain_config(kind: str) -> ml_collections.ConfigDict:
  """Fields shared by the indoor and outdoor pretraining configs (Table 9 columns)."""
  from pointins_jax.data.config import data_config  # pylint: disable=import-outside-toplevel
  from pointins_jax.model.configs import model_config  # pylint: disable=import-outside-toplevel

  indoor = kind == "indoor"
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config(kind)
  config.model = model_config("base")
  config.model.in_channels = 9 if indoor else 4

  config.heads = ml_collections.ConfigDict(dict(
      proj_hidden=4096, proj_bottleneck=256, num_prototypes=4096, offset_hidden=256,
      # The offset head reads the last three encoder stages (paper Appendix A); 5 = all.
      offset_stages=3))

  # Semantic branch: Sonata recipe + DOS's softmaps and Zipf prior (see semantic.py).
  config.semantic = ml_collections.ConfigDict(dict(
      target="softmap",  # 'softmap' (DOS) | 'assignment' (Sonata, Sinkhorn per point)
      prototype_prior="zipf",  # 'zipf' (DOS) | 'uniform' (Sonata)
      alpha_zipf=0.1 if indoor else 1.3,  # Table 9 (ScanNet 0.1, ScanNet200 1.3, S3DIS 0.1)
      sinkhorn_iters=3,
      student_temperature=0.1,
      teacher_temp_start=0.04, teacher_temp_end=0.07, teacher_temp_warmup=0.05,
      ema_base=0.994,
      cross_view=True))

  # Offset branch (Sec. 3.2, Algorithms 1-2, Table 9).
  config.offset = ml_collections.ConfigDict(dict(
      enabled=True,  # False = the DOS baseline
      weight=0.25,  # lambda_off
      warmup_ratio=0.1,  # offset loss joins after this fraction of training
      cross_view=True,
      odr=True, scr=True,
      layout="odr_then_scr",  # | 'scr_then_odr' (Table 8)
      student_odr_kl=False,  # Table 8 dagger: ODR as a student-side KL loss
      magnitude_prior=(dict(kind="gamma", a=0.24, theta=2.53) if indoor
                       else dict(kind="lognormal", mu=0.0, sigma=0.76)),
      direction_prior="uniform_sphere",
      num_clusters=20, kmeans_iters=10,
      k_nn=150 if indoor else 20,
      tau_d=1.2 if indoor else 1.0,
      tau_min=30 if indoor else 10,
      centroid_source="predicted",  # Algorithm 2; 'points' = Eq. 4
      # SCR's kNN: 'auto' (kernels.knn.resolve_impl) | 'pallas' | 'host' | 'xla'
      knn_impl="auto"))

  config.optim = ml_collections.ConfigDict(dict(
      lr=4e-3 if indoor else 2e-3, weight_decay=0.04, warmup_ratio=0.05, clip_norm=3.0,
      b1=0.9, b2=0.999))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=16, epochs=800 if indoor else 50, total_steps=0,
      log_every=10, checkpoint_every=1000, keep_checkpoints=3, tensorboard=True,
      progress_bar=True, export_weights="teacher",
      # Offset quality on validation scans (pointins/monitor.py): every this many steps,
      # also before training and at the end; 0 = off. Labels are read for it only.
      eval_every=0, num_eval_scenes=2,
      stop_after_steps=0))  # > 0: stop (as if killed) after this many steps of this run
  config.distributed = ml_collections.ConfigDict(dict(
      enabled=False, coordinator_address="", num_processes=-1, process_id=-1))
  return config


def make_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a pretraining config to the CPU-sized tiny model and heads."""
  from pointins_jax.model.configs import model_config  # pylint: disable=import-outside-toplevel
  in_channels = config.model.in_channels
  config.model = model_config("tiny")
  config.model.in_channels = in_channels
  config.heads.update(dict(proj_hidden=128, proj_bottleneck=64, num_prototypes=128,
                           offset_hidden=64))
  return config
