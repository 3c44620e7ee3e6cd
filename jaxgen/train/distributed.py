"""Several processes: JAX's own multi-controller runtime (`jax.distributed`).

Every process runs the same `jaxgen train` command. `initialize` must run
before JAX touches any device; after it, `jax.devices()` spans all processes,
the trainer's mesh covers them all, each process reads its own slice of every
global batch, and checkpoints are written collectively by Orbax.
"""

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """Starts `jax.distributed` from explicit values, or from the cluster's environment with `auto`.

  With neither, it does nothing (one process). On CPU, cross-process
  collectives use gloo.
  """
  if coordinator_address is None and not auto:
    return
  # Only affects CPU devices; GPU and TPU use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
