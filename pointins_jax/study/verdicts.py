"""Study verdicts: seed statistics of the runs and the paper claims judged on them."""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

import numpy as np

from pointins_jax.study.planning import (DETECTION_MODES, DOS, POINTINS, PRIMARY_METRIC, Plan,
                                         RANDOM_INIT, Row, SUPERVISED, canonical_variant, lookup,
                                         run_name)

# Every table's floor and ceiling rows: references that frame a table's methods, never
# methods a claim compares against one another.
_REFERENCES = (RANDOM_INIT, SUPERVISED)


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
    prior_rows = [r for r in table5.rows if r.variant not in _REFERENCES + (scr_only,)]
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
  others = [r.variant for r in table10.rows if r.variant not in _REFERENCES + (POINTINS,)
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
