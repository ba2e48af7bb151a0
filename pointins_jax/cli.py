"""Command-line plumbing shared by `experiments/*`: a quiet JAX start and one-line errors.

Import this module first in an entry point, before anything imports jax. On a machine
without an NVIDIA GPU (no /dev/nvidia* device, no nvidia-smi) it then
* sets JAX_PLATFORMS=cpu unless the user set JAX_PLATFORMS (the CUDA plugin of the test
  extra would otherwise fail to load CUDA and print a traceback), and
* imports jax and registers its plugins with stderr captured, replaying everything but the
  plugin's `cudart_stub` / `absl::InitializeLog` lines. Backends are not started, so
  `jax.distributed.initialize()` still works afterwards.

It then applies `host_allocator.tune_glibc_malloc`, before any backend starts (glibc
malloc settings that halve XLA:CPU's step time here; $POINTINS_MALLOC_TUNING=0 turns
them off).

`run(main, argv, name=...)` (argparse entry points) and `run_absl(main, name=...)` (absl
entry points) turn the product's errors (bad scenes, config fields, checkpoints, files)
into one line on stderr, `<name>: error: <what, which file or field, the fix>`, and a
non-zero exit status: 1 for errors, 2 for bad flags, 130 for Ctrl-C, 143 after SIGTERM
(a checkpoint was saved). `--debug` anywhere on the command line, or POINTINS_DEBUG=1,
shows the traceback instead.
"""
from __future__ import annotations

import contextlib
import glob
import logging as logging_lib
import os
import shutil
import sys
import tempfile
from typing import Callable, Optional, Sequence

from pointins_jax import host_allocator

DEBUG_ENV = "POINTINS_DEBUG"
DEBUG_FLAG = "--debug"
# stderr lines of the CUDA plugin probing a machine without CUDA (C++ absl logging).
_CUDA_NOISE = ("cudart_stub.cc", "All log messages before absl::InitializeLog()")
_HINT = f" (rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)"


def has_nvidia_gpu() -> bool:
  """Whether this machine has an NVIDIA device node or driver tool."""
  return bool(glob.glob("/dev/nvidia[0-9]*")) or shutil.which("nvidia-smi") is not None


