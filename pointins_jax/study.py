"""The paper's comparison tables at small scale: planning, resumable execution, report.

`experiments.study` drives this module; nothing here imports JAX, so the planning,
aggregation, claim verdicts and report are testable with fake run results.

A *variant* is a set of overrides on the pretraining config (dotted keys under
`offset.`), e.g. `{"offset.odr": False}`. Its canonical name comes from the overrides
that differ from the base config, so rows that mean the same run in different tables
(full PointINS = '+ODR+SCR' = 'Gamma prior' (indoor) = 'warm-up 0.1') share one name and
are computed once. A *run* is a variant x seed x kind:
  probe   pretrain the variant (skipped for 'random_init' and 'supervised'), then
          linear-probe it ('supervised': finetune a random-init encoder with the labels,
          the ceiling row of every table);
  unsup   Table 13: unsupervised instances from the variant's exported offset head;
  detect_decoder / detect_finetune   Table 11 (outdoor): the CenterPoint-style detection
          probe on the variant's export, encoder frozen / finetuned on `detection_label_
          fraction` of the labelled scenes.
Each run's result record (run, metrics, wall time, config hash) lands in
`RECORDS/<run name>.json` (the study config's `records_dir`, committed under docs/) or
`WORKDIR/runs/<run name>/result.json`; a record whose config hash matches marks the run
finished, so re-running the study, even on a fresh checkout, skips it (the pretraining and
probe loops resume from their own orbax checkpoints inside an unfinished run).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

RANDOM_INIT = "random_init"  # the floor row of every table: probe of an untrained encoder
# The ceiling row of every probe table: the encoder finetuned from random init with the
# probe's labels (instance labels included).
SUPERVISED = "supervised"
CEILING = "ceiling"  # table_specs marker of the ceiling row
POINTINS = "pointins"  # the base pretraining config (offset branch + ODR + SCR)
DOS = "dos"  # offset.enabled=False: the DOS baseline, other offset fields are moot
TABLES = ("table3", "table5", "table8", "table10", "table11", "table13")
DETECTION_MODES = ("decoder", "finetune")  # Table 11's columns: decoder probing, finetuning
DETECTION_METRICS = ("mAP", "NDS")
# "Oracle": ground-truth offsets through PointINS's grouping, the ceiling of Table 13.
UNSUP_METHODS = ("PointINS", "HDBSCAN", "Felzenszwalb", "Oracle")
UNSUP_METRICS = ("mAP", "AP50", "AP25")
# Linear-probe metrics reported per task (fractions in [0, 1], from probe eval.json).
PROBE_METRICS = {"insseg": ("mIoU", "mAP", "AP50", "AP25"), "panseg": ("PQ", "SQ", "RQ", "mIoU")}
# Offset quality at the end of each variant's pretraining (`pointins.monitor.KEYS`, read
# from its metrics.jsonl by the runner): distances in metres, the rest fractions.
# `*_start`: the same figures before the first step (the monitor's step-0 record).
OFFSET_QUALITY = ("offset_dist_median_start", "offset_dist_median", "offset_dist_mean",
                  "offset_baseline_median", "offset_closer_fraction_start",
                  "offset_closer_fraction", "offset_unsup_AP25")
# (pipes escaped: the headers sit in markdown tables)
OFFSET_QUALITY_HEADER = (r"median \|x+o-c\| cm at step 0", r"median \|x+o-c\| cm",
                         r"mean \|x+o-c\| cm", r"zero offsets: median \|x-c\| cm",
                         "moved closer % at step 0", "moved closer %", "unsup AP25 %")
# The instance metric each claim is judged on.
PRIMARY_METRIC = {"insseg": "mAP", "panseg": "PQ"}
# A magnitude prior fitted at run time (Table 5): {"kind": "fit", "source": labels|hdbscan}.
FIT_PRIOR = "fit"


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class Run:
  """One unit of work with one result.json.

  Attributes:
    name: canonical run name, the folder under WORKDIR/runs ('<variant>__seed<k>', or
      'unsup-<variant>__seed<k>').
    variant: canonical variant name (RANDOM_INIT: no pretraining).
    kind: 'probe' | 'unsup'.
    seed: used for pretraining, probing and prior fitting.
    overrides: ((dotted key under the pretraining config, value), ...), sorted; only the
      ones that differ from the base config.
  """

  name: str
  variant: str
  kind: str
  seed: int
  overrides: tuple = ()

  @property
  def pretrained(self) -> bool:
    return self.variant not in (RANDOM_INIT, SUPERVISED)

  def override_dict(self) -> dict:
    return {k: _thaw(v) for k, v in self.overrides}


def run_name(kind: str, variant: str, seed: int) -> str:
  """The canonical run name: '<variant>__seed<k>' for probe runs, '<kind>-<variant>__seed<k>'
  for the others."""
  prefix = "" if kind == "probe" else f"{kind}-"
  return f"{prefix}{variant}__seed{seed}"


@dataclasses.dataclass(frozen=True)
class Row:
  """A table row: a label and the variant (canonical name) whose runs fill it."""

  label: str
  variant: str
  kind: str = "probe"
  method: str = ""  # unsup rows: which method of the unsup result (PointINS, HDBSCAN, ...)


@dataclasses.dataclass(frozen=True)
class Table:
  key: str
  title: str
  metrics: tuple
  rows: tuple  # of Row


@dataclasses.dataclass(frozen=True)
class Plan:
  tables: tuple  # of Table
  runs: tuple  # of Run, unique names, in execution order
  seeds: tuple
  task: str


def _freeze(value):
  """Hashable, order-independent form of a config value (dicts -> sorted item tuples)."""
  if isinstance(value, Mapping):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw(value):
  if isinstance(value, tuple) and value and all(
      isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
    return {k: _thaw(v) for k, v in value}
  return value


def lookup(config: Mapping, dotted: str):
  """config['a']['b'] for 'a.b'; KeyError naming the field when it does not exist."""
  node = config
  for part in dotted.split("."):
    if not isinstance(node, Mapping) and not hasattr(node, "keys"):
      raise KeyError(f"study override {dotted!r}: {part!r} is not a config field.")
    if part not in node:
      raise KeyError(f"study override {dotted!r}: the pretraining config has no field "
                     f"{part!r}.")
    node = node[part]
  return node


def _slug(value) -> str:
  if isinstance(value, Mapping):
    kind = value.get("kind", "")
    rest = "-".join(f"{k}{_slug(v)}" for k, v in sorted(value.items()) if k != "kind")
    return f"{kind}-{rest}" if rest else str(kind)
  if isinstance(value, bool):
    return "1" if value else "0"
  return str(value)


def canonical_variant(overrides: Mapping[str, Any], base: Mapping) -> tuple[str, tuple]:
  """(canonical name, effective overrides) of a variant on the base pretraining config.

  Overrides equal to the base value are dropped, so equivalent rows get one name. With
  offset.enabled False (the DOS baseline) the other offset fields never run, so they are
  dropped too.
  """
  effective = {}
  for key, value in overrides.items():
    if _freeze(value) != _freeze(_plain(lookup(base, key))):
      effective[key] = value
  if effective.get("offset.enabled", True) is False:
    return DOS, (("offset.enabled", False),)
  if not effective:
    return POINTINS, ()
  name = "_".join(f"{k.split('.')[-1]}={_slug(v)}" for k, v in sorted(effective.items()))
  name = re.sub(r"[^A-Za-z0-9._=+-]", "-", name)
  return name, tuple(sorted((k, _freeze(v)) for k, v in effective.items()))


def _plain(value):
  """A ConfigDict / FrozenConfigDict as plain dicts (anything else unchanged)."""
  if hasattr(value, "to_dict"):
    return value.to_dict()
  return value


def table_specs(study: Mapping, task: str) -> dict:
  """key -> (title, metrics, [(label, overrides)]) for every table.

  overrides: a dict of pretraining-config overrides, None (random init, the floor) or
  CEILING (supervised finetuning from random init).

  Args:
    study: the study config (fields `priors`, `prior_fraction`, `warmup_ratios`).
    task: the probe task, 'insseg' (indoor) | 'panseg' (outdoor).
  """
  if task not in PROBE_METRICS:
    raise ValueError(f"study probe task {task!r}: use insseg (indoor) or panseg (outdoor).")
  metrics = PROBE_METRICS[task]
  floor = ("Random init", None)
  ceiling = ("Supervised ceiling (finetune from random init)", CEILING)
  priors = _plain(study["priors"])
  fraction = float(study["prior_fraction"])
  return {
      "table3": ("Table 3: offset branch and regulariser ablation", metrics, [
          floor, ("DOS (no offset branch)", {"offset.enabled": False}),
          ("+ offset loss", {"offset.odr": False, "offset.scr": False}),
          ("+ ODR", {"offset.odr": True, "offset.scr": False}),
          ("+ SCR", {"offset.odr": False, "offset.scr": True}),
          ("+ ODR + SCR (PointINS)", {"offset.odr": True, "offset.scr": True}), ceiling]),
      "table5": ("Table 5: ODR magnitude prior", metrics, [
          floor, ("Gamma", {"offset.magnitude_prior": priors["gamma"]}),
          ("LogNormal", {"offset.magnitude_prior": priors["lognormal"]}),
          (f"Empirical ({fraction:.0%} of labels)", {"offset.magnitude_prior": dict(
              kind=FIT_PRIOR, source="labels", fraction=fraction)}),
          ("HDBSCAN (label-free)", {"offset.magnitude_prior": dict(
              kind=FIT_PRIOR, source="hdbscan", fraction=fraction)}),
          ("No regularisation (no ODR)", {"offset.odr": False}), ceiling]),
      "table8": ("Table 8: regulariser layout", metrics, [
          floor, ("ODR then SCR (PointINS)", {"offset.layout": "odr_then_scr",
                                              "offset.student_odr_kl": False}),
          ("SCR then ODR", {"offset.layout": "scr_then_odr"}),
          ("ODR as student-side KL", {"offset.student_odr_kl": True}), ceiling]),
      "table10": ("Table 10: offset-loss warm-up ratio", metrics, [floor] + [
          (f"warm-up {r:g}", {"offset.warmup_ratio": float(r)})
          for r in study["warmup_ratios"]] + [ceiling]),
  }


def parse_tables(tables) -> tuple:
  """'table3,table13' / 'table3+table13' / a sequence -> validated tuple of table keys."""
  if isinstance(tables, str):
    tables = [t for t in re.split(r"[,+\s]+", tables) if t]
  tables = tuple(tables)
  unknown = [t for t in tables if t not in TABLES]
  if unknown or not tables:
    raise ValueError(f"config.tables={tables!r}: unknown {unknown}; choose from {TABLES}.")
  return tables


def make_plan(study: Mapping, base_pretrain: Mapping, task: str) -> Plan:
  """Tables and the de-duplicated runs that fill them.

  Args:
    study: study config (`tables`, `seeds`, `priors`, `prior_fraction`, `warmup_ratios`).
    base_pretrain: the pretraining config every variant overrides (a ConfigDict or dict).
    task: probe task, 'insseg' | 'panseg'.
  """
  seeds = tuple(int(s) for s in study["seeds"])
  if not seeds:
    raise ValueError("config.seeds is empty; give at least one seed.")
  selected = parse_tables(study["tables"])
  specs = table_specs(study, task)
  tables, variants = [], {}  # variant name -> effective overrides (insertion = run order)

  def variant_of(overrides):
    if overrides is None or overrides is CEILING:
      name = RANDOM_INIT if overrides is None else SUPERVISED
      variants.setdefault(name, ())
      return name
    name, effective = canonical_variant(overrides, base_pretrain)
    variants.setdefault(name, effective)
    return name

  for key in selected:
    if key in ("table11", "table13"):
      continue
    title, metrics, rows = specs[key]
    tables.append(Table(key, title, metrics,
                        tuple(Row(label, variant_of(o)) for label, o in rows)))
  # Seed-major order: an interrupted study already has whole tables for the first seeds.
  # The ceiling first within a seed: it shows early whether the budget can measure
  # instances at all.
  order = sorted(variants, key=lambda v: v != SUPERVISED)
  runs = [Run(run_name("probe", v, s), v, "probe", s, variants[v]) for s in seeds
          for v in order]
  if "table11" in selected:
    if task != "panseg":
      raise ValueError("config.tables: table11 (detection) is an outdoor table; run it with "
                       "configs/study_outdoor.py.")
    dos = canonical_variant({"offset.enabled": False}, base_pretrain)
    rows = []
    for mode in DETECTION_MODES:
      for label, (variant, overrides) in (("Random init", (RANDOM_INIT, ())), ("DOS", dos),
                                          ("PointINS", (POINTINS, ()))):
        rows.append(Row(f"{label}, {mode}", variant, f"detect_{mode}"))
        variants.setdefault(variant, overrides)
    tables.append(Table("table11", "Table 11: detection (CenterPoint-style, decoder probing "
                        "and finetuning on few labels)", DETECTION_METRICS, tuple(rows)))
    runs += [Run(run_name(row.kind, row.variant, s), row.variant, row.kind, s,
                 variants[row.variant]) for s in seeds for row in rows]
  if "table13" in selected:
    # The unsupervised rows need exports only: PointINS pretrained and at random init.
    pointins = POINTINS
    rows = (Row("PointINS offsets (pretrained)", pointins, "unsup", "PointINS"),
            Row("PointINS offsets (random init)", RANDOM_INIT, "unsup", "PointINS"),
            Row("HDBSCAN", pointins, "unsup", "HDBSCAN"),
            Row("Felzenszwalb", pointins, "unsup", "Felzenszwalb"),
            Row("Ground-truth offsets (ceiling)", pointins, "unsup", "Oracle"))
    tables.append(Table("table13", "Table 13: unsupervised instances (class-agnostic)",
                        UNSUP_METRICS, rows))
    runs += [Run(run_name("unsup", v, s), v, "unsup", s, ()) for s in seeds
             for v in (pointins, RANDOM_INIT)]
  # Seed-major across kinds too: an interrupted study has every table of its first seeds.
  runs.sort(key=lambda r: seeds.index(r.seed))
  return Plan(tuple(tables), tuple(runs), seeds, task)


# ---------------------------------------------------------------------------- execution


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


# -------------------------------------------------------------------------- aggregation


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean and sample standard deviation (ddof=1; 0 for one seed) over n seeds."""

  mean: float
  std: float
  n: int

  def __str__(self) -> str:
    if self.n == 0 or not math.isfinite(self.mean):
      return "n/a"
    return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"  # metrics are fractions -> %


