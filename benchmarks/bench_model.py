"""PTv3 train and inference step against the PyTorch reference protocol, process by process.

  python -m benchmarks.bench_model                                  # ours, five workloads
  python -m benchmarks.bench_model --quick                          # tiny at 20k only
  python -m benchmarks.bench_model --reference-python /work/peer/venv/bin/python \\
      --reference-script /work/peer/bench_reference.py --rounds 3     # alternated with Pointcept
  python -m benchmarks.bench_model --workloads tiny-20k-train --capacities fixed   # the lever
  python -m benchmarks.bench_model --worker tiny-20k-train          # one JSON line (internal)

The protocol (../shared/reference/pointcept_cpu_reference.md): one `protocol_scene` room of
N points at 2 cm, batch 1, 6 input channels; a train step is forward (train mode, drop path
0.3, shuffled orders) -> Dense(20) -> cross-entropy on the scene's labels -> backward ->
AdamW(2e-3, weight decay 0.05); inference is the eval-mode forward and head. U-Net PTv3 with
m1 conventions (conv stem, BatchNorm) in two sizes: `tiny` (enc 16-256 wide, patch 256,
4.5M parameters) and `default` (Pointcept model.py's defaults, 46.17M). Each measurement is
its own process, so peak RSS is the workload's; with a reference, ours and the reference
alternate (A B A B ...) in one time window, because shared machines drift by +-30%.

Reported per workload: median seconds per step after the first, peak RSS, the first step
(build + compile, or build + first call for the reference) and our compile count. The
host's per-stage point count for data-following capacities is inside our timed step.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import protocol_scene

WORKLOADS = ("tiny-20k-train", "tiny-80k-train", "default-20k-train", "tiny-20k-inference",
             "default-20k-inference")
_STEPS = {"tiny-20k-train": 5, "tiny-80k-train": 3, "default-20k-train": 3,
          "tiny-20k-inference": 5, "default-20k-inference": 5}


def parse_workload(name: str) -> tuple[str, int, str]:
  size, points, mode = name.split("-")
  return size, int(points.rstrip("k")) * 1000, mode


def protocol_model_config(size: str):
  """Pointcept PTv3 model.py (m1: conv stem, BatchNorm) at the protocol's two sizes."""
  from pointins_jax.model import configs  # pylint: disable=import-outside-toplevel
  config = configs.model_config("base_unet")  # model.py defaults, 46.17M parameters
  config.in_channels = 6
  config.enc_patch_size = (1024,) * 5
  config.dec_patch_size = (1024,) * 4
  if size == "tiny":
    config.enc_depths = (1, 1, 1, 1, 1)
    config.enc_channels = (16, 32, 64, 128, 256)
    config.enc_num_head = (1, 2, 4, 8, 16)
    config.enc_patch_size = (256,) * 5
    config.dec_depths = (1, 1, 1, 1)
    config.dec_channels = (32, 32, 64, 128)
    config.dec_num_head = (2, 2, 4, 8)
    config.dec_patch_size = (256,) * 4
  elif size != "default":
    raise ValueError(f"unknown model size {size!r}; use tiny or default.")
  return config


def scene_path(n_points: int) -> str:
  """The protocol room of n_points (seed 0), cached as .npz for us and the reference."""
  path = os.path.join(tempfile.gettempdir(), f"pointins_protocol_scene_{n_points}.npz")
  if not os.path.exists(path):
    protocol_scene.save_scene(path, protocol_scene.protocol_room(n_points, seed=0))
  return path


def _padded(scene: dict, capacity: int):
  n = scene["coord"].shape[0]
  pad = lambda x: np.concatenate([x, np.zeros((capacity - n,) + x.shape[1:], x.dtype)])[None]
  return (pad(scene["coord"]), pad(scene["feat"]), pad(scene["grid"].astype(np.int32)),
          (np.arange(capacity) < n)[None], pad(scene["label"].astype(np.int32)))