@contextlib.contextmanager
def _without_noise_on_stderr(noise: Sequence[str]):
  """Captures file descriptor 2 (C++ logs too) and replays the lines without `noise`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      kept = [line for line in capture.read().decode(errors="replace").splitlines(True)
              if not any(marker in line for marker in noise)]
      sys.stderr.write("".join(kept))
      sys.stderr.flush()


def quiet_jax_start() -> None:
  """On a CPU-only machine: JAX_PLATFORMS=cpu (unless set) and no CUDA probing noise.

  Idempotent; does nothing on a machine with an NVIDIA GPU or when jax is already imported
  (too late to capture its import).
  """
  if has_nvidia_gpu() or "jax" in sys.modules:
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  with _without_noise_on_stderr(_CUDA_NOISE):
    import jax  # pylint: disable=import-outside-toplevel,unused-import
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    # Loading the plugins' shared libraries prints the stub lines; do it now, captured.
    # Private API (jax 0.10): skipped if it moves, which only brings the lines back.
    register = getattr(xla_bridge, "_discover_and_register_pjrt_plugins", None)
    if register is not None:
      register()


def debug_requested(argv: Sequence[str]) -> bool:
  return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _strip_debug(argv: Sequence[str]) -> list[str]:
  return [arg for arg in argv if arg != DEBUG_FLAG]


def _product_errors() -> tuple[type, ...]:
  # Imported here: the data and checkpoint modules import jax, which must come after
  # quiet_jax_start.
  from pointins_jax import checkpointing  # pylint: disable=import-outside-toplevel
  from pointins_jax.data.scene import SceneError  # pylint: disable=import-outside-toplevel
  return (SceneError, checkpointing.CheckpointError)


def _innermost_product_error(error: BaseException) -> BaseException:
  """The first product error (SceneError, CheckpointError) in `error`'s cause chain, else
  `error`: grain and orbax may wrap the error that names the file."""
  product, seen, current = _product_errors(), set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, product):
      return current
    current = current.__cause__ or current.__context__
  return error


def error_line(error: BaseException) -> str:
  """One line for `error`: its product error's message, newlines folded; OSErrors with
  their file name and a disk-space hint."""
  from pointins_jax import checkpointing  # pylint: disable=import-outside-toplevel
  error = _innermost_product_error(error)
  if isinstance(error, OSError) and error.filename is not None:
    message = f"{error.filename}: {error.strerror or error}"
    if isinstance(error, PermissionError):
      message += "; choose a folder you can write to or fix its permissions"
  elif isinstance(error, KeyError) and error.args:
    message = str(error.args[0])  # str(KeyError) quotes its message
  else:
    message = str(error) or type(error).__name__
  storage = checkpointing.storage_error(error)
  if storage and not isinstance(error, checkpointing.CheckpointError):
    message += f" ({storage}: free disk space or raise the file-size limit, then rerun)"
  return " ".join(message.split())


def _report(name: str, error: BaseException, product: tuple[type, ...]) -> int:
  """Prints the one line for `error`; returns the exit status."""
  from pointins_jax import checkpointing  # pylint: disable=import-outside-toplevel
  if isinstance(error, KeyboardInterrupt):
    # The training loops waited for their checkpoint in flight before this point.
    print(f"{name}: interrupted (Ctrl-C).", file=sys.stderr, flush=True)
    return 130
  if isinstance(error, checkpointing.Preempted):
    print(f"{name}: {error}", file=sys.stderr, flush=True)
    return 143
  hint = "" if isinstance(_innermost_product_error(error), product) else _HINT
  print(f"{name}: error: {error_line(error)}{hint}", file=sys.stderr, flush=True)
  return 1


# Errors reported in one line: the product's own, config / value errors, missing or
# unwritable files, interruptions. Anything else (a bug) keeps its traceback.
def _reported_errors() -> tuple[type, ...]:
  from pointins_jax import checkpointing  # pylint: disable=import-outside-toplevel
  return _product_errors() + (checkpointing.Preempted, ValueError, KeyError, OSError,
                              KeyboardInterrupt)


def _quiet_unraisable(unraisable) -> None:
  """Drops the hundreds of "Event loop is closed" tracebacks orbax's aborted asynchronous
  writes leave after a failed save (e.g. a full disk); other ones print as usual."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def run(main: Callable[[list[str]], Optional[int]], argv: Optional[Sequence[str]] = None, *,
        name: str) -> int:
  """Calls `main(argv without --debug)`; returns its status, or 1 / 130 / 143 after
  printing the one-line error (module docstring). With --debug the error propagates.

  Without --debug it also installs, for the rest of the process, a `sys.unraisablehook`
  that drops orbax's "Event loop is closed" noise after a failed save."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  if not debug:
    sys.unraisablehook = _quiet_unraisable
  try:
    status = main(_strip_debug(argv))
  except _reported_errors() as error:  # pylint: disable=catching-non-exception
    if debug:
      raise
    return _report(name, error, _product_errors())
  return status if isinstance(status, int) else 0  # some mains return their results


def config_flag_error(argv: Sequence[str], error: BaseException) -> str:
  """One line for an error while parsing absl / ml_collections flags, naming the flag."""
  text = " ".join(str(error).split())
  config_args = [a for a in argv if a.startswith("--config.")]
  if isinstance(error, AttributeError) and config_args:
    field = text.strip("\"'")
    bad = next((a.split("=", 1)[0] for a in config_args
                if a.split("=", 1)[0].rsplit(".", 1)[-1] == field), f"--config...{field}")
    return (f"{bad}: the config has no field {field!r}; see docs/config_reference.md for "
            "the fields and their spelling.")
  return f"bad command-line flag: {text}. Pass --helpfull to see the flags."


def _quiet_record(record) -> bool:
  """absl handler filter without --debug: log lines keep no traceback, and the error lines
  of a failed orbax save (its threads, then asyncio's "exception was never retrieved" for
  each aborted write) are dropped: `checkpointing` turns that failure into the one line."""
  record.exc_info, record.exc_text = None, None
  if record.levelno >= logging_lib.ERROR and (
      f"{os.sep}orbax{os.sep}" in record.pathname or
      (record.name == "asyncio" and "never retrieved" in record.getMessage())):
    return False
  return True


def run_absl(main: Callable[[list[str]], Optional[int]], *, name: str) -> None:
  """`absl.app.run(main)` with one-line flag and run errors (module docstring); exits."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  argv = list(sys.argv)
  debug = debug_requested(argv)
  argv = _strip_debug(argv)

  def parse(args):
    try:
      return flags.FLAGS(args)
    except Exception as error:  # pylint: disable=broad-except
      if debug:
        raise
      # ml_collections raises plain AttributeError / ValueError for a bad --config.x.
      print(f"{name}: error: {config_flag_error(args, error)}", file=sys.stderr, flush=True)
      sys.exit(2)

  def wrapped(args):
    if not debug:
      # orbax logs a failed background save with its traceback; the one line says it all.
      from absl import logging  # pylint: disable=import-outside-toplevel
      logging.get_absl_handler().addFilter(_quiet_record)
    status = run(main, list(args[1:]) + ([DEBUG_FLAG] if debug else []), name=name)
    sys.exit(status)

  app.run(wrapped, argv=argv, flags_parser=parse)


quiet_jax_start()
# Before a backend starts: glibc's defaults cost XLA:CPU's steps about 2x (host_allocator).
host_allocator.tune_glibc_malloc()
