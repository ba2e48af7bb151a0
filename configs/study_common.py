"""Fields shared by the study configs (`experiments.study`, `pointins_jax.study`)."""
from __future__ import annotations

import ml_collections

from configs import common


def study_config(kind: str, arg) -> ml_collections.ConfigDict:
  """The study config for 'indoor' | 'outdoor'.

  Variants (`--config configs/study_KIND.py:VARIANT[,tables=table3+table13][,seeds=2]`):
    small  3 seeds, every table, the demo's tiny model, 64 synthetic scenes (indoor: rooms
           with 4 distinct furniture kinds, so that a supervised ceiling is measurable on a
           CPU budget), 300 pretraining + 300 probe steps per run and a 1200-step supervised
           ceiling; Tables 3+13 are 27 runs per kind (~5 min each on a 2-core CPU, ~2.5 h).
    tiny   1 seed, 2 + 2 steps, 4 scenes: a smoke test of the whole pipeline (tests).
  `tables` picks tables ('+'-separated, since ',' separates config arguments); `seeds`
  sets how many seeds (0 .. seeds-1).
  """
  from pointins_jax.study import planning  # pylint: disable=import-outside-toplevel
  indoor = kind == "indoor"
  tables = [t for t in planning.TABLES if not (indoor and t == "table11")]  # detection: outdoor
  arg = common.parse_arg(arg, variant="small", tables="+".join(tables), seeds=0)
  config = ml_collections.ConfigDict()
  config.kind = kind
  # Every run starts from these configs; the study overrides only config.offset fields
  # (the variants) and the budget fields below.
  config.pretrain_config = f"configs/pointins_{kind}.py:demo"
  config.probe_config = ("configs/probe_indoor.py:linear_insseg,demo" if indoor
                         else "configs/probe_outdoor.py:linear_panseg,demo")
  config.tables = arg.tables
  config.seeds = (0, 1, 2)
  # The fixed budget, identical for every run.
  config.pretrain_steps = 300
  config.probe_steps = 300
  config.batch_size = 2  # scenes per step, pretraining and probing
  config.num_scenes = 64  # synthetic training scenes (pretraining and probe training)
  config.num_eval_scenes = 8  # synthetic validation scenes scored by the probe
  config.unsup_scenes = 8  # validation scenes scored in Table 13
  # ((dotted key, value), ...) overrides of the data config of pretraining and probing
  # (every run sees the same scenes).
  # Indoor: 4 large, distinct kinds. With all 18 thing classes a 600-step supervised tiny
  # PTv3 reaches AP50 ~6% (mIoU 15%) on these sparse rooms (class confusion, not
  # grouping), too low to tell methods apart. With bed, sofa, table, bookshelf, bathtub a
  # 1200-step one reached AP50 43% (mIoU 66%): bed 91, sofa 74, bookshelf 40, bathtub 13
  # and table 0 (never found, even at AP25), so table and bathtub gave way to cabinet.
  config.data_overrides = ((("data.synthetic_kinds", ("bed", "sofa", "bookshelf",
                                                      "cabinet")),) if indoor else ())
  # ((dotted key, value), ...) overrides of the pretraining config: the settings the
  # committed records were made with, pinned so that retuning the demo configs does not
  # invalidate them (tests/test_study_records.py). Indoor: the demo's stage capacities
  # before they followed its rooms (its views were cropped to about 800 points).
  config.pretrain_overrides = ((("model.stage_capacity_fractions",
                                 (1.0, 0.5, 0.25, 0.125, 0.0625)),) if indoor else ())
  # ((dotted key, value), ...) overrides of the probe config, for every probe run (the
  # ceiling's included).
  config.probe_overrides = ()
  # The ceiling row: finetuning a random-init encoder with the labels (instance labels
  # included) for `ceiling_steps`, encoder at the head's learning rate.
  config.ceiling_probe_config = ("configs/probe_indoor.py:finetune_insseg,demo" if indoor
                                 else "configs/probe_outdoor.py:finetune_panseg,demo")
  config.ceiling_steps = 1200
  # Each finished run's record (metrics, wall time, config hash): committed, so a fresh
  # checkout continues the study; and the report generated from them (figures beside it).
  # Relative paths are from the repository root; '' = under --workdir.
  config.records_dir = f"docs/study/{kind}"
  config.report_path = "docs/results.md" if indoor else "docs/outdoor/results.md"
  # Offset quality of every pretraining (pointins/monitor.py): steps between evaluations
  # (also at step 0 and the end) and validation scenes each; the final figures join every
  # row of the report.
  config.offset_eval_every = 50
  config.offset_eval_scenes = 2
  # Table 5: both parametric priors at the paper's values, whatever the base config uses.
  config.priors = ml_collections.ConfigDict(dict(
      gamma=dict(kind="gamma", a=0.24, theta=2.53),
      lognormal=dict(kind="lognormal", mu=0.0, sigma=0.76)))
  config.prior_fraction = 0.01  # of the training scenes (at least one) for fitted priors
  config.warmup_ratios = (0.0, 0.1, 0.3)  # Table 10
  # Table 11 (outdoor): the detection probe on each export, per mode; finetuning sees this
  # fraction of the labelled training scenes (the paper's 1%; at least one scene).
  config.detection_probe_config = "configs/probe_outdoor.py:{mode}_detection,demo"
  config.detection_steps = 300
  config.detection_label_fraction = 0.01
  # Prior robustness holds when the priors' primary-metric means span at most this
  # (fraction, i.e. 0.05 = 5 points) or 2 seed stds, whichever is larger.
  config.robust_tolerance = 0.05
  config.inner_progress_bars = False  # the study shows one bar over runs
  if arg.variant == "tiny":
    config.seeds = (0,)
    config.pretrain_steps = 2
    config.probe_steps = 2
    config.num_scenes = 4
    config.num_eval_scenes = 1
    config.unsup_scenes = 1
    config.offset_eval_every = 2
    config.offset_eval_scenes = 1
    config.ceiling_steps = 2
    config.detection_steps = 2
    config.data_overrides = ()
    config.records_dir = ""  # smoke tests keep everything under --workdir
    config.report_path = ""
  elif arg.variant != "small":
    raise ValueError(f"Unknown variant {arg.variant!r} of configs/study_{kind}.py; use small "
                     "or tiny.")
  if arg.seeds > 0:
    config.seeds = tuple(range(arg.seeds))
  return config
