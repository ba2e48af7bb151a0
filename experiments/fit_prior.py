"""Fits an ODR magnitude prior from data and saves it (paper Table 5, Fig. 4).

  python -m experiments.fit_prior --config configs/pointins_indoor.py:scannet \
      --source labels --fraction 0.01 --out priors/scannet.npz
  python -m experiments.fit_prior --data-root data/scannet --source hdbscan --out prior.npz

Writes OUT (.npz, use it with `config.offset.magnitude_prior = dict(kind="file",
path=OUT)`) and OUT with a .png suffix (magnitude and direction distributions), and
prints the sample counts and the fitted Gamma / LogNormal parameters. A config whose data
root is empty with dataset 'synthetic-indoor' (the demo) fits on generated rooms.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from pointins_jax import cli  # first: before jax is imported (cli docstring)
from pointins_jax.pointins import priors


def load_config(spec: str):
  """`path/to/config.py[:arg]` -> get_config(arg)."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {spec}: no such file {path!r}.")
  module_spec = importlib.util.spec_from_file_location("fit_prior_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def scene_source(args):
  """(items, load) for the training scenes named by --data-root or --config."""
  dataset, num_synthetic = "", 0
  root = args.data_root
  if root is None:
    config = load_config(args.config)
    root, dataset = config.data.root, config.data.get("dataset", "")
    num_synthetic = config.data.get("num_scenes", 0) or 64
  if not root:
    if dataset != "synthetic-indoor":
      raise ValueError(f"--config {args.config}: config.data.root is empty; set it "
                       "(--data-root DIR also works without a config).")
    from pointins_jax.data import synthetic_indoor  # pylint: disable=import-outside-toplevel
    return list(range(num_synthetic)), synthetic_indoor.generate_room
  from pointins_jax.data import pointcept_io  # pylint: disable=import-outside-toplevel
  return pointcept_io.list_scenes(root, args.split), pointcept_io.read_scene


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument("--config", help="config file[:arg]; reads config.data.root/dataset")
  where.add_argument("--data-root", help="Pointcept-layout dataset root")
  parser.add_argument("--split", default="train")
  parser.add_argument("--source", choices=("labels", "hdbscan"), required=True)
  parser.add_argument("--fraction", type=float, default=0.01,
                      help="fraction of the scenes used (paper: 0.01)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min-cluster-size", type=int, default=50, help="HDBSCAN only")
  parser.add_argument("--max-points", type=int, default=20_000,
                      help="HDBSCAN only: points clustered per scene")
  parser.add_argument("--out", required=True, help="output .npz")
  args = parser.parse_args(argv)

  items, load = scene_source(args)
  if args.source == "labels":
    fit = priors.fit_empirical_prior(items, args.fraction, args.seed, load)
  else:
    fit = priors.fit_hdbscan_prior(items, args.fraction, args.seed, load,
                                   max_points=args.max_points,
                                   min_cluster_size=args.min_cluster_size)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fit.prior.save(args.out)
  png = os.path.splitext(args.out)[0] + ".png"
  priors.plot_prior(fit, png)
  g, ln = fit.parametric["gamma"], fit.parametric["lognormal"]
  print(f"source={args.source} scenes={fit.num_scenes}/{len(items)} points={fit.num_points} "
        f"unassigned={fit.num_unassigned}")
  print(f"magnitude median={float(fit.prior.ppf(0.5)):.3f} m; fitted "
        f"Gamma(a={g['a']:.3f}, theta={g['theta']:.3f}), "
        f"LogNormal(mu={ln['mu']:.3f}, sigma={ln['sigma']:.3f})")
  print(f"wrote {args.out} and {png}")
  return 0


if __name__ == "__main__":
  sys.exit(cli.run(main, name="fit_prior"))
