"""The diffusion family: a DDPM (Ho et al. 2020) behind the family contract.

Config sections: `model` (UNetConfig), `diffusion` (DiffusionConfig) and
`sample` (SampleConfig, the sampling defaults that the CLI can override).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import config as config_lib
from jaxgen.diffusion import likelihood, samplers, schedules
from jaxgen.diffusion.unet import UNet, UNetConfig
from jaxgen.errors import JaxgenError
from jaxgen.nn.flops import hlo_flops

# The config sections this family reads (besides the trainer's).
CONFIG_SECTIONS = ('model', 'diffusion', 'sample')


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The `config.diffusion` section: the forward process."""
  schedule: str = 'linear'  # 'linear' | 'cosine'
  num_timesteps: int = 1000
  beta_start: float = 1e-4  # linear only
  beta_end: float = 0.02  # linear only


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The `config.sample` section: sampling defaults (CLI flags override them)."""
  sampler: str = 'ddpm'  # 'ddpm' | 'ddim'
  steps: int = 0  # DDIM steps; 0 means every timestep
  eta: float = 0.0  # DDIM noise (0: deterministic)
  variance: str = 'fixedlarge'  # DDPM: 'fixedlarge' (beta_t) | 'fixedsmall' (posterior)
  clip_x0: bool = True


def dropout_key(rng: jax.Array) -> jax.Array:
  """A key for dropout masks, derived from `rng`, on the 'rbg' (Philox) generator.

  Threefry bits for the masks took 2.8 ms of a 57 ms DDPM CIFAR-10 train
  step at batch 512 on an H200, XLA's RngBitGenerator 1.0 ms (profiles in
  benchmarks/results/h200_speed.md). The masks stay a pure function of `rng` and the
  program; unlike threefry's they may change with the mesh's layout.
  """
  return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl='rbg')


@dataclasses.dataclass(frozen=True)
class DiffusionModel:
  """Epsilon-prediction DDPM. Images are float [-1, 1], [B, H, W, C]."""
  unet: UNet
  schedule: schedules.Schedule
  sample_config: SampleConfig
  image_shape: tuple[int, int, int]

  def _labels(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch.get('label') if self.unet.config.num_classes else None

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Parameters for a batch like `batch` (only its shapes matter)."""
    x = batch['image']
    t = jnp.zeros(x.shape[:1], jnp.int32)
    return self.unet.init({'params': rng}, x, t, self._labels(batch))['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """L_simple: MSE between the true and predicted noise at a uniform random t."""
    x0 = batch['image']  # [B, H, W, C]
    rng_t, rng_noise, rng_dropout = jax.random.split(rng, 3)
    rng_dropout = dropout_key(rng_dropout)
    t = jax.random.randint(rng_t, x0.shape[:1], 0, self.schedule.num_timesteps)  # [B]
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    x_t = schedules.q_sample(self.schedule, x0, t, noise)
    eps = self.unet.apply({'params': params}, x_t, t, self._labels(batch), train=True,
                          rngs={'dropout': rng_dropout})
    loss = jnp.mean(jnp.square(eps - noise))
    return loss, {'loss': loss}

  def eps_fn(self, params: Any, labels: jax.Array | None = None,
             sharding: jax.sharding.Sharding | None = None):
    """The noise predictor (x_t [B,H,W,C], t [B]) -> eps [B,H,W,C] at fixed params.

    With `sharding`, x_t is constrained to it at every step, so a sampler loop
    runs batch-parallel over the mesh instead of replicated.
    """
    def eps(x, t):
      if sharding is not None:
        x = jax.lax.with_sharding_constraint(x, sharding)
      return self.unet.apply({'params': params}, x, t, labels)
    return eps

  def sample_options(self, **overrides: Any) -> dict[str, Any]:
    """Sampling options: the config's defaults with non-None `overrides` applied."""
    opts = dataclasses.asdict(self.sample_config)
    for key, value in overrides.items():
      if key not in opts:
        raise JaxgenError(f'unknown diffusion sampling option {key!r}; known: {", ".join(opts)}.')
      if value is not None:
        opts[key] = value
    if opts['sampler'] not in ('ddpm', 'ddim'):
      raise JaxgenError(f"unknown sampler {opts['sampler']!r}; use ddpm or ddim.")
    if not 0 <= opts['steps'] <= self.schedule.num_timesteps:
      raise JaxgenError(f"--steps must be between 1 and {self.schedule.num_timesteps}, got {opts['steps']}.")
    return opts

  def sample(self, params: Any, rng: jax.Array, num: int, *, labels: jax.Array | None = None,
             sharding: jax.sharding.Sharding | None = None, **options: Any) -> jax.Array:
    """Draws `num` images [num, H, W, C] in [-1, 1]; jit with `num` and options static."""
    opts = self.sample_options(**options)
    if opts['sampler'] == 'ddpm':
      return samplers.ddpm_sample(self.eps_fn(params, labels, sharding), self.schedule, rng,
                                  (num, *self.image_shape), variance=opts['variance'],
                                  clip_x0=opts['clip_x0'])
    return samplers.ddim_sample(self.eps_fn(params, labels, sharding), self.schedule, rng,
                                (num, *self.image_shape),
                                num_steps=opts['steps'] or self.schedule.num_timesteps,
                                eta=opts['eta'], clip_x0=opts['clip_x0'])

  def forward_flops(self) -> float | None:
    """FLOPs of one UNet evaluation on one image, by XLA's cost analysis (nothing runs)."""
    x = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), {'image': jnp.zeros(x.shape)}))
    return hlo_flops(lambda p, x, t: self.unet.apply({'params': p}, x, t), params, x, t)

  def nll(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
          sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """Upper bound on -log p(image) in nats per image [B] (8-bit data; see diffusion.likelihood).

    Uses the config's DDPM variance; T network evaluations per image.
    """
    return likelihood.nll_bound(self.eps_fn(params, self._labels(batch), sharding), self.schedule,
                                batch['image'], rng, variance=self.sample_config.variance)

  def evaluations_per_sample(self, **options: Any) -> int:
    opts = self.sample_options(**options)
    if opts['sampler'] == 'ddpm':
      return self.schedule.num_timesteps
    return opts['steps'] or self.schedule.num_timesteps


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> DiffusionModel:
  """The diffusion model of `config` for images of `image_shape` (H, W, C)."""
  unet_cfg = config_lib.section(config, 'model', UNetConfig)
  diff_cfg = config_lib.section(config, 'diffusion', DiffusionConfig)
  sample_cfg = config_lib.section(config, 'sample', SampleConfig)
  kwargs = {}
  if diff_cfg.schedule == 'linear':
    kwargs = dict(beta_start=diff_cfg.beta_start, beta_end=diff_cfg.beta_end)
  schedule = schedules.make_schedule(diff_cfg.schedule, diff_cfg.num_timesteps, **kwargs)
  return DiffusionModel(UNet(unet_cfg), schedule, sample_cfg, image_shape)
