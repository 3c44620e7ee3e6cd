"""The diffusion family: a DDPM (Ho et al. 2020) behind the family contract.

Config sections: `model` (UNetConfig), `diffusion` (DiffusionConfig) and
`sample` (SampleConfig, the sampling defaults that the CLI can override).

The network predicts eps, x0 or v (`diffusion.prediction`, see
`parameterisation`); the samplers and the likelihood bound see it through
`eps_fn`, its noise prediction, whatever the type. A conditional model trained
with `diffusion.label_dropout` > 0 also learns the null class (label
num_classes) and can sample with classifier-free guidance (`sample.guidance`).
Any model holding a noise-conditional classifier (the `classifier` field, from
`jaxgen train-classifier`) can add classifier guidance towards `sample.label`
(`sample.classifier_scale`, Dhariwal & Nichol 2021; see `classifier`).

Latent diffusion (Rombach et al. 2022): with `diffusion.autoencoder` (the
workdir of a trained KL autoencoder of the vae family, spatial latents) the
UNet runs on its latents [B, h, w, Z], multiplied by `diffusion.latent_scale`
(pick about 1 / std of the latents, see `measure_latent_scale`); `loss`
encodes each batch (the posterior mean) and `sample` decodes, so the model
still takes and returns images of `image_shape` in [-1, 1]. Latents have no
[-1, 1] range, so `clip_x0` is a no-op there. A text model (`model.conditioning
='text'`, `model.context_dim` > 0) learns from the labels through prompt
templates (`prompts`) and samples for `sample.prompt`; label dropout then
trains the empty prompt, and guidance contrasts the prompt with it.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import config as config_lib
from jaxgen.diffusion import guidance as guidance_lib, likelihood, parameterisation, samplers, schedules
from jaxgen.diffusion import editing
from jaxgen.diffusion import prompts as prompts_lib
from jaxgen.diffusion.unet import CONDITIONINGS, UNet, UNetConfig
from jaxgen.errors import JaxgenError
from jaxgen.nn.blocks import cast_matmul_params
from jaxgen.nn.flops import hlo_flops
from jaxgen.nn.text import encode_text

# The config sections this family reads (besides the trainer's).
# `classifier` (optional): the noise-conditional classifier of `jaxgen train-classifier`
# (classifier.ClassifierConfig), read only by that command.
CONFIG_SECTIONS = ('model', 'diffusion', 'sample', 'classifier')


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
  # Latent diffusion: the workdir of a trained KL-autoencoder run (vae family, model.spatial=True);
  # '' diffuses the pixels.
  autoencoder: str = ''
  # Latents are multiplied by it before diffusion and divided before decoding: about 1 / std of
  # the autoencoder's latents, so that they have unit variance like the noise
  # (`measure_latent_scale`; Rombach et al. use 0.18215 for Stable Diffusion's autoencoder).
  latent_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The `config.sample` section: sampling defaults (CLI flags override them)."""
  sampler: str = 'ddpm'  # 'ddpm' | 'ddim' | 'dpmpp2m' | 'dpmpp2m_sde' | 'heun'
  steps: int = 0  # ddim/dpmpp2m(_sde)/heun timesteps; 0 means every timestep
  eta: float = 0.0  # DDIM noise (0: deterministic)
  variance: str = 'fixedlarge'  # DDPM: 'fixedlarge' (beta_t) | 'fixedsmall' (posterior)
  clip_x0: bool = True
  label: int = -1  # conditional models: class of the samples; -1 cycles through the classes
  guidance: float = 1.0  # classifier-free guidance scale w (1: plain conditional; 0: unconditional)
  # Text models: the prompt of every sample; '' cycles 'a handwritten {digit}' through the classes.
  prompt: str = ''
  # Classifier guidance (Dhariwal & Nichol 2021) towards `label` with the run's noise-conditional
  # classifier (`jaxgen train-classifier`), unconditional models included; 0: none.
  classifier_scale: float = 0.0


