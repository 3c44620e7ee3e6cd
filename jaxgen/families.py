"""The family contract, and the registry that maps `config.family` to a family.

Each family module defines `CONFIG_SECTIONS` (the config sections it reads)
and `build(config, image_shape) -> Model`, where the
model offers pure, jit-able functions of (params, inputs, rng):

- `init(rng, batch) -> params`
- `loss(params, batch, rng) -> (loss, metrics)` (one-objective families; the
  trainer turns it into `train_step(state, batch) -> (state, metrics)`, and
  adds the step number to the batch as `batch['step']`); a model with state
  that is not learned by gradient returns `(loss, (metrics, updates))`, see
  `jaxgen.train.state.make_train_step`
- `sample(params, rng, num, **options) -> images`, float [-1, 1], [num, H, W, C],
  the whole sampler one compiled program
- `sample_options(**overrides) -> dict`, the config's sampling defaults with
  command-line overrides applied and checked
- `forward_flops(params) -> float | None`, FLOPs of one network evaluation
  per image, and `evaluations_per_sample(**options) -> int`;
- optionally `train_fns(ema_decay, skip_nonfinite) -> (create_state(params, rng),
  train_step(state, batch))`, for a family that is not one loss minimised by one
  optimizer (a GAN); the trainer then uses these instead of `loss`.
"""

import importlib
from typing import Any, Protocol

import jax
import ml_collections

from jaxgen.errors import JaxgenError

FAMILIES = {
    'diffusion': 'jaxgen.diffusion.model',
    'vae': 'jaxgen.vae.model',
    'gan': 'jaxgen.gan.model',
    'autoregressive': 'jaxgen.autoregressive.model',
}


class Model(Protocol):
  image_shape: tuple[int, int, int]

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any: ...

  def loss(self, params: Any, batch: dict[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]: ...

  def sample(self, params: Any, rng: jax.Array, num: int, **options: Any) -> jax.Array: ...

  def sample_options(self, **overrides: Any) -> dict[str, Any]: ...


def _module(config: ml_collections.ConfigDict):
  name = config.get('family')
  if name not in FAMILIES:
    raise JaxgenError(f'unknown config.family {name!r}; choose one of {", ".join(sorted(FAMILIES))}.')
  return importlib.import_module(FAMILIES[name])


def config_sections(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The config sections that `config.family` reads."""
  return _module(config).CONFIG_SECTIONS


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> Model:
  """Builds the model named by `config.family` for images of `image_shape` (H, W, C)."""
  return _module(config).build(config, tuple(image_shape))