def mean_std(values: Sequence[float]) -> Stat:
  """Stat of the finite values (a NaN metric, e.g. no instance predicted, is dropped)."""
  values = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if len(values) == 0:
    return Stat(float("nan"), float("nan"), 0)
  return Stat(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0,
              len(values))


def _run_metrics(records: Mapping[str, dict], name: str, row: Row) -> Optional[dict]:
  record = records.get(name)
  if record is None:
    return None
  metrics = record["metrics"]
  return metrics[row.method] if row.kind == "unsup" else metrics


def aggregate(plan: Plan, records: Mapping[str, dict], metrics: Optional[Sequence[str]] = None
              ) -> dict:
  """{table key: {row label: {metric: Stat}}} over the plan's seeds.

  Args:
    metrics: the metrics to aggregate (default: each table's own); rows whose runs lack
      one get an empty Stat (n/a).
  """
  out = {}
  for table in plan.tables:
    rows = {}
    for row in table.rows:
      per_seed = [_run_metrics(records, run_name(row.kind, row.variant, s), row)
                  for s in plan.seeds]
      per_seed = [m for m in per_seed if m is not None]
      rows[row.label] = {k: mean_std([float(m[k]) for m in per_seed if k in m])
                         for k in (table.metrics if metrics is None else metrics)}
    out[table.key] = rows
  return out


