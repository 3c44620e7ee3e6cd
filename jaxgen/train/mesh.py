"""Device mesh and shardings: one code path from one CPU to a pod.

The mesh has a 'data' axis over every device of every process. Batches are
sharded along it; the train state is replicated. Each process feeds only its
own slice of every global batch (`global_batch`).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.errors import JaxgenError

DATA = 'data'


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-d mesh named 'data' over `devices` (default: all devices of all processes)."""
  # Auto axes: XLA propagates shardings through the model (newer JAX defaults
  # make_mesh to Explicit axes, which would demand an out_sharding on reshapes).
  axis_types = (jax.sharding.AxisType.Auto,)
  if devices is None:
    return jax.make_mesh((jax.device_count(),), (DATA,), axis_types=axis_types)
  return Mesh(np.asarray(devices), (DATA,), axis_types=axis_types)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises JaxgenError unless the batch is positive and divides over devices and processes."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n or global_batch_size % jax.process_count():
    raise JaxgenError(f'batch size {global_batch_size} must be a positive multiple of the device '
                      f'count {n}; choose another batch size.')


def jit_train_step(step_fn, mesh: Mesh):
  """jit of `step_fn(state, batch) -> (state, metrics)`: state replicated and donated, batch over 'data'."""
  return jax.jit(step_fn, in_shardings=(replicated(mesh), batch_sharding(mesh)),
                 out_shardings=replicated(mesh), donate_argnums=0)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's slice of a batch into one global, sharded array per key."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
