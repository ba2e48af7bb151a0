"""The paper's comparisons (Tables 3, 5, 8, 10, 13) at small scale on synthetic data.

  python -m experiments.study --config configs/study_indoor.py --workdir runs/study_indoor
  python -m experiments.study --config configs/study_outdoor.py:tiny,tables=table3 \
      --workdir /tmp/study_smoke

Every run is one pretraining variant with the same step budget, then a linear probe with
the same budget, for each seed; Table 13 scores unsupervised instances from the exports.
Each finished run's small record (metrics, wall time, config hash) goes to the study
config's `records_dir` (committed under docs/study/), so a rerun, even on a fresh checkout,
skips finished runs whose config is unchanged and regenerates the report
(`report_path`, e.g. docs/results.md, figures beside it) from the records; unfinished runs
resume from their checkpoints (WORKDIR/pretrain/<variant>__seed<k>, WORKDIR/runs/<name>/).
"""
from __future__ import annotations

import os
import sys
import time

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments.fit_prior import load_config
from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.study import execution
from pointins_jax.study import planning
from pointins_jax.study import reporting

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (file.py:variant).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (runs, report.md, figures).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Write report.md from the runs finished so far (missing cells n/a); "
    "run nothing.")
flags.mark_flags_as_required(["config", "workdir"])