def build_workload(workload: str, capacities: str):
  """Builds one workload of ours; returns (step, info).

  `step(i)` runs step i (host capacity count included) and returns its device outputs;
  `info` holds 'params', 'lowered' (a function returning the step's jax `Lowered` for
  cost analysis and op metadata) and 'capacities' (the last step's stage capacities).
  """
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel

  from pointins_jax.model import configs  # pylint: disable=import-outside-toplevel
  from pointins_jax.model import ptv3  # pylint: disable=import-outside-toplevel

  size, n_points, mode = parse_workload(workload)
  config = protocol_model_config(size)
  scene = protocol_scene.load_scene(scene_path(n_points))
  patch = config.enc_patch_size[0]
  capacity = -(-n_points // patch) * patch
  coord, feat, grid, valid, label = _padded(scene, capacity)
  num_stages = len(config.enc_depths)

  def step_capacities():
    if capacities == "fixed":
      return None
    from pointins_jax.data import batching  # pylint: disable=import-outside-toplevel
    counts = batching.stage_point_counts(grid[0][valid[0]], num_stages)
    return tuple(configs.stage_capacities(config, capacity, counts))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, coord, feat, grid, valid, *, train, stage_capacities):
      # Passed only when set, so `--baseline-tree` can time trees without the keyword.
      kwargs = {} if stage_capacities is None else {"stage_capacities": stage_capacities}
      features, _ = ptv3.PointTransformerV3(config, name="backbone")(
          coord, feat, grid, valid, train=train, **kwargs)
      return nn.Dense(protocol_scene.NUM_CLASSES, name="head")(features)

  net = Net()
  inputs = tuple(map(jnp.asarray, (coord, feat, grid, valid)))
  labels = jnp.asarray(label)
  # Parameter shapes do not depend on N, so build on 64 dummy points as the library's
  # trainers do (`pointins.train.dummy_inputs`): initialising on the whole scene would run
  # and compile a full-size forward pass that a user's run never pays.
  dummy = (jnp.zeros((1, 64, 3)), jnp.zeros((1, 64, 6)), jnp.zeros((1, 64, 3), jnp.int32),
           jnp.ones((1, 64), bool))
  variables = jax.jit(functools.partial(net.init, train=False, stage_capacities=None))(
      jax.random.key(0), *dummy)
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  optimizer = optax.adamw(2e-3, weight_decay=0.05)
  state["opt"] = optimizer.init(state["params"])

  @functools.partial(jax.jit, static_argnums=(6,), donate_argnums=(0, 1, 2))
  def train_step(params, batch_stats, opt_state, rng, inputs, labels, caps):
    def loss_fn(p):
      logits, updates = net.apply(
          {"params": p, "batch_stats": batch_stats}, *inputs, train=True, stage_capacities=caps,
          rngs={"dropout": rng, "order": jax.random.fold_in(rng, 1)}, mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.sum(jnp.where(inputs[3], ce, 0.0)) / jnp.sum(inputs[3]), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    step_updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, step_updates), updates["batch_stats"], opt_state,
            loss)

  @functools.partial(jax.jit, static_argnums=(3,))
  def infer(params, batch_stats, inputs, caps):
    return net.apply({"params": params, "batch_stats": batch_stats}, *inputs, train=False,
                     stage_capacities=caps, rngs={"order": jax.random.key(0)})

  info = {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"])),
          "capacities": None}

  def step(i):
    caps = step_capacities()
    info["capacities"] = caps
    if mode == "train":
      state["params"], state["batch_stats"], state["opt"], out = train_step(
          state["params"], state["batch_stats"], state["opt"], jax.random.key(i), inputs, labels,
          caps)
      return out
    return infer(state["params"], state["batch_stats"], inputs, caps)

  def lowered():
    caps = step_capacities()
    if mode == "train":
      return train_step.lower(state["params"], state["batch_stats"], state["opt"],
                              jax.random.key(0), inputs, labels, caps)
    return infer.lower(state["params"], state["batch_stats"], inputs, caps)

  info["lowered"] = lowered
  return step, info


def run_worker(workload: str, capacities: str) -> dict:
  """Times one workload of ours in this process; returns the JSON record."""
  start = time.perf_counter()
  import jax  # pylint: disable=import-outside-toplevel

  compiles = []  # backend compilations (jax's monitoring event), also on older trees
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **_: compiles.append(seconds)
      if event == "/jax/core/compile/backend_compile_duration" else None)
  t_build = time.perf_counter()
  step, info = build_workload(workload, capacities)
  times = []
  first = None
  for i in range(_STEPS[workload] + 1):
    t0 = time.perf_counter()
    jax.block_until_ready(step(i))
    if first is None:
      first = time.perf_counter() - t_build
    else:
      times.append(time.perf_counter() - t0)
  return {"impl": "pointins_jax", "workload": workload, "capacities": capacities,
          "n_points": parse_workload(workload)[1], "median_s": float(np.median(times)),
          "steps_s": times, "first_step_s": first, "startup_s": t_build - start,
          "compiles": len(compiles), "compile_s": float(sum(compiles)),
          "stage_capacities": info["capacities"],
          "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
          "params": info["params"]}


