"""Per-dataset evaluation protocols: class names and the class sets each metric scores.

Shared by `experiments.evaluate` (saved predictions) and `pointins_jax.probe.loop` (a probe's
own validation), so both score a dataset the same way.
"""
from __future__ import annotations

import dataclasses

from pointins_jax.metrics import panoptic

SEGMENT_FILE = {"scannet": "segment20.npy", "scannet200": "segment200.npy"}
PANOPTIC_MIN_POINTS = {"nuscenes": 15}  # Panoptic nuScenes `--min_inst_points` default


@dataclasses.dataclass(frozen=True)
class Protocol:
  """What scoring a dataset needs: class ids 0..C-1 and the evaluation-specific sets."""
  class_names: tuple[str, ...]
  thing_classes: tuple[int, ...]  # panoptic things; instance AP evaluates these
  instance_classes: tuple[int, ...]
  segment_file: str = "segment.npy"
  panoptic_min_points: int = panoptic.MIN_POINTS

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def instance_ignore_classes(self) -> tuple[int, ...]:
    """Classes instance AP treats as void (all but `instance_classes`)."""
    return tuple(c for c in range(self.num_classes) if c not in self.instance_classes)


def protocol_for(dataset: str) -> Protocol:
  """The protocol of a dataset, from `pointins_jax.data.labels.dataset_info`."""
  from pointins_jax.data import labels  # pylint: disable=import-outside-toplevel
  info = labels.dataset_info(dataset)
  things = tuple(int(c) for c in info.thing_classes)
  # Pointcept's S3DIS instance evaluation scores all 13 classes, structural ones included.
  instance_classes = tuple(range(info.num_classes)) if dataset == "s3dis" else things
  return Protocol(class_names=tuple(info.names), thing_classes=things,
                  instance_classes=instance_classes,
                  segment_file=SEGMENT_FILE.get(dataset, "segment.npy"),
                  panoptic_min_points=PANOPTIC_MIN_POINTS.get(dataset, panoptic.MIN_POINTS))