# ------------------------------------------------------------------------------- claims


@dataclasses.dataclass(frozen=True)
class Claim:
  text: str
  verdict: str  # 'agrees' | 'disagrees' | 'inconclusive' | 'not run'
  evidence: str


def _variant_stat(plan: Plan, stats: dict, table: str, variant: str, metric: str
                  ) -> Optional[tuple[str, Stat]]:
  """(row label, Stat) of the first row of `table` filled by `variant`, or None."""
  for t in plan.tables:
    if t.key == table:
      for row in t.rows:
        if row.variant == variant:
          return row.label, stats[table][row.label][metric]
  return None


def better(a: Stat, b: Stat) -> str:
  """'agrees' when a's mean beats b's by more than the seed noise, 'disagrees' when it
  trails by more, else 'inconclusive'. Noise = sqrt(std_a^2 + std_b^2) (0 for one seed,
  where the sign alone decides; the report says so)."""
  if a.n == 0 or b.n == 0 or not (math.isfinite(a.mean) and math.isfinite(b.mean)):
    return "inconclusive"
  delta, noise = a.mean - b.mean, math.hypot(a.std, b.std)
  if delta > noise:
    return "agrees"
  if delta < -noise:
    return "disagrees"
  return "inconclusive"


def improves(a: Stat, b: Stat, resolves: Optional[bool]) -> str:
  """Verdict on 'a beats b': `better`, except that a gap within the seed noise reads
  'disagrees' when the metric is shown to resolve differences at this budget (`resolves`:
  the table's ceiling beats its floor, `resolution`) - a claimed gain that does not appear
  where the measurement can see one is not reproduced - and 'inconclusive' otherwise."""
  verdict = better(a, b)
  if verdict == "inconclusive" and a.n and b.n and resolves:
    return "disagrees"
  return verdict