def dropout_key(rng: jax.Array) -> jax.Array:
  """A key for dropout, derived from `rng`, on the 'rbg' (Philox) generator.

  The UNet's dropout layers draw only a 64-bit seed each from it and hash
  element positions for their masks (`jaxgen.nn.dropout`); a layer that draws
  its mask from the key itself gets XLA's RngBitGenerator bits, faster on a GPU
  than threefry's (2.8 -> 1.0 ms of a 57 ms DDPM CIFAR-10 train step at batch
  512 on an H200; benchmarks/results/h200_speed.md). Masks stay a pure function
  of `rng` and the program.
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
  # Latent diffusion: the loaded KL-autoencoder Run (jaxgen.run.Run) of diffusion.autoencoder.
  autoencoder: Any = dataclasses.field(default=None, compare=False, hash=False)
  # Classifier guidance: a loaded noise-conditional classifier (classifier.TrainedClassifier).
  classifier: Any = dataclasses.field(default=None, compare=False, hash=False)

  @property
  def num_classes(self) -> int:
    return self.unet.config.num_classes

  def _labels(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch.get('label') if self.num_classes else None

  @property
  def text_conditioned(self) -> bool:
    """Whether the UNet takes prompt tokens [B, L] (model.conditioning='text') instead of labels."""
    cfg = self.unet.config
    return bool(getattr(cfg, 'context_dim', 0)) and getattr(cfg, 'conditioning', 'class') == 'text'

  @property
  def diffusion_shape(self) -> tuple[int, ...]:
    """The shape of one x that the diffusion runs on: the latent (h, w, Z), or the image."""
    if self.autoencoder is None:
      return self.image_shape
    return tuple(self.autoencoder.model.latent_shape)

  def encode(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] in [-1, 1] -> what the diffusion runs on: scaled latents [B, h, w, Z]
    (the autoencoder's posterior mean times latent_scale), or the images without an autoencoder."""
    if self.autoencoder is None:
      return images
    z = self.autoencoder.model.encode(self.autoencoder.params, images)
    return z * self.diffusion_config.latent_scale

  def decode(self, x: jax.Array) -> jax.Array:
    """The inverse of `encode`: x [B, *diffusion_shape] -> images [B, H, W, C] in [-1, 1]."""
    if self.autoencoder is None:
      return x
    z = x / self.diffusion_config.latent_scale
    return self.autoencoder.model.decode(self.autoencoder.params, z)

  def prompt_tokens(self, labels: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Prompt tokens int32 [B, text_max_len] for labels int [B]: a random template per example
    (picked with `rng`), or 'a handwritten {digit}' without `rng`; the null label num_classes
    becomes the empty prompt (all padding)."""
    max_len, k = self.unet.config.text_max_len, self.num_classes
    safe = jnp.minimum(labels, k - 1)
    tokens = (prompts_lib.default_prompts(safe, max_len, k) if rng is None
              else prompts_lib.random_prompts(safe, rng, max_len, k))  # [B, L]
    return jnp.where((labels == k)[:, None], 0, tokens)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """Parameters for a batch like `batch` (only its shapes matter)."""
    b = batch['image'].shape[0]
    x = jnp.zeros((b, *self.diffusion_shape), jnp.float32)
    t = jnp.zeros((b,), jnp.int32)
    y = self._labels(batch)
    if self.text_conditioned:
      y = jnp.zeros((b, self.unet.config.text_max_len), jnp.int32)
    return self.unet.init({'params': rng}, x, t, y)['params']

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """L_simple: MSE between the network's output and its target at a uniform random t.

    The target is the noise, x0 or v (`diffusion.prediction`). With label
    dropout, each label becomes the null class num_classes with probability
    `diffusion.label_dropout` (key: fold_in(rng, 3)). A text model then trains on
    the prompt of a random template per label (key: fold_in(rng, 4)), the null
    class as the empty prompt. A latent model diffuses the encoded batch.
    """
    x0 = self.encode(batch['image'])  # [B, H, W, C] (or the latents [B, h, w, Z])
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
    if labels is not None and self.text_conditioned:
      labels = self.prompt_tokens(labels, jax.random.fold_in(rng, 4))  # [B, L]
    out = self.unet.apply({'params': params}, x_t, t, labels, train=True,
                          rngs={'dropout': rng_dropout})
    target = parameterisation.target(self.schedule, x0, t, noise, self.diffusion_config.prediction)
    loss = jnp.mean(jnp.square(out - target))
    return loss, {'loss': loss}

  def eps_fn(self, params: Any, labels: jax.Array | None = None,
             sharding: jax.sharding.Sharding | None = None, guidance: float = 1.0,
             classifier_scale: float = 0.0, classifier_labels: jax.Array | None = None):
    """The noise predictor (x_t [B,H,W,C], t [B]) -> eps [B,H,W,C] at fixed params.

    The network's output is converted to eps whatever `diffusion.prediction`.
    With `guidance` != 1 (a conditional model trained with label dropout), eps
    is the classifier-free guided one for `labels` [B] (a text model: prompt
    tokens [B, L], guided away from the empty prompt), from one network call
    on 2B images per evaluation (`guidance.guided_eps_fn`). With `sharding`,
    x_t is constrained to it at every step, so a sampler loop runs
    batch-parallel over the mesh instead of replicated. With `classifier_scale`
    s > 0 (a model holding a `classifier`), that eps is then classifier-guided
    towards `classifier_labels` int [B] (default `labels`): eps - s sqrt(1 - abar_t)
    grad_x log p(y | x_t, t) (`classifier.classifier_guided_eps_fn`).
    """
    if classifier_scale:  # on top of the (possibly classifier-free guided) eps
      eps = self.eps_fn(params, labels, sharding, guidance)
      return self._classifier_guided(eps, labels if classifier_labels is None else classifier_labels,
                                     classifier_scale)
    prediction = self.diffusion_config.prediction
    # Cast here, where a sampler builds its eps function before its loop, not at every step.
    params = cast_matmul_params(params, self.unet.config.dtype)

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
    null = 0 if self.text_conditioned else self.num_classes  # 0: an all-padding row, the empty prompt
    return guidance_lib.guided_eps_fn(eps_y, labels, null, guidance)

  def _check_classifier_scale(self, scale: float) -> None:
    if not scale >= 0:
      raise JaxgenError(f'--classifier-scale must be a number >= 0, got {scale}.')
    if scale and self.classifier is None:
      raise JaxgenError('--classifier-scale needs a noise-conditional classifier: train one with '
                        '`jaxgen train-classifier --workdir W`.')
    if scale and self.num_classes and self.classifier.num_classes != self.num_classes:
      raise JaxgenError(f'the classifier knows {self.classifier.num_classes} classes and the model '
                        f'{self.num_classes}; retrain it with `jaxgen train-classifier --workdir W`.')

  def _classifier_guided(self, eps_fn: samplers.EpsFn, labels: jax.Array | None,
                         scale: float) -> samplers.EpsFn:
    """`eps_fn` guided with scale `scale` by `self.classifier` towards the classes `labels` int [B]."""
    self._check_classifier_scale(scale)
    if labels is None or labels.ndim != 1:
      raise JaxgenError('classifier guidance needs the classes to guide towards, int [B]; pass '
                        'classifier_labels.')
    # Imported here: its training and loading parts (Orbax, optax) stay out of building a model.
    from jaxgen.diffusion import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
    return classifier_lib.classifier_guided_eps_fn(eps_fn, self.classifier.log_probs, labels, scale,
                                                   self.schedule)

  def _target_classes(self, opts: dict[str, Any]) -> int:
    """How many classes `label` may pick from: the model's, else the guiding classifier's, else 0."""
    if self.num_classes:
      return self.num_classes
    return self.classifier.num_classes if opts['classifier_scale'] and self.classifier is not None else 0

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
    self._check_classifier_scale(opts['classifier_scale'])
    classes = self._target_classes(opts)  # an unconditional model guided by a classifier: its classes
    if opts['label'] >= 0 and not classes:
      raise JaxgenError('--label needs a conditional model (model.num_classes > 0) or --classifier-scale; '
                        'drop it.')
    if opts['label'] >= max(classes, 1) or opts['label'] < -1:
      raise JaxgenError(f"--label must be -1 or a class below {classes}, got {opts['label']}.")
    if opts['prompt'] and opts['classifier_scale']:
      raise JaxgenError('--classifier-scale guides towards a class (--label), not a --prompt; '
                        'pass only one of them.')
    if opts['prompt']:
      if not self.text_conditioned:
        raise JaxgenError("--prompt needs a text-conditioned model (model.conditioning='text'); "
                          'drop it (or use --label with a class model).')
      if opts['label'] >= 0:
        raise JaxgenError('--prompt and --label both say what to draw; pass only one of them.')
      encode_text([opts['prompt']], self.unet.config.text_max_len)  # too long: names max_len
    self._check_guidance(opts['guidance'])
    return opts

  def requested_labels(self, num: int, **options: Any) -> np.ndarray | None:
    """The classes `sample` draws `num` images of, int32 [num]; None when it draws no class
    (an unconditional model without classifier guidance, or a `prompt` that names no one digit).
    A text model's `prompt` asks for the digit it names (`prompts.label_of_prompt`)."""
    opts = self.sample_options(**options)
    classes = self._target_classes(opts)
    if opts['prompt']:
      label = prompts_lib.label_of_prompt(opts['prompt'])
      return None if label is None else np.full((num,), label, np.int32)
    if not classes:
      return None
    return config_lib.requested_labels(opts['label'], num, classes)

  def _conditioned_eps_fn(self, params: Any, num: int, labels: jax.Array | None,
                          opts: dict[str, Any],
                          sharding: jax.sharding.Sharding | None = None) -> samplers.EpsFn:
    """The eps function for `num` images under checked options `opts`: conditioned on `labels`
    [num] (default: class `label` or cycling), a text model on `prompt` or those labels' prompts,
    with classifier-free guidance `guidance` and classifier guidance `classifier_scale`."""
    if self.num_classes and labels is None:
      labels = jnp.asarray(config_lib.requested_labels(opts['label'], num, self.num_classes))
    classifier_labels = labels  # [num]; an unconditional model has them only for its classifier
    if opts['classifier_scale'] and classifier_labels is None:
      classifier_labels = jnp.asarray(
          config_lib.requested_labels(opts['label'], num, self._target_classes(opts)))
    if self.text_conditioned and opts['prompt']:
      labels = jnp.asarray(encode_text([opts['prompt']] * num, self.unet.config.text_max_len)[0])
    elif self.text_conditioned and labels is not None and labels.ndim == 1:
      labels = self.prompt_tokens(labels)  # [num, L]
    return self.eps_fn(params, labels, sharding, guidance=opts['guidance'],
                       classifier_scale=opts['classifier_scale'], classifier_labels=classifier_labels)

  def sample(self, params: Any, rng: jax.Array, num: int, *, labels: jax.Array | None = None,
             sharding: jax.sharding.Sharding | None = None, **options: Any) -> jax.Array:
    """Draws `num` images [num, H, W, C] in [-1, 1]; jit with `num` and options static.

    Conditional models draw class `label`, or cycle through the classes when
    it is -1 (or take `labels` [num] when given), guided with scale `guidance`.
    Text models draw for `prompt`, or without one for the prompts 'a handwritten
    {digit}' of those labels (or take prompt tokens `labels` [num, L]). A latent
    model samples latents (clip_x0 does not apply to them) and decodes them.
    With `classifier_scale` > 0 the classifier guides towards those classes
    (`label` or cycling), for an unconditional model too.
    """
    opts = self.sample_options(**options)
    eps_fn = self._conditioned_eps_fn(params, num, labels, opts, sharding)
    steps = None if opts['sampler'] == 'ddpm' else opts['steps'] or None  # ddpm: all T steps
    x = samplers.sample(eps_fn, self.schedule, rng, (num, *self.diffusion_shape),
                        sampler=opts['sampler'], steps=steps, eta=opts['eta'],
                        variance=opts['variance'],
                        clip_x0=opts['clip_x0'] and self.autoencoder is None)
    return self.decode(x)

  # Editing (jaxgen.diffusion.editing) runs DDIM on the grid of `steps` timesteps (0: all T)
  # whatever `sampler`; eta, clip_x0, label, prompt and guidance apply as in `sample`. A latent
  # model edits the latents of its images (clip_x0 does not apply) and decodes the result.

  def _edit_setup(self, params: Any, num: int, labels: jax.Array | None,
                  options: dict[str, Any]) -> tuple[Any, dict[str, Any], int, bool]:
    """(eps_fn for `num` images, options, DDIM steps, clip_x0); labels as in `sample`."""
    opts = self.sample_options(**options)
    eps_fn = self._conditioned_eps_fn(params, num, labels, opts)
    steps = opts['steps'] or self.schedule.num_timesteps
    return eps_fn, opts, steps, opts['clip_x0'] and self.autoencoder is None

  def _check_edit_images(self, images: jax.Array) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
      raise JaxgenError(f'images must have shape [B, {", ".join(map(str, self.image_shape))}] for '
                        f'this model, got {tuple(images.shape)}.')

  def inpaint(self, params: Any, rng: jax.Array, images: jax.Array, masks: jax.Array, *,
              labels: jax.Array | None = None, **options: Any) -> jax.Array:
    """Repaints images [B, H, W, C] in [-1, 1] where masks [B, H, W, 1 or C] is 0 (1: keep).

    `editing.inpaint`; returns [B, H, W, C] with the kept pixels exactly those
    of `images`. A latent model keeps a latent cell when all its pixels are
    kept, and pastes the kept pixels back after decoding.
    """
    self._check_edit_images(images)
    masks = editing.check_masks(masks, images)  # [B, H, W, 1 or C]
    eps_fn, opts, steps, clip_x0 = self._edit_setup(params, images.shape[0], labels, options)
    latent_masks = masks
    if self.autoencoder is not None:
      (h, w), (height, width) = self.diffusion_shape[:2], self.image_shape[:2]
      if height % h or width % w:
        raise JaxgenError(f'inpainting a latent model needs latents {h}x{w} that tile the '
                          f'{height}x{width} image; this autoencoder\'s do not.')
      cells = masks.min(axis=-1).reshape(-1, h, height // h, w, width // w)  # [B, h, H/h, w, W/w]
      latent_masks = cells.min(axis=(2, 4))[..., None]  # [B, h, w, 1]
    x = editing.inpaint(eps_fn, self.schedule, rng, self.encode(images), latent_masks,
                        num_steps=steps, eta=opts['eta'], clip_x0=clip_x0)
    if self.autoencoder is None:
      return x
    return masks * images + (1.0 - masks) * self.decode(x)

  def img2img(self, params: Any, rng: jax.Array, images: jax.Array, *, strength: float,
              labels: jax.Array | None = None, **options: Any) -> jax.Array:
    """SDEdit (`editing.img2img`) of images [B, H, W, C] in [-1, 1] at `strength` in (0, 1].

    Returns the edited images [B, H, W, C].
    """
    self._check_edit_images(images)
    eps_fn, opts, steps, clip_x0 = self._edit_setup(params, images.shape[0], labels, options)
    x = editing.img2img(eps_fn, self.schedule, rng, self.encode(images), strength=strength,
                        num_steps=steps, eta=opts['eta'], clip_x0=clip_x0)
    return self.decode(x)

  def interpolate(self, params: Any, a: jax.Array, b: jax.Array, *, num: int,
                  labels: jax.Array | None = None, **options: Any) -> jax.Array:
    """`num` images [num, H, W, C] from a to b [H, W, C] through the DDIM latents (`editing.interpolate`).

    Deterministic (eta does not apply). The whole path has one condition: a
    conditional model needs the class `labels` (an int scalar), the label
    option or, for a text model, a prompt.
    """
    if not tuple(a.shape) == tuple(b.shape) == tuple(self.image_shape):
      raise JaxgenError(f'a and b must be images of shape {tuple(self.image_shape)} for this model, '
                        f'got {tuple(a.shape)} and {tuple(b.shape)}.')
    opts = self.sample_options(**options)
    if labels is None and opts['label'] >= 0:
      labels = opts['label']
    if self.num_classes and labels is None and not (self.text_conditioned and opts['prompt']):
      raise JaxgenError('interpolating with a conditional model needs one class for the whole path; '
                        'pass --label (or a --prompt to a text model).')

    def eps_fn(x, t):  # at the batch of x: 2 for the inversion, num for the decoding
      batch_labels = None if labels is None else jnp.full((x.shape[0],), labels, jnp.int32)
      return self._edit_setup(params, x.shape[0], batch_labels, options)[0](x, t)

    steps = opts['steps'] or self.schedule.num_timesteps
    x = self.encode(jnp.stack([a, b]))  # [2, *diffusion_shape]
    path = editing.interpolate(eps_fn, self.schedule, x[0], x[1], num=num, num_steps=steps,
                               clip_x0=opts['clip_x0'] and self.autoencoder is None)
    return self.decode(path)

  def forward_flops(self) -> float | None:
    """FLOPs of one UNet evaluation on one image, by XLA's cost analysis (nothing runs).

    A latent model's UNet runs on one latent; a text model's includes its text encoder on a
    prompt of text_max_len tokens. The autoencoder's decoder (once per sample) is not counted.
    Attention is counted as XLA's kernel (cuDNN's has no CPU lowering; the same products).
    """
    unet = self.unet.clone(config=dataclasses.replace(self.unet.config, attention='xla'))
    portable = dataclasses.replace(self, unet=unet)
    x = jax.ShapeDtypeStruct((1, *self.diffusion_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = jax.eval_shape(lambda: portable.init(jax.random.PRNGKey(0),
                                                  {'image': jnp.zeros((1, *self.image_shape))}))
    if self.text_conditioned:
      y = jax.ShapeDtypeStruct((1, self.unet.config.text_max_len), jnp.int32)
      return hlo_flops(lambda p, x, t, y: unet.apply({'params': p}, x, t, y), params, x, t, y)
    return hlo_flops(lambda p, x, t: unet.apply({'params': p}, x, t), params, x, t)

  def nll(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
          sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """Upper bound on -log p(image) in nats per image [B] (8-bit data; see diffusion.likelihood).

    Uses the config's DDPM variance; T network evaluations per image.
    """
    if self.autoencoder is not None:
      raise JaxgenError('a latent diffusion model has no image likelihood (its bound would be on '
                        'the latents); drop bpd from --metrics.')
    if self.text_conditioned:
      raise JaxgenError('the likelihood of a text-conditioned model is not implemented; '
                        'drop bpd from --metrics.')
    return likelihood.nll_bound(self.eps_fn(params, self._labels(batch), sharding), self.schedule,
                                batch['image'], rng, variance=self.sample_config.variance)

  def evaluations_per_sample(self, **options: Any) -> int:
    """Network evaluations per image: T for ddpm, K = steps for ddim and dpmpp2m(_sde), 2K - 1 for heun.

    A guided evaluation counts once, although it runs the network on two images.
    """
    opts = self.sample_options(**options)
    if opts['sampler'] == 'ddpm':
      return self.schedule.num_timesteps
    return samplers.evaluations(opts['sampler'], opts['steps'] or self.schedule.num_timesteps)


def measure_latent_scale(autoencoder: Any, images: jax.Array) -> float:
  """1 / std of the latents of `images` [B, H, W, C] in [-1, 1] (a few hundred are plenty):
  the `diffusion.latent_scale` that gives the latents unit variance, like the diffusion's noise.

  `autoencoder` is a loaded KL-autoencoder run (`jaxgen.run.load_run(workdir)`).
  """
  z = jax.jit(autoencoder.model.encode)(autoencoder.params, images)
  return float(1.0 / jnp.std(z))


def _check_conditioning(cfg: UNetConfig) -> None:
  """JaxgenError for a cross-attention or text setting the UNet cannot build."""
  if cfg.conditioning not in CONDITIONINGS:
    raise JaxgenError(f"model.conditioning={cfg.conditioning!r} must be 'class' or 'text'.")
  if cfg.context_dim < 0:
    raise JaxgenError(f'model.context_dim must be >= 0 (0: no cross-attention), got {cfg.context_dim}.')
  if not cfg.context_dim:
    if cfg.conditioning == 'text':
      raise JaxgenError("model.conditioning='text' attends to the prompt: set model.context_dim > 0.")
    return
  if cfg.conditioning == 'class' and not cfg.num_classes:
    raise JaxgenError("model.context_dim > 0 with model.conditioning='class' needs model.num_classes > 0; "
                      'set context_dim=0 for an unconditional model.')
  widths = {cfg.ch * m for m in cfg.ch_mult} | {cfg.text_width or cfg.context_dim}
  bad = sorted(w for w in widths if w % cfg.num_heads)
  if bad:
    raise JaxgenError(f'model.num_heads={cfg.num_heads} must divide every attention width; '
                      f'{bad[0]} is not a multiple of it.')
  if cfg.conditioning == 'text':
    prompts_lib.prompt_table(cfg.num_classes, cfg.text_max_len)  # needs 10 classes, prompts that fit


def _load_autoencoder(cfg: DiffusionConfig, image_shape: tuple[int, int, int]):
  """The KL-autoencoder run of `diffusion.autoencoder`, or None; JaxgenError if it is not one."""
  if not cfg.autoencoder:
    return None
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top (a run loads families)
  if not os.path.isdir(cfg.autoencoder):
    raise JaxgenError(f'diffusion.autoencoder {cfg.autoencoder!r} is not a directory; train a KL '
                      'autoencoder first (experiments/kl_autoencoder_mnist.py) and pass its workdir.')
  run = load_run(cfg.autoencoder)
  model_cfg = getattr(run.model, 'config', None)
  if (run.config.family != 'vae' or model_cfg.kind != 'gaussian' or model_cfg.network != 'conv'
      or not model_cfg.spatial):
    raise JaxgenError(f'diffusion.autoencoder {cfg.autoencoder!r} is not a KL-autoencoder run (family '
                      'vae, model.kind=gaussian, model.network=conv, model.spatial=True).')
  if tuple(run.model.image_shape) != tuple(image_shape):
    raise JaxgenError(f'diffusion.autoencoder {cfg.autoencoder!r} was trained on images of shape '
                      f'{tuple(run.model.image_shape)}, this dataset has {tuple(image_shape)}.')
  return run


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> DiffusionModel:
  """The diffusion model of `config` for images of `image_shape` (H, W, C).

  Checks the config (JaxgenError naming the key to fix) and loads
  `diffusion.autoencoder` for a latent model.
  """
  unet_cfg = config_lib.section(config, 'model', UNetConfig)
  diff_cfg = config_lib.section(config, 'diffusion', DiffusionConfig)
  sample_cfg = config_lib.section(config, 'sample', SampleConfig)
  parameterisation.check_prediction(diff_cfg.prediction)
  if not 0.0 <= diff_cfg.label_dropout < 1.0:
    raise JaxgenError(f'diffusion.label_dropout must be in [0, 1), got {diff_cfg.label_dropout}.')
  if diff_cfg.label_dropout and not unet_cfg.num_classes:
    raise JaxgenError('diffusion.label_dropout needs a conditional model (model.num_classes > 0); '
                      'set it to 0.')
  _check_conditioning(unet_cfg)
  if not diff_cfg.latent_scale > 0:
    raise JaxgenError(f'diffusion.latent_scale must be > 0 (about 1 / std of the latents), '
                      f'got {diff_cfg.latent_scale}.')
  kwargs = {}
  if diff_cfg.schedule == 'linear':
    kwargs = dict(beta_start=diff_cfg.beta_start, beta_end=diff_cfg.beta_end)
  schedule = schedules.make_schedule(diff_cfg.schedule, diff_cfg.num_timesteps, **kwargs)
  autoencoder = _load_autoencoder(diff_cfg, image_shape)
  model = DiffusionModel(UNet(unet_cfg), schedule, sample_cfg, image_shape, diff_cfg,
                         autoencoder=autoencoder)
  size, factor = model.diffusion_shape[:2], 2 ** (len(unet_cfg.ch_mult) - 1)
  if any(s % factor for s in size) and not unet_cfg.pad_to_fit:
    raise JaxgenError(f'the UNet halves its input {len(unet_cfg.ch_mult) - 1} times, but '
                      f'{size[0]}x{size[1]} is not divisible by {factor}; set model.pad_to_fit=True '
                      'or use fewer model.ch_mult levels.')
  if sample_cfg.classifier_scale:  # training's sample grids have no classifier to guide with
    raise JaxgenError(f'sample.classifier_scale must be 0 in a config, got {sample_cfg.classifier_scale}: '
                      'the classifier is trained after the model; pass --classifier-scale when sampling.')
  model.sample_options()  # the config's sampling defaults, checked before any training
  if 'classifier' in config:  # misspelt keys fail now, not when the classifier is trained
    from jaxgen.diffusion import classifier as classifier_lib  # pylint: disable=g-import-not-at-top
    config_lib.section(config, 'classifier', classifier_lib.ClassifierConfig).check()
  return model
