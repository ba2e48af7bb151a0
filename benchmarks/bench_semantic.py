"""Semantic-branch loss variants: Sonata's assignment targets vs DOS softmaps, same process.

  python -m benchmarks.bench_semantic           # 32 views x 4096 points, K = 4096
  python -m benchmarks.bench_semantic --quick   # 4 views x 512 points, K = 256

Times one within-view distillation term, forward + gradient w.r.t. the student logits
(teacher logits, weights and the prior's usage are inputs), as `semantic.distill` runs it
in the train step: Sinkhorn (3 iterations) over all observable points, then the loss.
The full size is one device's share of a batch of 16 scenes x 2 views after masking.
Baseline: target='assignment' with the uniform prior (Sonata). Reports medians over
repeats after compilation and the ratio variant / baseline (> 1: slower than Sonata).
The 'zipf' rows also pay for the teacher-usage softmax over [V, n, K] that ranks the
prototypes (XLA drops it for 'uniform').
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from pointins_jax.pointins import semantic
from benchmarks.timing import median_seconds

VARIANTS = (("assignment", "uniform"), ("assignment", "zipf"), ("softmap", "uniform"),
            ("softmap", "zipf"))


def make_inputs(views: int, points: int, prototypes: int, seed: int = 0):
  """Cosine-like student/teacher logits f32 [V, n, K]; weights f32 [V, n] (70% visible)."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  student = jnp.tanh(jax.random.normal(k1, (views, points, prototypes)))
  teacher = jnp.tanh(jax.random.normal(k2, (views, points, prototypes)))
  weights = (jax.random.uniform(k3, (views, points)) < 0.7).astype(jnp.float32)
  return student, teacher, weights


@functools.partial(jax.jit, static_argnames=("target", "prior"))
def loss_and_grad(student, teacher, weights, *, target, prior):
  usage = jnp.sum(jax.nn.softmax(teacher / 0.07, axis=-1) * weights[..., None], axis=(0, 1))
  marginal = semantic.prototype_marginal(prior, usage, 1.3)
  loss_fn = lambda s: semantic.distill(s, teacher, weights, target=target,
                                       teacher_temperature=0.07, student_temperature=0.1,
                                       marginal=marginal)[0]
  return jax.value_and_grad(loss_fn)(student)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  views, points, prototypes = (4, 512, 256) if args.quick else (32, 4096, 4096)
  student, teacher, weights = make_inputs(views, points, prototypes)
  print(f"device: {jax.devices()[0].device_kind}; views {views}, points/view {points}, "
        f"prototypes {prototypes}; median of {args.repeats}")
  print(f"{'target':<12}{'prior':<10}{'median ms':>12}{'vs Sonata':>12}")
  baseline = None
  for target, prior in VARIANTS:
    seconds = median_seconds(
        lambda: loss_and_grad(student, teacher, weights, target=target, prior=prior),
        args.repeats)
    baseline = baseline or seconds
    print(f"{target:<12}{prior:<10}{seconds * 1e3:>12.2f}{seconds / baseline:>12.2f}")


if __name__ == "__main__":
  main()