def resolution(ceiling: Optional[tuple[str, Stat]], floor: Optional[tuple[str, Stat]]
               ) -> tuple[Optional[bool], str]:
  """(whether the ceiling row beats the floor row by more than the seed noise, evidence).
  None when either is missing (then a tie stays 'inconclusive')."""
  if ceiling is None or floor is None or not ceiling[1].n or not floor[1].n:
    return None, "no ceiling/floor to show the metric resolves differences"
  ok = better(ceiling[1], floor[1]) == "agrees"
  return ok, (f"{ceiling[0]} {ceiling[1]} vs {floor[0]} {floor[1]}: the metric "
              + ("resolves differences at this budget" if ok else
                 "does not separate ceiling from floor, ties are inconclusive"))


def _combine(verdicts: Sequence[str]) -> str:
  if not verdicts:
    return "not run"
  if all(v == "agrees" for v in verdicts):
    return "agrees"
  if any(v == "disagrees" for v in verdicts):
    return "disagrees"
  return "inconclusive"


def _beats_all(plan, stats, table, winner, losers, metric) -> tuple[str, str]:
  """Verdict and evidence that `winner` beats each of `losers` (variants) in `table`,
  judged with `improves` against the table's ceiling-vs-floor resolution."""
  top = _variant_stat(plan, stats, table, winner, metric)
  if top is None:
    return "not run", f"{table} not run"
  resolves, why = resolution(_variant_stat(plan, stats, table, SUPERVISED, metric),
                             _variant_stat(plan, stats, table, RANDOM_INIT, metric))
  verdicts, evidence = [], []
  for loser in losers:
    other = _variant_stat(plan, stats, table, loser, metric)
    if other is None:
      continue
    verdict = improves(top[1], other[1], resolves)
    verdicts.append(verdict)
    evidence.append(f"{top[0]} {top[1]} vs {other[0]} {other[1]} ({verdict})")
  return _combine(verdicts), f"{metric}: " + "; ".join(evidence) + f" [{why}]"


