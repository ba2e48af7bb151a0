"""The whole PointINS train step and the probe step lower for CUDA with the Pallas kernels.

No GPU here, so this proves what can be proved on a CPU: with `model.attention_impl` and
`offset.knn_impl` set to "pallas", tracing the complete jitted steps (teacher and student
PTv3, ODR, SCR, losses, AdamW) and lowering them for the "cuda" platform succeeds, and the
patch attention (forward, dK/dV, dQ) and the kNN appear as Triton custom calls. Needs the
`jax-cuda12-plugin` of the test extra. Tiny shapes; lowering does not compile.
"""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pointins_indoor
from configs import probe_indoor
from pointins_jax.pointins import train as pointins_train
from pointins_jax.probe import loop as probe_loop
from pointins_jax.probe import train as probe_train

pytest.importorskip("jax_cuda12_plugin",
                    reason="lowering for CUDA needs jax-cuda12-plugin (test extra)")

_TRITON_CALL = "__gpu$xla.gpu.triton"
_N = 256  # points per view


def _kernel_names(text):
  return set(re.findall(r"(patch_attention_(?:forward|dkdv|dq)|knn)", text))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def _pretrain_batch(config, b=2, v=2):
  c = config.model.in_channels
  return {"coord": np.zeros((b, v, _N, 3), np.float32), "feat": np.zeros((b, v, _N, c), np.float32),
          "grid": np.zeros((b, v, _N, 3), np.int32), "valid": np.ones((b, v, _N), bool),
          "visible": np.ones((b, v, _N), bool), "cross_index": np.zeros((b, v, _N), np.int32),
          "view_linear": np.tile(np.eye(3, dtype=np.float32), (b, v, 1, 1)),
          "origin_coord": np.zeros((b, v, _N, 3), np.float32)}


def test_pointins_train_step_lowers_with_triton_kernels():
  config = pointins_indoor.get_config("demo")
  config.model.attention_impl = "pallas"
  config.offset.knn_impl = "pallas"
  total_steps = 10
  state = jax.eval_shape(functools.partial(pointins_train.init_train_state, config,
                                           total_steps=total_steps), jax.random.key(0))
  batch = _abstract(_pretrain_batch(config))
  assert set(batch) == set(pointins_train.BATCH_KEYS)
  caps = (_N, 128, 64, 32, 16)
  step = jax.jit(functools.partial(pointins_train.train_step, config=config,
                                   total_steps=total_steps, stage_capacities=caps))
  text = step.trace(state, batch, jax.random.key(1)).lower(
      lowering_platforms=("cuda",)).as_text()
  names = _kernel_names(text)
  assert {"patch_attention_forward", "patch_attention_dkdv", "patch_attention_dq"} <= names
  assert "knn" in names, names
  assert text.count(_TRITON_CALL) >= 4


def test_probe_step_lowers_with_triton_attention():
  config = probe_indoor.get_config("finetune_insseg,demo")
  config, _ = probe_loop.resolve_model(config)
  config.model.attention_impl = "pallas"
  total_steps = 10
  state = jax.eval_shape(functools.partial(probe_train.init_probe_state, config,
                                           total_steps=total_steps), jax.random.key(0))
  c = config.model.in_channels
  batch = {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in {
      "coord": ((2, _N, 3), jnp.float32), "feat": ((2, _N, c), jnp.float32),
      "grid": ((2, _N, 3), jnp.int32), "valid": ((2, _N), jnp.bool_),
      "segment": ((2, _N), jnp.int32), "instance_centroid": ((2, _N, 3), jnp.float32),
      "has_instance": ((2, _N), jnp.bool_)}.items()}
  batch = {k: v for k, v in batch.items() if k in probe_train.BATCH_KEYS}
  step = jax.jit(functools.partial(probe_train.probe_step, config=config,
                                   total_steps=total_steps))
  text = step.trace(state, batch, jax.random.key(1)).lower(
      lowering_platforms=("cuda",)).as_text()
  # Fine-tuning differentiates through the encoder: forward and both backward kernels.
  assert {"patch_attention_forward", "patch_attention_dkdv",
          "patch_attention_dq"} <= _kernel_names(text)
  assert text.count(_TRITON_CALL) >= 3
