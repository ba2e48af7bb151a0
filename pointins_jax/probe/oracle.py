"""Ground-truth stand-ins for a model's predictions, to check grouping and metrics.

An oracle prediction is what a perfect network would output for a scene, optionally
degraded in a controlled way: semantic probabilities one-hot on the ground-truth class and
offsets `scale * (c - x) + noise` towards the point's ground-truth instance centre c. The
grouping tests and `experiments.oracle_grouping` run these through the exact grouping and
scoring settings of the probe, the study and `experiments.unsup_instances`, so that an
instance score of 0 can be told apart from a grouping that cannot find instances.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pointins_jax.data.scene import Scene
from pointins_jax.metrics import offset_quality


def oracle_offsets(scene: Scene, *, scale: float = 1.0, noise_sigma: float = 0.0,
                   rng: Optional[np.random.Generator] = None) -> np.ndarray:
  """f32 [N, 3] metres: scale * (instance centre - coord) + N(0, noise_sigma^2) per axis.

  Points without an instance get the noise only (a perfect network predicts ~0 there).
  """
  if scene.instance is None:
    raise ValueError(f"{scene.source} (scene {scene.name!r}): oracle offsets need instance "
                     "labels.")
  centre, has = offset_quality.instance_centres(scene.coord, scene.instance)
  offsets = np.where(has[:, None], scale * (centre - scene.coord), 0.0)
  if noise_sigma > 0:
    rng = np.random.default_rng(0) if rng is None else rng
    offsets = offsets + rng.normal(0.0, noise_sigma, offsets.shape)
  return offsets.astype(np.float32)


def oracle_probs(scene: Scene, num_classes: int) -> np.ndarray:
  """f32 [N, C]: one-hot ground-truth classes (ignored points: uniform)."""
  if scene.segment is None:
    raise ValueError(f"{scene.source} (scene {scene.name!r}): oracle probabilities need "
                     "semantic labels.")
  probs = np.full((scene.num_points, num_classes), 1.0 / num_classes, np.float32)
  labelled = (scene.segment >= 0) & (scene.segment < num_classes)
  probs[labelled] = np.eye(num_classes, dtype=np.float32)[scene.segment[labelled]]
  return probs
