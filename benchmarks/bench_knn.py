"""kNN speed: our `knn` paths (the Pallas kernel on a GPU; on a CPU the host path, "auto"
there, and the in-graph XLA search) against `scipy.spatial.cKDTree` build + query on the
same points, measured in one process.

  python -m benchmarks.bench_knn            # 100k points, k = 20 and 150, +- max_distance
  python -m benchmarks.bench_knn --quick    # 10k points, < 1 minute on the 2-core CPU

Queries are the keys themselves (SCR's self-kNN). Two clouds: "volume" (uniform in a
10 x 10 x 3 m box) and "surfaces" (the room's floor, walls and a few box-shaped objects, the
2-D density of real scans). Prints a markdown table of median seconds and ratios to cKDTree.
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from scipy.spatial import cKDTree

from kernels import dispatch
from kernels import knn as knn_lib
from benchmarks.timing import interleaved_median_seconds

# (k, max_distance): SCR indoor (150, 1.2 m), outdoor (20, 1 m), and both unbounded.
CASES = ((20, None), (20, 1.0), (150, None), (150, 1.2))
_ROOM = np.array([10.0, 10.0, 3.0])


def volume_cloud(num_points, rng):
  """f32 [N, 3] uniform in the room box, metres."""
  return (rng.uniform(0, 1, (num_points, 3)) * _ROOM).astype(np.float32)


def surface_cloud(num_points, rng):
  """f32 [N, 3] on the floor, four walls and eight 1 m boxes, with 1 cm noise, metres."""
  faces = []  # (origin, u edge, v edge)
  x, y, z = np.eye(3) * _ROOM
  faces += [(np.zeros(3), x, y), (np.zeros(3), x, z), (np.zeros(3), y, z), (y, x, z), (x, y, z)]
  box_rng = np.random.default_rng(0)
  for corner in box_rng.uniform([1, 1, 0], [8, 8, 0], (8, 3)):
    for axis in range(3):
      u, v = np.eye(3)[(axis + 1) % 3], np.eye(3)[(axis + 2) % 3]
      faces += [(corner, u, v), (corner + np.eye(3)[axis], u, v)]
  areas = np.array([np.linalg.norm(np.cross(u, v)) for _, u, v in faces])
  face = rng.choice(len(faces), num_points, p=areas / areas.sum())
  origin, u, v = (np.stack([faces[f][i] for f in range(len(faces))])[face] for i in range(3))
  s, t = rng.uniform(0, 1, (2, num_points, 1))
  points = origin + s * u + t * v + rng.normal(0, 0.01, (num_points, 3))
  return points.astype(np.float32)


def _ckdtree(points, k, max_distance):
  tree = cKDTree(points)
  return tree.query(points, k, distance_upper_bound=np.inf if max_distance is None
                    else max_distance, workers=-1)


def _ours(points, k, max_distance, impl):
  fn = jax.jit(lambda p: knn_lib.knn(p, p, k, max_distance=max_distance, impl=impl))
  points = jax.device_put(points)
  jax.block_until_ready(fn(points))  # compile
  return lambda: jax.block_until_ready(fn(points))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="10k points, 1 repeat")
  parser.add_argument("--points", type=int, default=100_000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  num_points, repeats = (10_000, 1) if args.quick else (args.points, args.repeats)
  # On a GPU only the kernel runs (the host path would copy to the CPU and back).
  impls = ["pallas"] if dispatch.on_gpu() else ["host", "xla"]
  rng = np.random.default_rng(0)
  clouds = {"volume": volume_cloud(num_points, rng), "surfaces": surface_cloud(num_points, rng)}

  print(f"kNN, {num_points} points (queries = keys), backend {jax.default_backend()}, "
        f"auto -> {knn_lib.resolve_impl('auto', num_points)}, cKDTree workers=-1 on {os.cpu_count()} "
        f"CPUs; median of {repeats}, interleaved\n")
  header = ["cloud", "k", "max_distance", "cKDTree s"]
  header += [f"{impl} s" for impl in impls] + [f"{impl} / cKDTree" for impl in impls]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for cloud_name, points in clouds.items():
    for k, max_distance in CASES:
      # Compiled before timing (_ours), then every repeat times cKDTree and each path in turn.
      baseline, *ours = interleaved_median_seconds(
          [lambda: _ckdtree(points, k, max_distance)]
          + [_ours(points, k, max_distance, impl) for impl in impls], repeats, warmup=False)
      row = [cloud_name, str(k), "-" if max_distance is None else f"{max_distance} m",
             f"{baseline:.3f}"] + [f"{t:.3f}" for t in ours] + [f"{t / baseline:.2f}"
                                                                for t in ours]
      print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
  main()
