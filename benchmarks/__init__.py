"""Benchmarks: `python -m benchmarks.<name>` (see the README).

Importing the package sets jaxgen's XLA flags before any benchmark starts JAX,
so the benchmarks run the CPU programs that `jaxgen` runs (jaxgen.xla_flags).
"""

from jaxgen import xla_flags

xla_flags.prefer_xla_cpu_kernels()
