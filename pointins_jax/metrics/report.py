"""Per-class metric tables as Markdown (readable as plain text too) and result summaries."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np


def per_class_table(classes: Mapping[str, Mapping[str, float]],
                    columns: Optional[Sequence[str]] = None,
                    summary: Optional[Mapping[str, float]] = None,
                    summary_label: str = "mean", digits: int = 4,
                    row_label: str = "class") -> str:
  """Formats {class: {metric: value}} as a Markdown table, one row per class.

  Args:
    classes: per-class metrics, e.g. `result["classes"]` of any metric in this package.
    columns: metric keys to show, in order (default: those of the first class).
    summary: optional values for a last row (keys as in `columns`; missing ones left blank).
    summary_label: the first cell of the summary row.
    digits: decimals; NaN (undefined, e.g. a class without ground truth) prints as "-".
    row_label: header of the first column (e.g. "method" when rows are methods).
  Returns:
    The table, lines joined by "\\n".
  """
  if columns is None:
    columns = list(next(iter(classes.values()), {}))
  rows = [[name] + [_cell(values.get(c), digits) for c in columns]
          for name, values in classes.items()]
  if summary is not None:
    rows.append([summary_label] + [_cell(summary.get(c), digits) for c in columns])
  header = [row_label] + list(columns)
  widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

  def line(cells):
    return "| " + " | ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(cells, widths))) + " |"

  rule = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":")
                        for i, w in enumerate(widths)) + "|"
  return "\n".join([line(header), rule] + [line(r) for r in rows])


def format_result(result: dict, task: str) -> str:
  """A per-class table (where the task has classes) and the summary line.

  Args:
    result: the `result()` dict of the task's metric (semseg: `iou_from_confusion`, insseg:
      `InstanceAPEvaluator`, panseg: `PanopticEvaluator`, unsupervised:
      `UnsupervisedAPEvaluator`, detection: `detection.DetectionEvaluator`).
    task: 'semseg' | 'insseg' | 'panseg' | 'unsupervised' | 'detection'.
  """
  if task == "semseg":
    table = per_class_table(result["classes"], summary={"IoU": result["mIoU"],
                                                               "Acc": result["mAcc"]})
    return f"{table}\n\nmIoU {result['mIoU']:.4f}  mAcc {result['mAcc']:.4f}  " \
           f"allAcc {result['allAcc']:.4f}"
  if task == "insseg":
    table = per_class_table(result["classes"], summary={
        "AP": result["mAP"], "AP50": result["AP50"], "AP25": result["AP25"]})
    return f"{table}\n\nmAP {result['mAP']:.4f}  AP50 {result['AP50']:.4f}  " \
           f"AP25 {result['AP25']:.4f}"
  if task == "panseg":
    table = per_class_table(result["classes"], summary={
        "PQ": result["PQ"], "SQ": result["SQ"], "RQ": result["RQ"], "IoU": result["mIoU"]})
    groups = "  ".join(f"{key} {result[key]:.4f}" for key in (
        "PQ", "SQ", "RQ", "PQ_things", "SQ_things", "RQ_things", "PQ_stuff", "SQ_stuff",
        "RQ_stuff", "PQ_dagger", "mIoU"))
    return f"{table}\n\n{groups}"
  if task == "detection":
    tp = ("ATE", "ASE", "AOE", "AVE", "AAE")
    columns = [k for k in next(iter(result["classes"].values()), {}) if k.startswith("AP")]
    table = per_class_table(result["classes"], columns + list(tp) + ["num_gt", "num_pred"],
                            summary={"AP": result["mAP"], **{m: result["m" + m] for m in tp}})
    summary = "  ".join(f"{key} {result[key]:.4f}" for key in ("NDS", "mAP") + tuple(
        "m" + m for m in tp))
    return f"{table}\n\n{summary}  ({result['num_scenes']} scenes; '-' = N/A)"
  return f"mAP {result['mAP']:.4f}  AP50 {result['AP50']:.4f}  AP25 {result['AP25']:.4f}"


def jsonable(value: Any) -> Any:
  """A metric result with numpy arrays / scalars turned into lists / Python numbers."""
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  return value


def _cell(value: Optional[float], digits: int) -> str:
  if value is None:
    return ""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return str(value)
  if isinstance(value, float) and math.isnan(value):
    return "-"
  return f"{value:.{digits}f}"
