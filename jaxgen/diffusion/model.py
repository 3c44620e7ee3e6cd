"""The diffusion family: a DDPM (Ho et al. 2020) behind the family contract.

Config sections: `model` (UNetConfig), `diffusion` (DiffusionConfig) and
`sample` (SampleConfig, the sampling defaults that the CLI can override).

The network predicts eps, x0 or v (`diffusion.prediction`, see
`parameterisation`); the samplers and the likelihood bound see it through
`eps_fn`, its noise prediction, whatever the type. A conditional model trained
with `diffusion.label_dropout` > 0 also learns the null class (label
num_classes) and can sample with classifier-free guidance (`sample.guidance`).
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import config as config_lib
from jaxgen.diffusion import guidance as guidance_lib, likelihood, parameterisation, samplers, schedules
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
  prediction: str = 'eps'  # network output: 'eps' | 'x0' | 'v' (a eps - s x0, Salimans & Ho 2022)
  # Probability that a training label is replaced by the null class num_classes
  # (conditional models; > 0 enables classifier-free guidance when sampling).
  label_dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The `config.sample` section: sampling defaults (CLI flags override them)."""
  sampler: str = 'ddpm'  # 'ddpm' | 'ddim' | 'dpmpp2m' | 'heun'
  steps: int = 0  # ddim/dpmpp2m/heun timesteps; 0 means every timestep
  eta: float = 0.0  # DDIM noise (0: deterministic)
  variance: str = 'fixedlarge'  # DDPM: 'fixedlarge' (beta_t) | 'fixedsmall' (posterior)
  clip_x0: bool = True
  label: int = -1  # conditional models: class of the samples; -1 cycles through the classes
  guidance: float = 1.0  # classifier-free guidance scale w (1: plain conditional; 0: unconditional)


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
  """A DDPM predicting eps, x0 or v. Images are float [-1, 1], [B, H, W, C]."""
  unet: UNet
  schedule: schedules.Schedule
  sample_config: SampleConfig
  image_shape: tuple[int, int, int]
  diffusion_config: DiffusionConfig = DiffusionConfig()

  @property
  def num_classes(self) -> int:
    return self.unet.config.num_classes

  def _labels(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch.get('label') if self.num_classes else None

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Parameters for a batch like `batch` (only its shapes matter)."""
    x = batch['image']
    t = jnp.zeros(x.shape[:1], jnp.int32)
    return self.unet.init({'params': rng}, x, t, self._labels(batch))['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """L_simple: MSE between the network's output and its target at a uniform random t.

    The target is the noise, x0 or v (`diffusion.prediction`). With label
    dropout, each label becomes the null class num_classes with probability
    `diffusion.label_dropout` (key: fold_in(rng, 3)).
    """
    x0 = batch['image']  # [B, H, W, C]
    rng_t, rng_noise, rng_dropout = jax.random.split(rng, 3)
    rng_dropout = dropout_key(rng_dropout)
    t = jax.random.randint(rng_t, x0.shape[:1], 0, self.schedule.num_timesteps)  # [B]
    noise = jax.random.normal(rng_noise, x0.shape, x0.dtype)
    x_t = schedules.q_sample(self.schedule, x0, t, noise)
    labels = self._labels(batch)  # [B] or None
    p_drop = self.diffusion_config.label_dropout
    if labels is not None and p_drop > 0:
      drop = jax.random.bernoulli(jax.random.fold_in(rng, 3), p_drop, labels.shape)  # [B]
      labels = jnp.where(drop, self.num_classes, labels)
    out = self.unet.apply({'params': params}, x_t, t, labels, train=True,
                          rngs={'dropout': rng_dropout})
    target = parameterisation.target(self.schedule, x0, t, noise, self.diffusion_config.prediction)
    loss = jnp.mean(jnp.square(out - target))
    return loss, {'loss': loss}

  def eps_fn(self, params: Any, labels: jax.Array | None = None,
             sharding: jax.sharding.Sharding | None = None, guidance: float = 1.0):
    """The noise predictor (x_t [B,H,W,C], t [B]) -> eps [B,H,W,C] at fixed params.

    The network's output is converted to eps whatever `diffusion.prediction`.
    With `guidance` != 1 (a conditional model trained with label dropout), eps
    is the classifier-free guided one for `labels` [B], from one network call
    on 2B images per evaluation (`guidance.guided_eps_fn`). With `sharding`,
    x_t is constrained to it at every step, so a sampler loop runs
    batch-parallel over the mesh instead of replicated.
    """
    prediction = self.diffusion_config.prediction

    def eps_y(x, t, y):
      if sharding is not None:
        x = jax.lax.with_sharding_constraint(x, sharding)
      out = self.unet.apply({'params': params}, x, t, y)
      return parameterisation.to_eps(self.schedule, x, t, out, prediction)

    if guidance == 1.0:
      return lambda x, t: eps_y(x, t, labels)
    self._check_guidance(guidance)
    if labels is None:
      raise JaxgenError('classifier-free guidance needs the labels to guide towards; pass labels.')
    return guidance_lib.guided_eps_fn(eps_y, labels, self.num_classes, guidance)

  def _check_guidance(self, guidance: float) -> None:
    if guidance == 1.0:
      return
    if not self.num_classes:
      raise JaxgenError(f'--guidance {guidance} needs a conditional model (model.num_classes > 0); '
                        'drop it or use 1.')
    if not self.diffusion_config.label_dropout:
      raise JaxgenError(f'--guidance {guidance} needs a model trained with diffusion.label_dropout > 0 '
                        '(it has no unconditional prediction); drop it or use 1.')
    if not guidance >= 0:
      raise JaxgenError(f'--guidance must be a number >= 0, got {guidance}.')

  def sample_options(self, **overrides: Any) -> dict[str, Any]:
    """Sampling options: the config's defaults with non-None `overrides` applied."""
    opts = dataclasses.asdict(self.sample_config)
    for key, value in overrides.items():
      if key not in opts:
        raise JaxgenError(f'unknown diffusion sampling option {key!r}; known: {", ".join(opts)}.')
      if value is not None:
        opts[key] = value
    if opts['sampler'] not in samplers.SAMPLER_NAMES:
      raise JaxgenError(f"unknown sampler {opts['sampler']!r}; use {', '.join(samplers.SAMPLER_NAMES)}.")
    if not 0 <= opts['steps'] <= self.schedule.num_timesteps:
      raise JaxgenError(f"--steps must be between 1 and {self.schedule.num_timesteps}, got {opts['steps']}.")
    if opts['label'] >= 0 and not self.num_classes:
      raise JaxgenError('--label needs a conditional model (model.num_classes > 0); drop it.')
    if opts['label'] >= max(self.num_classes, 1) or opts['label'] < -1:
      raise JaxgenError(f"--label must be -1 or a class below {self.num_classes}, got {opts['label']}.")
    self._check_guidance(opts['guidance'])
    return opts

  def sample(self, params: Any, rng: jax.Array, num: int, *, labels: jax.Array | None = None,
             sharding: jax.sharding.Sharding | None = None, **options: Any) -> jax.Array:
    """Draws `num` images [num, H, W, C] in [-1, 1]; jit with `num` and options static.

    Conditional models draw class `label`, or cycle through the classes when
    it is -1 (or take `labels` [num] when given), guided with scale `guidance`.
    """
    opts = self.sample_options(**options)
    if self.num_classes and labels is None:
      labels = (jnp.full((num,), opts['label'], jnp.int32) if opts['label'] >= 0
                else jnp.arange(num, dtype=jnp.int32) % self.num_classes)
    eps_fn = self.eps_fn(params, labels, sharding, guidance=opts['guidance'])
    steps = None if opts['sampler'] == 'ddpm' else opts['steps'] or None  # ddpm: all T steps
    return samplers.sample(eps_fn, self.schedule, rng, (num, *self.image_shape),
                           sampler=opts['sampler'], steps=steps, eta=opts['eta'],
                           variance=opts['variance'], clip_x0=opts['clip_x0'])

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
    """Network evaluations per image: T for ddpm, K = steps for ddim and dpmpp2m, 2K - 1 for heun.

    A guided evaluation counts once, although it runs the network on two images.
    """
    opts = self.sample_options(**options)
    if opts['sampler'] == 'ddpm':
      return self.schedule.num_timesteps
    return samplers.evaluations(opts['sampler'], opts['steps'] or self.schedule.num_timesteps)


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> DiffusionModel:
  """The diffusion model of `config` for images of `image_shape` (H, W, C)."""
  unet_cfg = config_lib.section(config, 'model', UNetConfig)
  diff_cfg = config_lib.section(config, 'diffusion', DiffusionConfig)
  sample_cfg = config_lib.section(config, 'sample', SampleConfig)
  parameterisation.check_prediction(diff_cfg.prediction)
  if not 0.0 <= diff_cfg.label_dropout < 1.0:
    raise JaxgenError(f'diffusion.label_dropout must be in [0, 1), got {diff_cfg.label_dropout}.')
  if diff_cfg.label_dropout and not unet_cfg.num_classes:
    raise JaxgenError('diffusion.label_dropout needs a conditional model (model.num_classes > 0); '
                      'set it to 0.')
  kwargs = {}
  if diff_cfg.schedule == 'linear':
    kwargs = dict(beta_start=diff_cfg.beta_start, beta_end=diff_cfg.beta_end)
  schedule = schedules.make_schedule(diff_cfg.schedule, diff_cfg.num_timesteps, **kwargs)
  model = DiffusionModel(UNet(unet_cfg), schedule, sample_cfg, image_shape, diff_cfg)
  model.sample_options()  # the config's sampling defaults, checked before any training
  return model