def claims(plan: Plan, stats: dict, base_pretrain: Mapping, *, robust_tolerance: float
           ) -> list[Claim]:
  """The paper's claims, each judged from the aggregated numbers.

  Args:
    stats: `aggregate(plan, records)`.
    robust_tolerance: prior robustness holds when the spread (max - min) of the priors'
      mean primary metric is within max(robust_tolerance, 2 x their mean seed std);
      metric units (fractions).
  """
  metric = PRIMARY_METRIC[plan.task]
  name = lambda overrides: canonical_variant(overrides, base_pretrain)[0]  # noqa: E731
  odr_only = name({"offset.odr": True, "offset.scr": False})
  scr_only = name({"offset.odr": False, "offset.scr": True})
  offset_only = name({"offset.odr": False, "offset.scr": False})
  out = []

  verdict, evidence = _beats_all(plan, stats, "table3", POINTINS, [DOS], metric)
  out.append(Claim("The offset branch with ODR and SCR improves instance metrics over DOS.",
                   verdict, evidence))
  # Semantic claims, judged on mIoU: the probe's semantic head learns at budgets where
  # instance metrics are still all zero.
  verdict, evidence = _beats_all(plan, stats, "table3", POINTINS, [RANDOM_INIT], "mIoU")
  out.append(Claim("Self-supervised pretraining beats a random-init encoder (linear-probe "
                   "mIoU).", verdict, evidence))
  dos, ours = (_variant_stat(plan, stats, "table3", v, "mIoU") for v in (DOS, POINTINS))
  if dos is None or ours is None or not dos[1].n or not ours[1].n:
    verdict, evidence = "not run", "table3 DOS / PointINS rows missing"
  else:
    # DOS clearly ahead refutes 'preserves'; a tie or PointINS ahead supports it.
    below = better(dos[1], ours[1]) == "agrees"
    verdict = "disagrees" if below else "agrees"
    evidence = (f"mIoU: {ours[0]} {ours[1]} vs {dos[0]} {dos[1]} (PointINS "
                + ("below DOS by more than the seed noise)" if below else
                   "not below DOS by more than the seed noise)"))
  out.append(Claim("PointINS preserves DOS's semantic quality (mIoU not clearly below DOS).",
                   verdict, evidence))
  verdict, evidence = _beats_all(plan, stats, "table3", POINTINS,
                                 [odr_only, scr_only, offset_only], metric)
  out.append(Claim("Both regularisers are needed (ODR + SCR beats either alone and neither).",
                   verdict, evidence))

  table5 = next((t for t in plan.tables if t.key == "table5"), None)
  if table5 is None:
    out.append(Claim("Results are robust to the choice of magnitude prior.", "not run",
                     "table5 not run"))
  else:
    prior_rows = [r for r in table5.rows if r.variant not in (RANDOM_INIT, scr_only)]
    prior_stats = {r.label: stats["table5"][r.label][metric] for r in prior_rows}
    finite = {k: s for k, s in prior_stats.items() if s.n > 0 and math.isfinite(s.mean)}
    if len(finite) < 2:
      verdict, evidence = "inconclusive", "fewer than two priors have results"
    elif max(s.mean for s in finite.values()) <= 0.0:
      # Equal zeros say the budget taught no prior anything, not that priors do not matter.
      verdict, evidence = "inconclusive", (f"every prior scores {metric} 0: " + "; ".join(
          f"{k} {s}" for k, s in finite.items()))
    else:
      means = [s.mean for s in finite.values()]
      spread = max(means) - min(means)
      tolerance = max(robust_tolerance, 2 * float(np.mean([s.std for s in finite.values()])))
      verdict = "agrees" if spread <= tolerance else "disagrees"
      evidence = (f"{metric} spread over {len(finite)} priors {100 * spread:.1f} points "
                  f"(tolerance {100 * tolerance:.1f}): "
                  + "; ".join(f"{k} {s}" for k, s in finite.items()))
    out.append(Claim("Results are robust to the choice of magnitude prior.", verdict,
                     evidence))

  verdict, evidence = _beats_all(
      plan, stats, "table8", POINTINS,
      [name({"offset.layout": "scr_then_odr"}), name({"offset.student_odr_kl": True})], metric)
  out.append(Claim("ODR-then-SCR beats SCR-then-ODR and a student-side ODR KL.", verdict,
                   evidence))

  table10 = next((t for t in plan.tables if t.key == "table10"), None)
  others = [r.variant for r in table10.rows if r.variant not in (RANDOM_INIT, POINTINS)
            ] if table10 is not None else []
  verdict, evidence = _beats_all(plan, stats, "table10", POINTINS, others, metric)
  ratio = float(lookup(base_pretrain, "offset.warmup_ratio"))
  out.append(Claim(f"The paper's offset-loss warm-up (ratio {ratio:g}) beats no warm-up and "
                   "a longer one.", verdict, evidence))

  out += _table13_claims(stats)
  if "table11" in stats:
    rows = stats["table11"]
    verdicts, evidence = [], []
    for mode in DETECTION_MODES:
      ours, dos = rows[f"PointINS, {mode}"]["mAP"], rows[f"DOS, {mode}"]["mAP"]
      verdicts.append(better(ours, dos))
      evidence.append(f"{mode}: PointINS {ours} vs DOS {dos} ({verdicts[-1]})")
    out.append(Claim("PointINS improves detection over DOS (decoder probing and finetuning "
                     "on few labels).", _combine(verdicts), "mAP: " + "; ".join(evidence)))
  return out


