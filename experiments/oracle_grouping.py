"""Instance scores of ground-truth predictions through the product's grouping settings.

  python -m experiments.oracle_grouping                 # every built-in synthetic variant
  python -m experiments.oracle_grouping --num-scenes 4 --variants indoor-small

Ground-truth semantics with ground-truth offsets (scaled, with Gaussian noise, or zero; see
`pointins_jax.probe.oracle`) are grouped and scored exactly as the probe demo / study
(`configs/probe_*.py:*_insseg,demo`: `probe.loop.evaluate`) and Table 13
(`probe.unsupervised.pointins_instances` on the pretraining demo's grid) do. A grouping that
cannot find instances shows here as AP25 near 0 for offsets that are merely imperfect.
Prints one table (AP25 per case) and returns the numbers.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import numpy as np

from configs import pointins_indoor
from configs import pointins_outdoor
from configs import probe_indoor
from configs import probe_outdoor
from pointins_jax.metrics import report
from pointins_jax.metrics import unsupervised as unsup_metrics
from pointins_jax.probe import inference
from pointins_jax.probe import loop as probe_loop
from pointins_jax.probe import oracle
from pointins_jax.probe import unsupervised

# (kind, synthetic_small) of every built-in dataset variant.
VARIANTS = {"indoor-default": ("indoor", False), "indoor-small": ("indoor", True),
            "outdoor-default": ("outdoor", False), "outdoor-small": ("outdoor", True)}
# case -> (offset scale, Gaussian noise sigma in metres).
CASES = {"gt": (1.0, 0.0), "half": (0.5, 0.0), "noise5cm": (1.0, 0.05), "zero": (0.0, 0.0)}


def probe_config(variant: str, num_scenes: int):
  """The probe demo's insseg config (as the study uses it) on `variant`'s scenes."""
  kind, small = VARIANTS[variant]
  module = probe_indoor if kind == "indoor" else probe_outdoor
  config = module.get_config("linear_insseg,demo")
  config.data.synthetic_small = small
  config.train.num_eval_scenes = num_scenes
  return config


def pretrain_data_config(variant: str):
  """The pretraining demo's data config (what an export carries) on `variant`'s scenes."""
  kind, small = VARIANTS[variant]
  config = (pointins_indoor if kind == "indoor" else pointins_outdoor).get_config("demo")
  config.data.synthetic_small = small
  return config.data


def probe_ap(variant: str, case: str, num_scenes: int) -> dict:
  """ScanNet-style AP of oracle predictions through `probe.loop.evaluate`."""
  config = probe_config(variant, num_scenes)
  scale, sigma = CASES[case]
  rng = np.random.default_rng(0)

  def predictions(scene):
    return {"probs": oracle.oracle_probs(scene, config.num_classes),
            "offsets": oracle.oracle_offsets(scene, scale=scale, noise_sigma=sigma, rng=rng)}

  return probe_loop.evaluate(config, None, predictions_fn=predictions, log=lambda _: None)


def unsup_ap(variant: str, case: str, num_scenes: int) -> dict:
  """Class-agnostic Hungarian AP of oracle offsets with Table 13's grouping settings."""
  data = pretrain_data_config(variant)
  scale, sigma = CASES[case]
  rng = np.random.default_rng(0)
  evaluator = unsup_metrics.UnsupervisedAPEvaluator(unsup_metrics.MIN_SIZE)
  for scene in inference.eval_scenes(data, num_scenes):
    offsets = oracle.oracle_offsets(scene, scale=scale, noise_sigma=sigma, rng=rng)
    evaluator.add_scene(scene.instance, unsupervised.pointins_instances(
        scene, offsets, voxel_size=data.grid_size))
  return evaluator.result()


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default=",".join(VARIANTS),
                      help=f"comma-separated subset of {', '.join(VARIANTS)}")
  parser.add_argument("--num-scenes", type=int, default=2, help="validation scenes each")
  args = parser.parse_args(argv)
  rows = {}
  for variant in args.variants.split(","):
    for pipeline, fn in (("probe", probe_ap), ("unsup", unsup_ap)):
      rows[f"{variant} {pipeline}"] = {case: fn(variant, case, args.num_scenes)["AP25"]
                                       for case in CASES}
  print(report.per_class_table(rows, columns=tuple(CASES), row_label="AP25"))
  return rows


if __name__ == "__main__":
  main()