def _run_json(cmd: list[str], env=None, cwd=None) -> dict:
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
  for line in reversed(out.stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  raise RuntimeError(f"{' '.join(cmd)} printed no JSON record (rc {out.returncode}):\n"
                     f"{out.stderr[-3000:]}")


def ours(workload: str, capacities: str, tree: str = "") -> dict:
  """One worker process; `tree` runs another checkout's code (a baseline commit)."""
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
             POINTINS_COMPILATION_CACHE="0", JAX_COMPILATION_CACHE_DIR="",
             JAX_ENABLE_COMPILATION_CACHE="false")  # compile time is part of what we measure
  env.pop("JAX_COMPILATION_CACHE_DIR")
  cwd = tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if tree and not os.path.exists(os.path.join(tree, "benchmarks", "protocol_scene.py")):
    raise FileNotFoundError(f"--baseline-tree {tree}: copy benchmarks/bench_model.py and "
                            "benchmarks/protocol_scene.py into that checkout first.")
  return _run_json([sys.executable, "-m", "benchmarks.bench_model", "--worker", workload,
                    "--capacities", capacities], env, cwd)


def reference(workload: str, python: str, script: str, tcmalloc: str) -> dict:
  size, n_points, mode = parse_workload(workload)
  env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
  if tcmalloc:
    env["LD_PRELOAD"] = tcmalloc
  return _run_json([python, script, "--scene", scene_path(n_points), "--config", size,
                    "--mode", mode, "--steps", str(_STEPS[workload])], env)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--quick", action="store_true", help="tiny-20k train and inference")
  parser.add_argument("--rounds", type=int, default=1, help="alternated process pairs")
  parser.add_argument("--capacities", default="fitted", choices=("fitted", "fixed"),
                      help="stage capacities: data-following (default) or fixed fractions")
  parser.add_argument("--reference-python", default="", help="Pointcept venv's python")
  parser.add_argument("--reference-script", default="", help="its bench_reference.py")
  parser.add_argument("--tcmalloc", default="/work/peer/tcmalloc/usr/lib/x86_64-linux-gnu/"
                      "libtcmalloc_minimal.so.4", help="LD_PRELOAD for the reference")
  parser.add_argument("--baseline-tree", default="",
                      help="also time this checkout (e.g. a git worktree of an older commit), "
                      "alternated in the same window")
  parser.add_argument("--baseline-capacities", default="fixed", choices=("fitted", "fixed"),
                      help="the baseline's capacities ('fixed' for trees before fa40429)")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(run_worker(args.worker, args.capacities)), flush=True)
    return
  if args.quick:
    args.workloads = "tiny-20k-train,tiny-20k-inference"
  with_ref = bool(args.reference_python and args.reference_script)
  tcmalloc = args.tcmalloc if os.path.exists(args.tcmalloc) else ""
  print(f"PTv3 protocol benchmark; ours: capacities={args.capacities}; " + (
        f"baseline: {args.baseline_tree}, capacities={args.baseline_capacities}; "
        if args.baseline_tree else "") +
        f"{args.rounds} round(s), medians over rounds" + (
            f"; reference: {args.reference_script} (tcmalloc {'on' if tcmalloc else 'off'})"
            if with_ref else ""))
  base = bool(args.baseline_tree)
  print("| workload | ref s/step | " + ("baseline s/step | baseline GiB | baseline first s | "
                                      if base else "") +
        "ours s/step | ours / ref | peak GiB ours / ref | our first step s | compiles |")
  print("|---|---|" + ("---|---|---|" if base else "") + "---|---|---|---|---|")
  for workload in args.workloads.split(","):
    rows = {"ours": [], "ref": [], "base": []}
    for _ in range(args.rounds):
      if with_ref:
        rows["ref"].append(reference(workload, args.reference_python, args.reference_script,
                                     tcmalloc))
      if base:
        rows["base"].append(ours(workload, args.baseline_capacities, args.baseline_tree))
      rows["ours"].append(ours(workload, args.capacities))
    med = lambda side, key: float(np.median([r[key] for r in rows[side]]))
    mine = med("ours", "median_s")
    ref = med("ref", "median_s") if with_ref else float("nan")
    ratios = [o["median_s"] / r["median_s"] for o, r in zip(rows["ours"], rows["ref"])]
    ratio = f"{np.median(ratios):.2f}x" if ratios else "-"
    ref_rss = f"{med('ref', 'peak_rss_gib'):.2f}" if with_ref else "-"
    before = (f"{med('base', 'median_s'):.2f} | {med('base', 'peak_rss_gib'):.2f} | "
              f"{med('base', 'first_step_s'):.1f} | " if base else "")
    print(f"| {workload} | {ref:.2f} | {before}{mine:.2f} | {ratio} | "
          f"{med('ours', 'peak_rss_gib'):.2f} / {ref_rss} | {med('ours', 'first_step_s'):.1f} | "
          f"{int(med('ours', 'compiles'))} |", flush=True)


if __name__ == "__main__":
  main()
