"""Loader throughput: synthetic-indoor with full two-view augmentation, 0 vs 2 grain workers.

  python -m benchmarks.bench_loader           # full-size rooms (~50k-200k points), batch 4
  python -m benchmarks.bench_loader --quick   # small rooms (~5-15k points), batch 2

Each scene is generated in memory, grid-sampled (2 cm), cropped into two global views,
augmented (scale, rotations, flips, jitter, elastic distortion, colour), block-masked and
padded into a bucketed batch: the whole `make_pretrain_iterator` path. Times windows of
consecutive batches after a warm-up batch (which pays for spawning workers) and reports
medians: scenes/s, and points/s counting the valid (padded-batch) points of both views.
Baseline: 0 workers (everything in the main process), measured in the same process.
"""
from __future__ import annotations

import argparse
import itertools
import time

from absl import flags
import numpy as np

from pointins_jax.data import config as config_lib
from pointins_jax.data import loader


def measure(data_config, windows: int, batches_per_window: int):
  """Median over windows of (seconds per window, scenes per window, valid points per window)."""
  iterator = loader.make_pretrain_iterator(data_config, seed=0)
  next(iterator)  # warm-up: worker start-up and first prefetches
  results = []
  for _ in range(windows):
    start = time.perf_counter()
    batches = list(itertools.islice(iterator, batches_per_window))
    seconds = time.perf_counter() - start
    points = sum(int(b["valid"].sum()) for b in batches)
    results.append((seconds, len(batches) * data_config.batch_size, points))
  del iterator  # stops worker processes and frees their shared memory now
  seconds = np.array([r[0] for r in results])
  return (float(np.median([r[1] / s for r, s in zip(results, seconds)])),
          float(np.median([r[2] / s for r, s in zip(results, seconds)])))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small rooms (CPU smoke run)")
  parser.add_argument("--windows", type=int, default=3)
  parser.add_argument("--batches", type=int, default=4, help="batches per timed window")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
  data_config = config_lib.data_config("indoor")
  data_config.dataset = "synthetic-indoor"
  data_config.root = ""
  data_config.synthetic_small = args.quick
  data_config.num_scenes = 64
  data_config.batch_size = 2 if args.quick else 4
  if args.quick:
    data_config.buckets = (4096, 8192, 16384)
  print(f"synthetic-indoor, {'small' if args.quick else 'full-size'} rooms, batch "
        f"{data_config.batch_size}, buckets {tuple(data_config.buckets)}; median of "
        f"{args.windows} windows x {args.batches} batches")
  print(f"{'workers':>8}{'scenes/s':>12}{'points/s':>14}{'vs 0 workers':>14}")
  baseline = None
  for workers in (0, 2):
    data_config.num_workers = workers
    scenes, points = measure(data_config, args.windows, args.batches)
    baseline = baseline or scenes
    print(f"{workers:>8}{scenes:>12.2f}{points:>14.0f}{scenes / baseline:>14.2f}")


if __name__ == "__main__":
  main()
