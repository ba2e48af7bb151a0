"""Point-cloud plots for scenes: matplotlib (static PNG) and plotly (interactive HTML).

Reusable from notebooks: `label_colors` turns labels into RGB, `plot_scene` draws a
top-down and a perspective view, `scene_figure_plotly` builds a 3D scatter figure.
"""
from __future__ import annotations

from typing import Optional, Sequence

import matplotlib
import numpy as np

from pointins_jax.data.scene import Scene

matplotlib.use("Agg")  # headless: figures are written to files
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top

IGNORED_COLOR = (0.6, 0.6, 0.6)  # label -1


def label_colors(label_ids: np.ndarray) -> np.ndarray:
  """float [N, 3] RGB in [0, 1]: a fixed colour per id (tab20 cycled), grey for -1."""
  label_ids = np.asarray(label_ids)
  palette = np.asarray(plt.get_cmap("tab20").colors)
  colors = palette[np.mod(label_ids, len(palette))]
  colors[label_ids < 0] = IGNORED_COLOR
  return colors


def scene_colors(scene: Scene, mode: str) -> np.ndarray:
  """float [N, 3] in [0, 1] for mode 'rgb', 'semantic' or 'instance'."""
  if mode == "rgb":
    if scene.color is not None:
      return np.clip(scene.color / 255.0, 0, 1)
    if scene.strength is not None:
      return plt.get_cmap("viridis")(scene.strength)[:, :3]
    raise ValueError(f"{scene.source}: has neither color nor strength for --color rgb.")
  values = {"semantic": scene.segment, "instance": scene.instance}.get(mode)
  if mode not in ("semantic", "instance"):
    raise ValueError(f"unknown colour mode {mode!r}; use rgb, semantic or instance.")
  if values is None:
    raise ValueError(f"{scene.source}: has no {mode} labels.")
  return label_colors(values)


def _subsample(num_points: int, max_points: int) -> np.ndarray:
  if num_points <= max_points:
    return np.arange(num_points)
  return np.random.default_rng(0).choice(num_points, max_points, replace=False)


def plot_scene(coord: np.ndarray, colors: np.ndarray, ax: Optional[Sequence] = None, *,
               legend: Optional[dict[str, np.ndarray]] = None, title: str = "",
               max_points: int = 100_000):
  """Top-down and perspective views of coord [N, 3] coloured by colors [N, 3] in [0, 1].

  Args:
    ax: two axes (a 2D one and a 3D one) to draw into; a new figure when None.
    legend: name -> RGB of the entries to list (e.g. the classes present).
  Returns:
    The matplotlib Figure.
  """
  index = _subsample(len(coord), max_points)
  coord, colors = coord[index], colors[index]
  if ax is None:
    fig = plt.figure(figsize=(14, 6))
    ax = (fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, projection="3d"))
  top, perspective = ax
  fig = top.figure
  size = max(0.2, 20000.0 / len(coord))
  order = np.argsort(coord[:, 2])  # higher points drawn last in the top-down view
  top.scatter(coord[order, 0], coord[order, 1], c=colors[order], s=size, linewidths=0)
  top.set_aspect("equal")
  top.set_title(f"{title} top-down".strip())
  top.set_xlabel("x (m)")
  top.set_ylabel("y (m)")
  perspective.scatter(coord[:, 0], coord[:, 1], coord[:, 2], c=colors, s=size, linewidths=0)
  perspective.set_box_aspect(np.ptp(coord, axis=0) + 1e-3)
  perspective.view_init(elev=35, azim=-60)
  perspective.set_title("perspective")
  if legend:
    handles = [matplotlib.patches.Patch(color=rgb, label=name) for name, rgb in legend.items()]
    fig.legend(handles=handles, loc="center right", fontsize=8)
  return fig


def plot_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str, *,
                suptitle: str = "", max_points: int = 50_000) -> str:
  """Side-by-side `plot_scene` panels (top-down above, perspective below) saved as a PNG.

  Args:
    panels: (title, coord float [N, 3] metres, colors float [N, 3] in [0, 1]) per column,
      e.g. GT instances / predicted instances / predicted centroids of one scene.
    path: output file (.png); its folder must exist.
  Returns:
    `path`.
  """
  fig = plt.figure(figsize=(6 * len(panels), 10))
  for i, (title, coord, colors) in enumerate(panels):
    top = fig.add_subplot(2, len(panels), i + 1)
    perspective = fig.add_subplot(2, len(panels), len(panels) + i + 1, projection="3d")
    plot_scene(np.asarray(coord), np.asarray(colors), ax=(top, perspective), title=title,
               max_points=max_points)
  if suptitle:
    fig.suptitle(suptitle)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def scene_figure_plotly(coord: np.ndarray, colors: np.ndarray,
                        hover: Optional[Sequence[str]] = None, title: str = "",
                        max_points: int = 200_000):
  """Interactive 3D scatter (plotly Figure) of coord [N, 3], colors [N, 3] in [0, 1]."""
  import plotly.graph_objects as go  # pylint: disable=import-outside-toplevel
  index = _subsample(len(coord), max_points)
  rgb = [f"rgb({r},{g},{b})" for r, g, b in (colors[index] * 255).astype(int)]
  marker = go.Scatter3d(x=coord[index, 0], y=coord[index, 1], z=coord[index, 2], mode="markers",
                        marker={"size": 1.5, "color": rgb},
                        text=None if hover is None else np.asarray(hover)[index],
                        hoverinfo="text" if hover is not None else "x+y+z")
  figure = go.Figure(marker)
  figure.update_layout(title=title, scene={"aspectmode": "data"})
  return figure
