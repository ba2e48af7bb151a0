"""Speed tables (python -m benchmarks.bench_x [--quick]).

Importing the package applies the CLIs' glibc malloc settings before any benchmark imports
jax (`pointins_jax.host_allocator`), so the benchmarks time what a user's run gets.
"""
from pointins_jax import host_allocator

host_allocator.tune_glibc_malloc()
