"""Study execution: running a plan resumably, per-run records and config fingerprints."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from typing import Callable, Mapping, Optional

from pointins_jax.study.planning import Plan, Run, SUPERVISED


def run_dir(workdir: str, run: Run) -> str:
  """WORKDIR/runs/<run name>: the run's checkpoints, eval files and figures."""
  return os.path.join(workdir, "runs", run.name)


def result_path(workdir: str, run: Run, records_dir: str = "") -> str:
  """Where the run's record lives: RECORDS/<run name>.json, else WORKDIR/runs/<name>/
  result.json."""
  if records_dir:
    return os.path.join(records_dir, f"{run.name}.json")
  return os.path.join(run_dir(workdir, run), "result.json")


Fingerprint = Callable[[Run], str]


def load_result(workdir: str, run: Run, records_dir: str = "",
                fingerprint: Optional[Fingerprint] = None, log=None) -> Optional[dict]:
  """The finished run's record ({'run', 'metrics', 'wall_s', 'config_hash', ...}) or None.

  With `fingerprint`, a record made under another config (its `config_hash` differs) is
  stale: None, and `log` says so (the run is redone and its record replaced).
  """
  path = result_path(workdir, run, records_dir)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  if fingerprint is not None and record.get("config_hash") != fingerprint(run):
    if log is not None:
      log(f"study: {path} was made under another config (hash "
          f"{record.get('config_hash')} != {fingerprint(run)}); redoing {run.name}.")
    return None
  return record


def _write_json(path: str, record: dict) -> None:
  # Write-then-rename: a run killed mid-write must not look finished.
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2, allow_nan=True)
  os.replace(tmp, path)


def finished(plan: Plan, workdir: str, records_dir: str = "",
             fingerprint: Optional[Fingerprint] = None, log=None) -> dict:
  """{run name: record} of the plan's runs that have a (current) record."""
  records = {run.name: load_result(workdir, run, records_dir, fingerprint, log)
             for run in plan.runs}
  return {name: record for name, record in records.items() if record is not None}


Runner = Callable[[Run, str], dict]


def claim_folder(folder: str, config_hash: str) -> None:
  """Marks `folder` (a run's checkpoints) as made under `config_hash`.

  Raises:
    ValueError: the folder already holds a run made under another config: resuming its
      checkpoints would mix two configs, so it must be deleted (or another --workdir used).
  """
  path = os.path.join(folder, "config_hash")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      found = f.read().strip()
    if found != config_hash:
      raise ValueError(f"{folder} holds checkpoints made under another config (hash {found}, "
                       f"now {config_hash}); delete it or use a fresh --workdir.")
    return
  os.makedirs(folder, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(config_hash)


def execute(plan: Plan, workdir: str, runner: Runner, *, records_dir: str = "",
            fingerprint: Optional[Fingerprint] = None, progress: bool = True,
            log=print) -> dict:
  """Runs every unfinished run of `plan`; returns {run name: record}.

  Args:
    runner: (run, run_dir) -> metrics. probe runs: {metric: float}; unsup runs:
      {method: {metric: float}}. It may write anything under run_dir and may reuse
      WORKDIR/pretrain/<variant>__seed<k> (shared between a variant's probe and unsup runs).
    records_dir: where the small per-run records go (e.g. docs/study/indoor, committed so
      a fresh checkout continues the study); '' = WORKDIR/runs/<name>/result.json.
    fingerprint: run -> hash of everything that determines its result (configs, budget);
      stored in the record, and a record with another hash is redone.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  records = finished(plan, workdir, records_dir, fingerprint, log)
  pending = [run for run in plan.runs if run.name not in records]
  if records:
    log(f"study: {len(records)} of {len(plan.runs)} runs already finished, skipped.")
  if records_dir:
    os.makedirs(records_dir, exist_ok=True)
  bar = tqdm(pending, desc="study runs", disable=not progress, dynamic_ncols=True)
  for run in bar:
    bar.set_postfix_str(run.name)
    folder = run_dir(workdir, run)
    os.makedirs(folder, exist_ok=True)
    if fingerprint is not None:
      claim_folder(folder, fingerprint(run))
    # Time spent by earlier, interrupted attempts (they resume from checkpoints) counts too.
    spent_path = os.path.join(folder, "wall_s_before.json")
    spent = json.load(open(spent_path, encoding="utf-8")) if os.path.isfile(spent_path) else 0.0
    start = time.perf_counter()
    try:
      metrics = runner(run, folder)
    except BaseException:
      _write_json(spent_path, spent + time.perf_counter() - start)
      raise
    record = dict(run=dataclasses.asdict(run), metrics=metrics,
                  wall_s=spent + time.perf_counter() - start,
                  finished=datetime.datetime.now().isoformat(timespec="seconds"))
    if fingerprint is not None:
      record["config_hash"] = fingerprint(run)
    _write_json(result_path(workdir, run, records_dir), record)
    records[run.name] = record
  return records


# Fields that change how a run looks, not what it computes: left out of the config hash.
_COSMETIC = ("progress_bar", "tensorboard", "log_every", "checkpoint_every",
             "keep_checkpoints", "num_figures")


def _strip(tree):
  if isinstance(tree, dict):
    return {k: _strip(v) for k, v in sorted(tree.items()) if k not in _COSMETIC}
  if isinstance(tree, (list, tuple)):
    return [_strip(v) for v in tree]
  return tree


def make_fingerprint(study, pretrain, probe, ceiling, detection: Optional[Mapping] = None):
  """run -> sha256 (16 hex digits) of everything that determines its result: the run, the
  configs it uses with the study's budget applied (pretraining: every run but the ceiling,
  whose random-init encoder has none; probe: probe runs, the ceiling's for the ceiling;
  Table 13's scene count: unsup runs; `detection[run.kind]`: Table 11's runs). A change
  elsewhere (e.g. the ceiling's steps) leaves the other runs' records valid."""
  def fingerprint(run: Run) -> str:
    used = dict(run=dataclasses.asdict(run))
    if run.variant != SUPERVISED:
      used["pretrain"] = pretrain.to_dict()
    if run.kind == "probe":
      used["probe"] = (ceiling if run.variant == SUPERVISED else probe).to_dict()
    elif run.kind.startswith("detect_"):
      used["probe"] = detection[run.kind].to_dict()
    else:
      used["unsup"] = dict(scenes=int(study.unsup_scenes), batch_size=int(study.batch_size))
    return config_hash(used)
  return fingerprint


def config_hash(tree: Mapping) -> str:
  """sha256 (16 hex digits) of a config tree, cosmetic fields (`_COSMETIC`) left out."""
  blob = json.dumps(_strip(dict(tree)), sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]