def _table13_claims(stats: dict) -> list[Claim]:
  """Table 13's claims on class-agnostic mAP; ground-truth offsets vs random-init offsets
  show whether the grouping pipeline resolves differences at all."""
  texts = ("PointINS offsets beat HDBSCAN and Felzenszwalb without supervision.",
           "Pretrained PointINS offsets beat the offsets of a random-init network.")
  if "table13" not in stats:
    return [Claim(text, "not run", "table13 not run") for text in texts]
  rows = {label: cells["mAP"] for label, cells in stats["table13"].items()}
  top, floor = "PointINS offsets (pretrained)", "PointINS offsets (random init)"
  resolves, why = resolution(("Ground-truth offsets", rows["Ground-truth offsets (ceiling)"]),
                             ("random-init offsets", rows[floor]))
  out = []
  for text, others in zip(texts, (("HDBSCAN", "Felzenszwalb"), (floor,))):
    verdicts = [improves(rows[top], rows[m], resolves) for m in others]
    evidence = "mAP: " + "; ".join(f"PointINS {rows[top]} vs {m} {rows[m]} ({v})"
                                   for m, v in zip(others, verdicts)) + f" [{why}]"
    out.append(Claim(text, _combine(verdicts), evidence))
  return out


# ------------------------------------------------------------------------------- report


