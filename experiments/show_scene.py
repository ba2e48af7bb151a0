"""Renders one Pointcept scene folder to a PNG (matplotlib) or an HTML (plotly) file.

  python -m experiments.show_scene SCENE_DIR --color {rgb,semantic,instance} --out scene.png
  python -m experiments.show_scene SCENE_DIR --color semantic --out scene.html
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.data import labels, pointcept_io, visualize


def _main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("scene_dir")
  parser.add_argument("--color", choices=("rgb", "semantic", "instance"), default="rgb")
  parser.add_argument("--dataset", choices=labels.DATASET_NAMES, default=None,
                      help="names the classes in the legend (default: inferred, ScanNet-20 "
                           "for indoor scenes, SemanticKITTI-19 for LiDAR sweeps)")
  parser.add_argument("--out", required=True, help="output .png or .html")
  args = parser.parse_args(argv)
  extension = os.path.splitext(args.out)[1].lower()
  if extension not in (".png", ".html"):
    raise ValueError(f"--out {args.out}: use a .png or .html file name.")
  scene = pointcept_io.read_scene(args.scene_dir, args.dataset)
  dataset = args.dataset or ("synthetic-indoor" if scene.color is not None
                             else "synthetic-outdoor")
  names = labels.dataset_info(dataset).names
  colors = visualize.scene_colors(scene, args.color)
  legend, hover = None, None
  if args.color == "semantic":
    # Ids past the inferred dataset's classes (no --dataset to check them) show as numbers.
    label = {c: "ignore" if c < 0 else names[c] if c < len(names) else str(c)
             for c in np.unique(scene.segment).tolist()}
    legend = {label[c]: visualize.label_colors(np.array([c]))[0] for c in label}
    hover = [label[c] for c in scene.segment.tolist()]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  title = f"{scene.name} ({args.color})"
  if extension == ".png":
    figure = visualize.plot_scene(scene.coord, colors, legend=legend, title=title)
    figure.savefig(args.out, dpi=120)
  else:
    visualize.scene_figure_plotly(scene.coord, colors, hover, title).write_html(args.out)
  print(f"wrote {args.out}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the command; errors are one line on stderr and status 1 (`pointins_jax.cli`)."""
  return cli.run(_main, argv, name="show_scene")


if __name__ == "__main__":
  sys.exit(main())
