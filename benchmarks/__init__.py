"""Speed tables (python -m benchmarks.bench_x [--quick])."""
