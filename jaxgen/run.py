"""Load a trained run from Python: `run = jaxgen.load_run('runs/ddpm_mnist')`.

A `Run` holds the run's config, its model, the EMA parameters of the latest
(or a chosen) checkpoint, and compiled sample functions:

    run = jaxgen.load_run('runs/ddpm_mnist')
    images = run.sample(jax.random.PRNGKey(0), 16, sampler='ddim', steps=50)  # [16, H, W, C] in [-1, 1]
    uint8 = run.generate(1000, seed=0, batch=250)  # [1000, H, W, C] uint8
"""

import dataclasses
import math
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
import tqdm

from jaxgen import families
from jaxgen import images as images_lib
from jaxgen.errors import JaxgenError
from jaxgen.train import checkpoint, mesh as mesh_lib, trainer


@dataclasses.dataclass
class Run:
  """A trained run, ready to sample. `params` are the EMA parameters (or the raw ones)."""
  workdir: str
  config: ml_collections.ConfigDict
  model: families.Model
  step: int
  params: Any
  mesh: jax.sharding.Mesh
  params_kind: str = 'ema'  # 'ema' or 'raw': which parameters `params` holds
  _compiled: dict[Any, Callable[..., jax.Array]] = dataclasses.field(default_factory=dict, repr=False)

  def _sampler(self, num: int, **options: Any) -> Callable[..., jax.Array]:
    opts = self.model.sample_options(**options)
    key = (num, tuple(sorted(opts.items())))
    if key not in self._compiled:
      sharding = mesh_lib.batch_sharding(self.mesh) if num % self.mesh.devices.size == 0 else None
      self._compiled[key] = jax.jit(
          lambda params, rng: self.model.sample(params, rng, num, sharding=sharding, **opts),
          out_shardings=sharding)
    return self._compiled[key]

  def sample(self, rng: jax.Array, num: int, **options: Any) -> jax.Array:
    """`num` images, float [num, H, W, C] in [-1, 1], from one compiled call."""
    return self._sampler(num, **options)(self.params, rng)

  def iter_generate(self, num: int, *, seed: int = 0, batch: int = 256, progress: bool = False,
                    **options: Any) -> Iterator[np.ndarray]:
    """Yields `num` uint8 images [b, H, W, C] batch by batch, spread over all devices.

    Batch i uses the key fold_in(PRNGKey(seed), i); `batch` is rounded up to a
    multiple of the device count and every batch has that shape, so the
    sampler compiles once (the last batch is trimmed after sampling).
    """
    if num < 1 or batch < 1:
      raise JaxgenError(f'--num and --batch must be positive, got {num} and {batch}.')
    n_dev = self.mesh.devices.size
    batch = math.ceil(min(batch, num) / n_dev) * n_dev
    sample_fn = self._sampler(batch, **options)
    rng = jax.random.PRNGKey(seed)
    for i in tqdm.trange(math.ceil(num / batch), disable=not progress, desc='sample', unit='batch'):
      images = sample_fn(self.params, jax.random.fold_in(rng, i))
      yield images_lib.to_uint8(jax.device_get(images))[:num - i * batch]

  def generate(self, num: int, *, seed: int = 0, batch: int = 256, progress: bool = False,
               **options: Any) -> np.ndarray:
    """`num` uint8 images [num, H, W, C]; see `iter_generate`."""
    return np.concatenate(list(self.iter_generate(num, seed=seed, batch=batch, progress=progress,
                                                  **options)))


def load_run(workdir: str, step: int | None = None, params: str = 'ema') -> Run:
  """Loads the run in `workdir` at its newest readable checkpoint (or at `step`).

  `params` 'ema' (default) takes the exponential moving average of the
  parameters, 'raw' the trained parameters themselves (for short runs, whose
  EMA still carries much of the initialisation: decay 0.999 keeps 0.999^n of it
  after n steps). They are replicated over all local devices, whatever mesh
  wrote them.
  """
  if params not in ('ema', 'raw'):
    raise JaxgenError(f'--params must be ema or raw, got {params!r}.')
  setups = []

  def abstract_state(config: ml_collections.ConfigDict):
    setups.append(trainer.setup(config, mesh_lib.make_mesh()))
    return setups[-1].abstract_state

  restored = checkpoint.restore_latest(workdir, abstract_state, step)
  if restored is None:
    raise JaxgenError(f'no checkpoint in {checkpoint.checkpoint_dir(workdir)}; '
                      f'train first with `jaxgen train --config ... --workdir {workdir}`.')
  s = setups[-1]  # the setup of the checkpoint that was read
  chosen = restored.state.ema_params if params == 'ema' else restored.state.params
  return Run(workdir, restored.config, s.model, restored.step, chosen, s.mesh, params_kind=params)
