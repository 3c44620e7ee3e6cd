"""Device mesh and shardings: one code path from one CPU to a pod.

The mesh has two axes over every device of every process: 'data' and 'fsdp'
(fully sharded data parallelism), of sizes (devices / fsdp, fsdp). Batches are
split over both axes together. Each leaf of the train state (parameters, EMA
parameters, optimizer moments) is split along its largest dimension that the
'fsdp' axis divides, and replicated when none does (or when fsdp is 1, plain
data parallelism). Each process feeds only its own slice of every global batch
(`global_batch`).
"""

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.errors import JaxgenError

DATA = 'data'
FSDP = 'fsdp'


def make_mesh(devices: list[jax.Device] | None = None, fsdp: int = 1) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all devices of all processes).

  `fsdp` devices share each parameter; it must divide the device count.
  """
  n = jax.device_count() if devices is None else len(devices)
  if fsdp < 1 or n % fsdp:
    raise JaxgenError(f'train.fsdp={fsdp} must be a positive divisor of the device count {n}; '
                      f'change train.fsdp.')
  # Auto axes: XLA propagates shardings through the model (newer JAX defaults
  # make_mesh to Explicit axes, which would demand an out_sharding on reshapes).
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  if devices is None:
    # jax.make_mesh orders devices so that neighbours on the 'fsdp' axis are close on the network.
    return jax.make_mesh((n // fsdp, fsdp), (DATA, FSDP), axis_types=axis_types)
  return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), (DATA, FSDP), axis_types=axis_types)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device ('data' and 'fsdp' together)."""
  return NamedSharding(mesh, P((DATA, FSDP)))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Splits the largest dimension of `shape` that `fsdp` divides over 'fsdp'; P() if none does."""
  if fsdp > 1:
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % fsdp == 0:
        return P(*([None] * dim + [FSDP]))
  return P()


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  """A NamedSharding for each leaf of `abstract_state` (arrays or ShapeDtypeStructs), by `fsdp_spec`."""
  fsdp = mesh.shape[FSDP]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), abstract_state)


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises JaxgenError unless the batch is positive and divides over devices and processes."""
  n = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n or global_batch_size % jax.process_count():
    raise JaxgenError(f'batch size {global_batch_size} must be a positive multiple of the device '
                      f'count {n}; choose another batch size.')


def jit_train_step(step_fn: Callable, mesh: Mesh, state_sharding: Any = None) -> Callable:
  """jit of `step_fn(state, batch) -> (state, metrics)`; the state is donated.

  `state_sharding` (a sharding or a pytree of them, default replicated) holds
  for the state in and out; the batch is split over the mesh; metrics come out
  replicated.
  """
  state_sharding = replicated(mesh) if state_sharding is None else state_sharding
  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated(mesh)), donate_argnums=0)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles this process's slice of a batch into one global, sharded array per key."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
