"""Exported encoders: what pretraining hands to probing jobs.

`<dir>/params/` is an orbax checkpoint holding `{"backbone", "offset_head",
"projection_head"}` parameter trees; `<dir>/config.json` the full pretraining config
(its `model` and `heads` sections rebuild the modules).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


def export_encoder(directory: str, config, state) -> str:
  """Writes the encoder (+ heads) of `state` (teacher or student per config) to `directory`.

  Call it on every process of a multi-host run (the orbax save is collective); process 0
  writes the files.
  """
  which = config.train.get("export_weights", "teacher")
  params = state.teacher_params if which == "teacher" else state.params
  params = jax.device_get(params)
  tree = {name: params[name] for name in ("backbone", "offset_head", "projection_head")}
  os.makedirs(directory, exist_ok=True)
  path = os.path.abspath(os.path.join(directory, "params"))
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree, force=True)
  if jax.process_index() == 0:
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
  return directory


def load_export(directory: str):
  """Returns (config ConfigDict, params dict of numpy trees) from `export_encoder`'s output."""
  config_path = os.path.join(directory, "config.json")
  params_path = os.path.abspath(os.path.join(directory, "params"))
  for path in (config_path, params_path):
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} not found: --config.pretrained must point at the `export/` folder written "
          "by `python -m experiments.pretrain` (it holds config.json and params/).")
  with open(config_path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(params_path)
  return config, jax.tree.map(np.asarray, params)
