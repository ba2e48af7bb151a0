"""Per-class metric tables as Markdown (readable as plain text too)."""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence


def per_class_table(classes: Mapping[str, Mapping[str, float]],
                    columns: Optional[Sequence[str]] = None,
                    summary: Optional[Mapping[str, float]] = None,
                    summary_label: str = "mean", digits: int = 4) -> str:
  """Formats {class: {metric: value}} as a Markdown table, one row per class.

  Args:
    classes: per-class metrics, e.g. `result["classes"]` of any metric in this package.
    columns: metric keys to show, in order (default: those of the first class).
    summary: optional values for a last row (keys as in `columns`; missing ones left blank).
    summary_label: the first cell of the summary row.
    digits: decimals; NaN (undefined, e.g. a class without ground truth) prints as "-".
  Returns:
    The table, lines joined by "\\n".
  """
  if columns is None:
    columns = list(next(iter(classes.values()), {}))
  rows = [[name] + [_cell(values.get(c), digits) for c in columns]
          for name, values in classes.items()]
  if summary is not None:
    rows.append([summary_label] + [_cell(summary.get(c), digits) for c in columns])
  header = ["class"] + list(columns)
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

  def line(cells):
    return "| " + " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(cells, widths))) + " |"

  rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":")
                        for i, w in enumerate(widths)) + "|"
  return "\n".join([line(header), rule] + [line(r) for r in rows])


def _cell(value: Optional[float], digits: int) -> str:
  if value is None:
    return ""
  if isinstance(value, float) and math.isnan(value):
    return "-"
  return f"{value:.{digits}f}"
