"""Study report: markdown tables, claim verdicts and bar charts of the records."""
from __future__ import annotations

import datetime
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from pointins_jax.study.planning import (OFFSET_QUALITY, OFFSET_QUALITY_HEADER, PRIMARY_METRIC,
                                         Plan, Table)
from pointins_jax.study.verdicts import Stat, aggregate, claims


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