def plot_table(table: Table, rows: Mapping[str, Mapping[str, Stat]], path: str) -> str:
  """Grouped bar chart (one group per metric, one bar per row, error bars = seed std)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  labels = list(rows)
  width = 0.8 / max(1, len(labels))
  x = np.arange(len(table.metrics))
  fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(table.metrics) * max(1, len(labels)) / 3,
                                  3.6))
  for i, label in enumerate(labels):
    mean = [100 * np.nan_to_num(rows[label][m].mean) for m in table.metrics]
    std = [100 * np.nan_to_num(rows[label][m].std) for m in table.metrics]
    ax.bar(x + (i - (len(labels) - 1) / 2) * width, mean, width, yerr=std, capsize=2,
           label=label)
  ax.set_xticks(x, table.metrics)
  ax.set_ylabel("%")
  ax.set_title(table.title, fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _markdown_table(table: Table, rows: Mapping[str, Mapping[str, Stat]],
                    metrics: Optional[Sequence[str]] = None,
                    header: Optional[Sequence[str]] = None) -> str:
  """Rows x metrics (default: the table's) as Stat cells; `header` renames the columns."""
  metrics = table.metrics if metrics is None else tuple(metrics)
  lines = ["| " + " | ".join(["Row", *(header or metrics), "seeds"]) + " |",
           "|" + "---|" * (len(metrics) + 2)]
  for label, cells in rows.items():
    n = max((s.n for s in cells.values()), default=0)
    lines.append("| " + " | ".join([label, *(str(cells[m]) for m in metrics), str(n)])
                 + " |")
  return "\n".join(lines)


def write_report(workdir: str, plan: Plan, records: Mapping[str, dict], base_pretrain: Mapping,
                 *, budget: Mapping[str, Any], machine: Mapping[str, Any], wall_s: float,
                 robust_tolerance: float, title: str = "PointINS synthetic study",
                 report_path: str = "", header: str = "") -> str:
  """Writes the report (`report_path`, default WORKDIR/report.md) and its figures
  (figures/<table>.png beside it); returns the report path.

  Args:
    budget: what every run got (e.g. pretrain_steps, probe_steps, scenes, model), shown
      verbatim.
    machine: e.g. {'jax.devices()': ..., 'CPU count': ...}, shown verbatim.
    wall_s: wall time of this invocation, seconds.
    header: a first line (e.g. an HTML comment naming the command that generated it).
  """
  stats = aggregate(plan, records)
  offsets = aggregate(plan, records, OFFSET_QUALITY)
  path = report_path or os.path.join(workdir, "report.md")
  fig_dir = os.path.join(os.path.dirname(os.path.abspath(path)), "figures")
  os.makedirs(fig_dir, exist_ok=True)
  run_wall = sum(r.get("wall_s", 0.0) for r in records.values())
  lines = ([header] if header else []) + [f"# {title}", "",
           f"Generated {datetime.datetime.now().isoformat(timespec='seconds')}. Cells are "
           f"mean ± sample std (ddof=1) over seeds, in % (metrics are fractions x 100). "
           f"Every run got the same budget.", "", "## Setup", ""]
  lines += [f"- **{k}**: {v}" for k, v in budget.items()]
  lines += [f"- **seeds**: {list(plan.seeds)}", f"- **probe task**: {plan.task}"]
  lines += [f"- **{k}**: {v}" for k, v in machine.items()]
  lines += [f"- **wall time**: this invocation {wall_s:.0f} s; all {len(records)} runs "
            f"summed {run_wall:.0f} s (finished runs from earlier invocations included)",
            f"- **runs**: {len(plan.runs)} unique (shared between tables by canonical name): "
            + ", ".join(f"`{r.name}`" for r in plan.runs), ""]
  lines += ["## Paper claims", "",
            "Judged on the primary instance metric "
            f"({PRIMARY_METRIC[plan.task]}; Table 13: mAP). 'agrees' = the claimed gain "
            "exceeds the combined seed std sqrt(std_a^2 + std_b^2); 'disagrees' = the "
            "opposite gap exceeds it, or the gap is within it while the table's ceiling "
            "beats its floor by more than that noise (the metric can see a gain at this "
            "budget, and the claimed one is not there); 'inconclusive' = within the noise "
            "and the ceiling does not clear the floor. With one seed the std is 0.", "",
            "| Claim | Synthetic study | Evidence |", "|---|---|---|"]
  missing = [r.name for r in plan.runs if r.name not in records]
  if missing:
    lines[-2:-2] = [f"**Provisional**: {len(plan.runs) - len(missing)} of {len(plan.runs)} "
                    "runs are finished, so rows may have fewer seeds than planned (the "
                    "seeds column) and a verdict may change; rerun the study command to "
                    "continue.", ""]
  for claim in claims(plan, stats, base_pretrain, robust_tolerance=robust_tolerance):
    lines.append(f"| {claim.text} | **{claim.verdict}** | {claim.evidence} |")
  lines.append("")
  for table in plan.tables:
    png = plot_table(table, stats[table.key], os.path.join(fig_dir, f"{table.key}.png"))
    lines += [f"## {table.title}", "", _markdown_table(table, stats[table.key]), "",
              f"![{table.key}](figures/{os.path.basename(png)})", ""]
    if any(s.n for cells in offsets[table.key].values() for s in cells.values()):
      lines += ["Offset quality at the end of each row's pretraining (validation scans, "
                "points inside ground-truth instances; x + o = predicted centroid, c = "
                "instance centre; curves: WORKDIR/pretrain/<variant>__seed<k>/"
                "offset_quality.png; n/a: no offsets, e.g. HDBSCAN):", "",
                _markdown_table(table, offsets[table.key], OFFSET_QUALITY,
                                OFFSET_QUALITY_HEADER), ""]
    variants = {r.label: r.variant for r in table.rows}
    lines += ["Runs: " + ", ".join(f"{k} = `{v}`" for k, v in variants.items()), ""]
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path
