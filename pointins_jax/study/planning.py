"""Study planning: the tables, their variants and the de-duplicated runs that fill them."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping


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
