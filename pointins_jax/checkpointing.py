"""orbax checkpoints of the train state plus the data iterator state.

Layout: `<dir>/<step>/{state,data,meta}`. `state` is any pytree of arrays (restored onto
the shardings of an abstract target), `data` the grain iterator state, `meta` a small
JSON dict.

Faults (README "Faults and bad input"):
* a latest checkpoint that fails to restore (truncated, corrupt) while an earlier one
  restores is renamed `<step>.unreadable` (kept for inspection, reported in one line) and
  the run resumes from the earlier one; when none restores the run stops with
  `CheckpointError` instead of silently starting over (e.g. after a model config change).
* a save that fails for lack of space (ENOSPC, EFBIG from a file-size limit, EDQUOT)
  raises `CheckpointError` in one line naming the last complete checkpoint, which stays.
* `Checkpointer` is a context manager: leaving it by any path (exception, Ctrl-C)
  waits for the pending asynchronous save, so a finished save is never lost.
* `StopSignal` turns SIGTERM into a flag the training loops poll to save a final
  checkpoint and raise `Preempted`.
"""
from __future__ import annotations

import base64
import errno
import logging
import os
import signal
import threading
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

# errno values (and their strerror texts, which tensorstore puts in plain ValueErrors) of a
# full disk, a file-size limit (RLIMIT_FSIZE) and a full quota.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_STORAGE_MESSAGES = tuple(os.strerror(e) for e in _STORAGE_ERRNOS)
UNREADABLE_SUFFIX = ".unreadable"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be written or restored; the message names the folder and fix."""


class Preempted(Exception):
  """The run stopped on SIGTERM after saving a checkpoint at `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by SIGTERM after saving checkpoint {directory}/{step}; rerun "
                     "the same command to resume from it.")
    self.step = step


def storage_error(error: BaseException) -> Optional[str]:
  """The OS's text ("No space left on device", ...) when `error` or its causes is a full
  disk / file-size limit / quota error, else None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
      return os.strerror(error.errno)
    text = str(error)
    for message in _STORAGE_MESSAGES:
      if message in text:
        return message
    error = error.__cause__ or error.__context__
  return None


def _encode_iterator_state(state: Any) -> dict:
  # grain's DataLoader iterator returns bytes, IterDataset iterators a dict.
  if isinstance(state, (bytes, bytearray)):
    return {"bytes_b64": base64.b64encode(bytes(state)).decode("ascii")}
  return {"state": state}


def _decode_iterator_state(stored: dict) -> Any:
  if "bytes_b64" in stored:
    return base64.b64decode(stored["bytes_b64"])
  return stored["state"]


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"


class Checkpointer:
  """Periodic saves, keep-last-k, restore-latest with fallback; a context manager."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every: int = 1000):
    directory = os.path.abspath(directory)  # orbax/tensorstore reject relative paths
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           save_interval_steps=max(1, save_every))
    self._manager = ocp.CheckpointManager(directory, options=options)
    self.directory = directory
    self._pending_step = None  # the step of the asynchronous save in flight

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc is None:
      self.close()
      return
    # Leaving on an error: keep the save in flight (it is complete data), but let the
    # original error, not a secondary one from the wait, reach the user.
    try:
      self.close()
    except Exception as error:  # pylint: disable=broad-except
      logging.error("while stopping on %s: %s", type(exc).__name__, _first_line(error))

  def latest_complete_step(self) -> Optional[int]:
    """The newest finalized step on disk (None when there is none)."""
    self._manager.reload()
    steps = self._manager.all_steps()
    return max(steps) if steps else None

  def save(self, step: int, state, iterator_state=None, meta: Optional[dict] = None,
           force: bool = False) -> bool:
    """Saves asynchronously when `step` is due (every `save_every`) or `force`d.

    A step already on disk is not saved again (returns False).
    Raises:
      CheckpointError: on a full disk / file-size limit (this or the previous save).
    """
    if force and step in self._manager.all_steps():
      return False
    args = {"state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}, step=int(step)))}
    if iterator_state is not None:
      args["data"] = ocp.args.JsonSave(_encode_iterator_state(iterator_state))
    try:
      saved = self._manager.save(int(step), args=ocp.args.Composite(**args), force=force)
    except Exception as error:  # pylint: disable=broad-except
      # A failure here can also be the previous asynchronous save's, surfacing now.
      self._raise_storage_error(error, self._pending_step or step)
      raise
    if saved:
      self._pending_step = int(step)
    return saved

  def save_or_stop(self, step: int, state, iterator, total_steps: int,
                   stop: "StopSignal") -> None:
    """A training loop's save after `step` steps: every `save_every`, at `total_steps`,
    and on SIGTERM (`stop`), after which it raises `Preempted` (leaving the `with ckpt`
    block then waits for that save)."""
    stopping = stop.should_stop()
    self.save(step, state, iterator.get_state(), meta={"total_steps": total_steps},
              force=step == total_steps or stopping)
    if stopping:
      raise Preempted(step, self.directory)

  def _raise_storage_error(self, error: BaseException, step: int) -> None:
    reason = storage_error(error)
    if reason is None:
      return
    last = self.latest_complete_step()
    kept = (f"the last complete checkpoint, {self.directory}/{last}, is kept"
            if last is not None else "no complete checkpoint exists yet")
    raise CheckpointError(
        f"{self.directory}: writing checkpoint step {step} failed ({reason}); {kept}. Free "
        "disk space or raise the file-size limit (ulimit -f), then rerun the same command "
        "to resume.") from error

  def _move_aside(self, step: int) -> str:
    """Renames the unreadable `<dir>/<step>` to `<dir>/<step>.unreadable[.k]`; returns it."""
    source = os.path.join(self.directory, str(step))
    target, k = source + UNREADABLE_SUFFIX, 1
    while os.path.exists(target):
      k += 1
      target = f"{source}{UNREADABLE_SUFFIX}.{k}"
    if jax.process_index() == 0:  # the folder is shared between the processes
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
    self._manager.reload()
    return target

  def restore_latest(self, abstract_state):
    """Returns (step, state, iterator_state, meta) of the newest restorable checkpoint.

    Returns None when there is no checkpoint. `abstract_state` is a pytree of
    jax.ShapeDtypeStruct with shardings (e.g. from `jax.eval_shape`). Newer checkpoints
    that fail to restore are moved aside (`<step>.unreadable`) once an older one restores,
    so the run can save those steps again.
    Raises:
      CheckpointError: checkpoints exist but none restores.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
      except Exception as err:  # pylint: disable=broad-except
        logging.info("checkpoint %s/%d could not be restored", self.directory, step,
                     exc_info=True)
        failed.append((step, err))
        continue
      iterator_state = None
      try:
        data = self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        iterator_state = _decode_iterator_state(data["data"])
      except Exception:  # pylint: disable=broad-except
        logging.warning("checkpoint %s/%d has no data-iterator state; the data "
                        "stream restarts from its beginning.", self.directory, step)
      for bad_step, err in failed:
        moved = self._move_aside(bad_step)
        print(f"WARNING: checkpoint {self.directory}/{bad_step} is unreadable "
              f"({_first_line(err)[:200]}); moved it to {moved} and resuming from step "
              f"{step}.", flush=True)
      return step, restored["state"], iterator_state, dict(restored["meta"])
    if failed:
      step, err = failed[0]
      raise CheckpointError(
          f"{self.directory}: none of the checkpoints (steps {steps}) restores; the newest "
          f"fails with {_first_line(err)[:300]}. If the model or optimizer config changed, "
          "use a new --workdir; if they are corrupt, move them away to start over.") from err
    return None

  def wait(self):
    """Waits for the save in flight. Raises CheckpointError on a full disk."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      self._raise_storage_error(error, self._pending_step)
      raise
    self._pending_step = None

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()


class StopSignal:
  """Context manager turning SIGTERM into a flag (`requested`) the loop polls.

  Cloud schedulers send SIGTERM before killing a preempted job; the loop then saves a
  checkpoint at the current step and raises `Preempted`. Outside the main thread (where
  signal handlers cannot be set) it does nothing. The previous handler is restored on exit.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self) -> bool:
    """Whether any process got SIGTERM: with several processes every one must stop (and
    save) at the same step, so the flags are gathered (a tiny collective per call)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).any())

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
