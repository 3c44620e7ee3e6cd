"""Model FLOPs by XLA's cost analysis, the same number on every backend."""

from typing import Any, Callable

import jax


def hlo_flops(fn: Callable[..., Any], *args: Any) -> float | None:
  """FLOPs of one call of `fn(*args)` (args: arrays or ShapeDtypeStructs), None if XLA gives none.

  Counted on the program as traced (before XLA optimises it), lowered for the
  CPU whatever the default backend: a GPU's analysis of its compiled program
  leaves out the cuDNN convolutions (custom calls), and an un-compiled GPU
  lowering gives none. Loops (`lax.scan`) count their body once. A program
  with a GPU-only kernel (cuDNN attention) does not lower for the CPU: count
  its portable equivalent (`DiffusionModel.forward_flops`, benchmarks.training).
  """
  args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  cost = jax.jit(fn).trace(*args).lower(lowering_platforms=('cpu',)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None
