"""Full-scan evaluation pieces of the probe loop, without a model (fast).

Scenes: one small synthetic-indoor room (~1e4 points) cut into 2048-point chunks, as the
probe demo config does; production: ScanNet scans of ~1e5 points, 65536-point buckets.
"""
import functools

import numpy as np

from configs import probe_indoor
from pointins_jax.data import loader
from pointins_jax.metrics import report
from pointins_jax.model import configs as model_configs
from pointins_jax.probe import inference
from pointins_jax.probe import loop


def test_full_scan_predictions_cover_every_original_point():
  config = probe_indoor.get_config("linear_semseg,demo")
  data = config.data
  scene = next(inference.eval_scenes(data, 1))
  assert scene.num_points > data.buckets[-1]  # more than one chunk per fragment
  seen = []

  def apply(batch):  # echoes the colour features: per point, not per frame
    seen.append(batch["valid"].sum())
    # The model inputs, plus the chunk's data-following stage capacities and counts.
    assert set(batch) == set(inference.MODEL_KEYS + inference.CAPACITY_KEYS)
    assert all(batch["stage_capacities"] >= batch["stage_point_counts"])
    return {"color": batch["feat"][..., 3:6]}

  model = model_configs.model_config("tiny")
  out = inference.full_scan_predictions(
      scene, data, apply, batch_size=2,
      stage_capacities_fn=functools.partial(model_configs.stage_capacities, model))
  assert out["count"].shape == (scene.num_points,) and out["count"].min() >= 1
  # Outputs land on their own original point: the echoed colour is the scan's colour.
  np.testing.assert_allclose(out["color"], scene.color / 255.0, atol=1e-5)
  assert sum(seen) == out["count"].sum() >= scene.num_points


def test_instance_targets_are_per_row_instance_centroids():
  coord = np.array([[[0, 0, 0], [2, 0, 0], [5, 5, 5], [9, 9, 9]],
                    [[1, 1, 1], [3, 3, 3], [0, 0, 0], [0, 0, 0]]], np.float32)
  batch = {"coord": coord, "instance": np.array([[0, 0, -1, 0], [0, 0, -1, -1]]),
           "valid": np.array([[True, True, True, False], [True, True, False, False]])}
  out = loop.instance_targets(batch)
  np.testing.assert_array_equal(out["has_instance"], [[1, 1, 0, 0], [1, 1, 0, 0]])
  np.testing.assert_allclose(out["instance_centroid"][0, :2], [[1, 0, 0]] * 2)
  np.testing.assert_allclose(out["instance_centroid"][1, :2], [[2, 2, 2]] * 2)  # row 1's own id 0
  assert not out["instance_centroid"][0, 3].any()  # padding has no target


def test_labelled_subset_is_seeded():
  config = probe_indoor.get_config("linear_semseg,demo")
  source = loader.scene_source(config.data)
  a = loader.labelled_subset(source, 0.25, seed=0)
  assert len(a) == 4 and list(a._indices) == list(loader.labelled_subset(source, 0.25, 0)._indices)


def test_method_table_has_a_row_label():
  text = report.per_class_table({"PointINS": {"mAP": 0.5}, "HDBSCAN": {"mAP": float("nan")}},
                                row_label="method")
  assert text.splitlines()[0].startswith("| method") and "| HDBSCAN  |      - |" in text
