"""orbax checkpoints of the train state plus the data iterator state.

Layout: `<dir>/<step>/{state,data,meta}`. `state` is any pytree of arrays (restored onto
the shardings of an abstract target), `data` the grain iterator state, `meta` a small
JSON dict. A latest checkpoint that fails to restore (truncated, corrupt) is reported and
the previous one is used.
"""
from __future__ import annotations

import base64
import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def _encode_iterator_state(state: Any) -> dict:
  # grain's DataLoader iterator returns bytes, IterDataset iterators a dict.
  if isinstance(state, (bytes, bytearray)):
    return {"bytes_b64": base64.b64encode(bytes(state)).decode("ascii")}
  return {"state": state}


def _decode_iterator_state(stored: dict) -> Any:
  if "bytes_b64" in stored:
    return base64.b64decode(stored["bytes_b64"])
  return stored["state"]


class Checkpointer:
  """Periodic saves, keep-last-k, restore-latest with fallback."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every: int = 1000):
    directory = os.path.abspath(directory)  # orbax/tensorstore reject relative paths
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           save_interval_steps=max(1, save_every))
    self._manager = ocp.CheckpointManager(directory, options=options)
    self.directory = directory

  def save(self, step: int, state, iterator_state=None, meta: Optional[dict] = None,
           force: bool = False) -> bool:
    args = {"state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if iterator_state is not None:
      args["data"] = ocp.args.JsonSave(_encode_iterator_state(iterator_state))
    return self._manager.save(int(step), args=ocp.args.Composite(**args), force=force)

  def restore_latest(self, abstract_state):
    """Returns (step, state, iterator_state, meta) of the newest restorable checkpoint.

    Returns None when there is no checkpoint. `abstract_state` is a pytree of
    jax.ShapeDtypeStruct with shardings (e.g. from `jax.eval_shape`).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
        iterator_state = None
        try:
          data = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
          iterator_state = _decode_iterator_state(data["data"])
        except Exception:  # pylint: disable=broad-except
          logging.warning("checkpoint %s/%d has no data-iterator state; the data "
                          "stream restarts from its beginning.", self.directory, step)
        return step, restored["state"], iterator_state, dict(restored["meta"])
      except Exception as err:  # pylint: disable=broad-except
        logging.error("checkpoint %s/%d could not be restored (%s: %s); trying the previous "
                      "one.", self.directory, step, type(err).__name__, err)
        print(f"WARNING: checkpoint {self.directory}/{step} is unreadable "
              f"({type(err).__name__}); falling back to an earlier one.")
    return None

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def create_or_restore(ckpt: Checkpointer, init, init_args: tuple, sharding, iterator=None):
  """The train state at the start of a run: restored from `ckpt`, or created sharded.

  Args:
    ckpt: the run's Checkpointer.
    init: pure function `init(*init_args) -> state`; jitted with `out_shardings=sharding`
      so the state is created already placed (never materialised on one device first).
    sharding: pytree of shardings matching `jax.eval_shape(init, *init_args)`.
    iterator: the grain iterator whose state the checkpoint restores (optional).
  Returns:
    (start step, state).
  """
  abstract = jax.eval_shape(init, *init_args)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, sharding)
  restored = ckpt.restore_latest(target)
  if restored is None:
    return 0, jax.jit(init, out_shardings=sharding)(*init_args)
  start, state, iterator_state, _ = restored
  if iterator_state is not None and iterator is not None:
    iterator.set_state(iterator_state)
  print(f"Resumed from {ckpt.directory}/{start}.")
  return start, state


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) describing a pytree of arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)