def pretrain_base(study):
  """The pretraining config of every variant, with the study's budget applied."""
  config = load_config(study.pretrain_config)
  config.train.total_steps = int(study.pretrain_steps)
  config.train.batch_size = int(study.batch_size)
  config.train.checkpoint_every = max(1, int(study.pretrain_steps) // 4)
  config.train.log_every = max(1, int(study.pretrain_steps) // 4)
  config.train.progress_bar = bool(study.inner_progress_bars)
  config.train.tensorboard = False  # the study's record is result.json + report.md
  # The offset-quality monitor (pointins/monitor.py): its final figures join every row.
  config.train.eval_every = int(study.offset_eval_every)
  config.train.num_eval_scenes = int(study.offset_eval_scenes)
  config.data.num_scenes = int(study.num_scenes)
  _override(config, study.data_overrides)
  _override(config, study.pretrain_overrides)
  return config


def _override(config, overrides) -> None:
  """Applies ((dotted key, value), ...) to `config`; KeyError naming an unknown field."""
  for key, value in overrides:
    parent, _, leaf = key.rpartition(".")
    node = planning.lookup(config, parent) if parent else config
    if leaf not in node:
      raise KeyError(f"study override {key!r}: the config has no field {leaf!r}.")
    node[leaf] = value


def probe_base(study, ceiling: bool = False, detection: str = ""):
  """The probe config of every run (`ceiling`: of the supervised ceiling row; `detection`:
  of Table 11's runs in that mode), with the study's budget applied."""
  if detection:
    config = load_config(study.detection_probe_config.format(mode=detection))
    steps = int(study.detection_steps)
  else:
    config = load_config(study.ceiling_probe_config if ceiling else study.probe_config)
    steps = int(study.ceiling_steps if ceiling else study.probe_steps)
  config.train.total_steps = steps
  config.train.batch_size = int(study.batch_size)
  config.train.checkpoint_every = max(1, steps // 4)
  config.train.log_every = max(1, steps // 4)
  config.train.progress_bar = bool(study.inner_progress_bars)
  config.train.tensorboard = False
  config.train.num_eval_scenes = int(study.num_eval_scenes)
  config.train.num_figures = 0
  config.data.num_scenes = int(study.num_scenes)
  _override(config, study.data_overrides)
  _override(config, study.probe_overrides)
  if ceiling:
    config.pretrained = ""
    # From random init the encoder must learn at the head's rate (finetuning a pretrained
    # encoder scales it down).
    config.optim.encoder_lr_scale = 1.0
  if detection == "finetune":
    config.data.label_fraction = float(study.detection_label_fraction)
  return config




def fit_prior(spec: dict, pretrain_config, seed: int, path: str) -> dict:
  """Fits a Table 5 prior (spec {kind: 'fit', source, fraction}) on the training scenes,
  saves it to `path` (.npz) and returns the `magnitude_prior` dict that loads it."""
  from pointins_jax.data import loader  # pylint: disable=import-outside-toplevel
  from pointins_jax.pointins import priors  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    source = loader.scene_source(pretrain_config.data)
    items = list(range(len(source)))
    fit_fn = {"labels": priors.fit_empirical_prior, "hdbscan": priors.fit_hdbscan_prior}
    if spec["source"] not in fit_fn:
      raise ValueError(f"study prior source {spec['source']!r}: use labels or hdbscan.")
    fit = fit_fn[spec["source"]](items, float(spec["fraction"]), seed, source.__getitem__)
    fit.prior.save(path + ".tmp.npz")
    os.replace(path + ".tmp.npz", path)  # a half-written prior must not be reused
  return dict(kind="file", path=os.path.abspath(path))


def ensure_export(run: planning.Run, base, workdir: str) -> str:
  """The export/ folder of the run's variant and seed, pretraining (or resuming) it first.

  Shared by the variant's probe and unsup runs. RANDOM_INIT: an export of freshly
  initialised weights (for Table 13's random-init offsets), no training.
  """
  from pointins_jax import export as export_lib  # pylint: disable=import-outside-toplevel
  pretrain_dir = pretrain_dir_of(run, workdir)
  export_dir = os.path.join(pretrain_dir, "export")
  # Never reuse another config's export or checkpoints (a changed study config, same
  # --workdir).
  execution.claim_folder(pretrain_dir, execution.config_hash(
      dict(seed=run.seed, overrides=run.overrides, pretrain=base.to_dict())))
  if os.path.isfile(os.path.join(export_dir, "config.json")):  # written last by the export
    return export_dir
  config = base.copy_and_resolve_references()
  config.seed = run.seed
  for key, value in run.override_dict().items():
    if isinstance(value, dict) and value.get("kind") == planning.FIT_PRIOR:
      value = fit_prior(value, config, run.seed, os.path.join(pretrain_dir, "prior.npz"))
    parent, _, leaf = key.rpartition(".")
    planning.lookup(config, parent)[leaf] = value
  if run.pretrained:
    from pointins_jax.pointins import loop  # pylint: disable=import-outside-toplevel
    loop.train_and_evaluate(config, pretrain_dir)
  else:
    import jax  # pylint: disable=import-outside-toplevel
    from pointins_jax.pointins import train  # pylint: disable=import-outside-toplevel
    state = jax.jit(lambda rng: train.init_train_state(config, rng, total_steps=1))(
        jax.random.key(run.seed))
    if config.train.eval_every > 0:  # the floor of the offset-quality figures
      from pointins_jax import metric_writer  # pylint: disable=import-outside-toplevel
      from pointins_jax.pointins import monitor  # pylint: disable=import-outside-toplevel
      writer = metric_writer.MetricWriter(pretrain_dir, tensorboard=False)
      writer.write(0, monitor.evaluate(config, state.teacher_params, log=logging.info))
      writer.close()
    export_lib.export_encoder(export_dir, config, state)
  return export_dir


def pretrain_dir_of(run: planning.Run, workdir: str) -> str:
  """WORKDIR/pretrain/<variant>__seed<k>: the pretraining run a variant's runs share."""
  return os.path.join(workdir, "pretrain", f"{run.variant}__seed{run.seed}")


def offset_quality(run: planning.Run, workdir: str) -> dict:
  """The offset-quality figures of the run's pretraining, last record and `*_start` from the
  step-0 record ({} when none were logged)."""
  from pointins_jax.pointins import monitor  # pylint: disable=import-outside-toplevel
  records = monitor.history(pretrain_dir_of(run, workdir))
  if not records:
    return {}
  out = {f"{k}_start": float(records[0][k]) for k in monitor.KEYS}
  out.update({k: float(records[-1][k]) for k in monitor.KEYS})
  return {k: v for k, v in out.items() if k in planning.OFFSET_QUALITY}


def make_runner(study, workdir: str):
  """(run, run_dir) -> metrics, the real runner of `execution.execute`."""
  pretrain, probe = pretrain_base(study), probe_base(study)
  ceiling = probe_base(study, ceiling=True)
  detection = {f"detect_{m}": probe_base(study, detection=m)
               for m in planning.DETECTION_MODES} if probe.task == "panseg" else {}

  def runner(run: planning.Run, run_dir: str) -> dict:
    if run.kind == "unsup":
      from pointins_jax.probe import unsupervised  # pylint: disable=import-outside-toplevel
      result = unsupervised.run(ensure_export(run, pretrain, workdir), pretrain.data.dataset,
                                out_dir=run_dir, num_scenes=int(study.unsup_scenes),
                                batch_size=int(study.batch_size), log=logging.info)
      metrics = {m: dict(result[m]) for m in planning.UNSUP_METHODS}
      metrics["PointINS"].update(offset_quality(run, workdir))  # the offsets it grouped
      return metrics
    from pointins_jax.probe import loop  # pylint: disable=import-outside-toplevel
    supervised = run.variant == planning.SUPERVISED
    if run.kind in detection:
      config = detection[run.kind].copy_and_resolve_references()
      config.seed = run.seed
      config.pretrained = ensure_export(run, pretrain, workdir) if run.pretrained else ""
      record = loop.train_and_evaluate(config, os.path.join(run_dir, "probe"))
      return {k: float(record[k]) for k in planning.DETECTION_METRICS}
    config = (ceiling if supervised else probe).copy_and_resolve_references()
    config.seed = run.seed
    config.pretrained = ensure_export(run, pretrain, workdir) if run.pretrained else ""
    record = loop.train_and_evaluate(config, os.path.join(run_dir, "probe"))
    metrics = {k: float(record[k]) for k in planning.PROBE_METRICS[config.task]}
    if run.variant == planning.RANDOM_INIT and pretrain.train.eval_every > 0:
      ensure_export(run, pretrain, workdir)  # scores the random-init offsets (the floor)
    metrics.update(offset_quality(run, workdir))
    return metrics

  return runner, pretrain, probe, ceiling, detection


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  import jax  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  study, workdir = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Seeds of one variant compile the same programs: a persistent cache compiles each once.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
  runner, pretrain, probe, ceiling, detection = make_runner(study, workdir)
  plan = planning.make_plan(study, pretrain, probe.task)
  records_dir, report_path = (_in_repo(study.records_dir), _in_repo(study.report_path))
  fingerprint = execution.make_fingerprint(study, pretrain, probe, ceiling, detection)
  if _REPORT_ONLY.value:
    records = execution.finished(plan, workdir, records_dir, fingerprint, print)
  else:
    records = execution.execute(plan, workdir, runner, records_dir=records_dir,
                                fingerprint=fingerprint)
  model = pretrain.model
  budget = {
      "pretraining": f"{study.pretrain_steps} steps x batch {study.batch_size} "
                     f"({study.pretrain_config})",
      "probe": f"{study.probe_steps} steps x batch {study.batch_size} ({study.probe_config}"
               + (f", overrides {list(study.probe_overrides)}" if study.probe_overrides else "")
               + ")",
      "supervised ceiling": f"{study.ceiling_steps} steps x batch {study.batch_size} "
                            f"({study.ceiling_probe_config}, random init, encoder at the "
                            "head's learning rate)",
      **({"detection (Table 11)": f"{study.detection_steps} steps x batch "
                                  f"{study.batch_size} ({study.detection_probe_config}; "
                                  f"finetune on {study.detection_label_fraction:.0%} of the "
                                  "labelled scenes, at least one)"} if detection else {}),
      "data overrides": str(list(study.data_overrides)) or "none",
      "pretraining overrides": str(list(study.pretrain_overrides)) or "none",
      "scenes": f"{study.num_scenes} synthetic training scenes ({pretrain.data.dataset}), "
                f"{study.num_eval_scenes} validation scenes (probe), {study.unsup_scenes} "
                "(Table 13)",
      "model": f"PTv3 encoder depths {tuple(model.enc_depths)} widths "
               f"{tuple(model.enc_channels)}",
  }
  machine = {"jax.devices()": str(jax.devices()), "CPU count": os.cpu_count()}
  path = reporting.write_report(workdir, plan, records, pretrain, budget=budget,
                                machine=machine, wall_s=time.perf_counter() - start,
                                robust_tolerance=float(study.robust_tolerance),
                                title=f"PointINS synthetic-{study.kind} study",
                                report_path=report_path, header=(
                                    "<!-- Generated by: python -m experiments.study "
                                    + " ".join(sys.argv[1:]) + " (from the run records in "
                                    f"{study.records_dir or 'WORKDIR/runs'}; do not edit) -->"))
  print(f"wrote {path}")


def _in_repo(path: str) -> str:
  """A relative config path taken from the repository root (not the working directory)."""
  if not path or os.path.isabs(path):
    return path
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)


if __name__ == "__main__":
  cli.run_absl(main, name="study")
