"""The autoregressive family behind the family contract: PixelCNN, gated PixelCNN,
PixelCNN++ and an ImageGPT-style transformer, with exact likelihoods.

Config section `model` (`ARConfig`):
- `network`: 'pixelcnn' (masked convolutions), 'gated' (gated PixelCNN),
  'pixelcnnpp' (PixelCNN++), 'transformer' (ImageGPT-style);
- `pixels`, what is modelled:
  'binary': binarized grayscale images, dynamically binarized each batch
    (Bernoulli(pixel)), one Bernoulli per pixel;
  'categorical': 8-bit sub-pixels, a 256-way softmax each, channels R, G, B
    in order within a pixel;
  'logistic_mixture' (PixelCNN++ only): 8-bit pixels, a discretized logistic
    mixture per pixel with the channels coupled linearly;
  'palette' (transformer only): one token per pixel, its nearest colour in a
    palette: `palette_levels` gray levels for grayscale images, or the k-means
    colours in `palette_file` (written by `jaxgen palette`) for RGB;
  'tokens' (transformer only): the code indices of the VQ-VAE run in
    `tokenizer`, through that family's public `encode`/`decode`.

Likelihoods are exact: `nll` is -log p(x) in nats per image of what is
modelled (binarized images, 8-bit images, palette-quantised images), and the
evaluation layer turns it into bits/dim over the image's H W C dimensions.
For 'tokens' there is no image likelihood (the tokenizer is not invertible).

Shapes: B batch, H W C image, K values per sub-pixel, T sequence, V vocabulary.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import config as config_lib
from jaxgen.autoregressive import palette as palette_lib
from jaxgen.autoregressive import samplers
from jaxgen.autoregressive.pixelcnn import GatedPixelCNN, PixelCNN
from jaxgen.autoregressive.pixelcnnpp import PixelCNNPP
from jaxgen.autoregressive.transformer import CausalTransformer
from jaxgen.errors import JaxgenError
from jaxgen.nn import distributions
from jaxgen.nn.flops import hlo_flops

CONFIG_SECTIONS = ('model', 'sample')
NETWORKS = ('pixelcnn', 'gated', 'pixelcnnpp', 'transformer')
PIXELS = {'pixelcnn': ('binary', 'categorical'), 'gated': ('binary', 'categorical'),
          'pixelcnnpp': ('logistic_mixture',),
          'transformer': ('binary', 'categorical', 'palette', 'tokens')}
SAMPLERS = ('cached', 'naive')


@dataclasses.dataclass(frozen=True)
class ARConfig:
  """The `config.model` section."""
  network: str = 'gated'
  pixels: str = 'binary'
  features: int = 64  # pixelcnn/gated: F; pixelcnnpp: its ch; transformer: its width
  num_layers: int = 15  # pixelcnn: mask-B layers after the first; gated: gated layers; transformer: blocks
  kernel: int = 7  # pixelcnn/gated: the first layer's kernel
  kernel_rest: int = 3  # pixelcnn/gated: the later layers' kernel
  head: int = 256  # pixelcnn/gated: width of the 1 x 1 output head
  num_resnets: int = 5  # pixelcnnpp: gated resnets per resolution
  num_mixtures: int = 10  # pixelcnnpp: logistic components
  num_heads: int = 4  # transformer
  dropout: float = 0.0  # pixelcnnpp, transformer
  palette_levels: int = 16  # pixels='palette', grayscale: evenly spaced gray levels
  palette_file: str = ''  # pixels='palette', RGB: a [V, C] .npy of colours (`jaxgen palette`)
  tokenizer: str = ''  # pixels='tokens': the workdir of a trained VQ-VAE run
  num_classes: int = 0  # > 0: class-conditional (labels from the dataset)
  dtype: str = 'float32'


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The `config.sample` section: sampling defaults (CLI flags override them).

  sampler: 'cached' (each step computes only what the new position needs) or
    'naive' (the whole network at every position); both draw the same images.
  temperature: logits are divided by it (1: the model's distribution; not
    applied to PixelCNN++'s mixture).
  label: class of conditional samples; -1 cycles through the classes.
  """
  sampler: str = 'cached'
  temperature: float = 1.0
  label: int = -1


@dataclasses.dataclass(frozen=True)
class ARModel:
  """An autoregressive model over images float [-1, 1], [B, H, W, C]."""
  config: ARConfig
  sample_config: SampleConfig
  image_shape: tuple[int, int, int]
  palette: Any = dataclasses.field(default=None, compare=False, hash=False)  # [V, C] float32
  tokenizer: Any = dataclasses.field(default=None, compare=False, hash=False)  # a loaded VQ-VAE Run

  # ------------------------------------------------------------------ networks

  @property
  def conditional(self) -> bool:
    return self.config.num_classes > 0

  @property
  def _values(self) -> int:
    """K: values per sub-pixel of the conv networks (1: a Bernoulli logit)."""
    return 1 if self.config.pixels == 'binary' else 256

  @property
  def seq_shape(self) -> tuple[int, int]:
    """Transformer: (T, V), the sequence length and vocabulary."""
    h, w, c = self.image_shape
    pixels = self.config.pixels
    if pixels == 'binary':
      return h * w, 2
    if pixels == 'categorical':
      return h * w * c, 256
    if pixels == 'palette':
      return h * w, int(self.palette.shape[0])
    grid = self.tokenizer.model.latent_shape[:-1]
    return math.prod(grid), self.tokenizer.model.config.num_codes

  def network(self):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    c = self.image_shape[-1]
    if cfg.network == 'pixelcnn':
      return PixelCNN(c, self._values, cfg.features, cfg.num_layers, cfg.kernel, cfg.kernel_rest,
                      cfg.head, cfg.num_classes, dtype)
    if cfg.network == 'gated':
      return GatedPixelCNN(c, self._values, cfg.features, cfg.num_layers, cfg.kernel, cfg.kernel_rest,
                           cfg.head, cfg.num_classes, dtype)
    if cfg.network == 'pixelcnnpp':
      return PixelCNNPP(cfg.features, cfg.num_resnets, cfg.num_mixtures, cfg.dropout, cfg.num_classes,
                        dtype)
    length, vocab = self.seq_shape
    return CausalTransformer(vocab, length, cfg.num_layers, cfg.num_heads, cfg.features,
                             dropout=cfg.dropout, num_classes=cfg.num_classes, dtype=dtype)

  def _label(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch['label'] if self.conditional else None

  # ------------------------------------------------------------------ data <-> what is modelled

  def _targets(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    """What the likelihood scores: int32 values [B, H, W, C] (binary, categorical), the 8-bit
    image (logistic_mixture) or tokens [B, T] (transformer)."""
    pixels, b = self.config.pixels, images.shape[0]
    if pixels == 'palette':
      return palette_lib.to_tokens(images, self.palette)
    if pixels == 'tokens':
      return self.tokenizer.model.encode(self.tokenizer.params, images).reshape(b, -1)
    if pixels == 'logistic_mixture':
      return images
    if pixels == 'binary':
      values = jax.random.bernoulli(rng, (images + 1.0) / 2.0).astype(jnp.int32)
    else:
      values = jnp.round((images + 1.0) * 127.5).astype(jnp.int32)
    if self.config.network == 'transformer':
      return values.reshape(b, -1)  # raster order, channels innermost
    return values

  def _to_input(self, values: jax.Array) -> jax.Array:
    """Drawn values int32 -> the conv networks' input scale [-1, 1]."""
    if self.config.pixels == 'binary':
      return 2.0 * values.astype(jnp.float32) - 1.0
    return values.astype(jnp.float32) / 127.5 - 1.0

  def _to_image(self, values: jax.Array) -> jax.Array:
    """Transformer tokens [B, T] or conv values [B, H, W, C] -> images [B, H, W, C] in [-1, 1]."""
    pixels, b = self.config.pixels, values.shape[0]
    if pixels == 'palette':
      return palette_lib.from_tokens(values, self.palette, self.image_shape)
    if pixels == 'tokens':
      grid = self.tokenizer.model.latent_shape[:-1]
      return self.tokenizer.model.decode(self.tokenizer.params, values.reshape(b, *grid))
    return self._to_input(values.reshape(b, *self.image_shape))

  # ------------------------------------------------------------------ likelihood and training

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """The network's parameters."""
    label = self._label(batch)
    if self.config.network == 'transformer':
      tokens = jnp.zeros((batch['image'].shape[0], self.seq_shape[0]), jnp.int32)
      return self.network().init(rng, tokens, label)['params']
    return self.network().init(rng, batch['image'], label)['params']

  def log_prob(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array,
               train: bool = False) -> jax.Array:
    """log p(x) in nats per image [B] (binary images drawn with `rng`; dropout with it when training)."""
    rng_bin, rng_drop = jax.random.split(rng)
    x = self._targets(batch['image'], rng_bin)
    label, net = self._label(batch), self.network()
    cfg = self.config
    if cfg.network == 'transformer':
      logits = net.apply({'params': params}, x, label, train=train, rngs={'dropout': rng_drop})
      lp = jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], axis=-1)[..., 0]  # [B, T]
    elif cfg.network == 'pixelcnnpp':
      out = net.apply({'params': params}, x, label, train=train, rngs={'dropout': rng_drop})
      lp = distributions.discretized_logistic_mixture_log_prob(x, out, cfg.num_mixtures)  # [B, H, W]
    else:
      logits = net.apply({'params': params}, self._to_input(x), label)  # [B, H, W, C, K]
      if cfg.pixels == 'binary':
        lp = distributions.bernoulli_log_prob(x.astype(jnp.float32), logits[..., 0])
      else:
        lp = jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], axis=-1)[..., 0]
    return lp.reshape(lp.shape[0], -1).sum(-1)

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """Mean NLL in nats per image; metrics `nll` (nats) and `bpd` (bits per image dimension)."""
    nll = -self.log_prob(params, batch, rng, train=True)
    loss = nll.mean()
    return loss, {'loss': loss, 'nll': loss, 'bpd': loss / (math.prod(self.image_shape) * math.log(2))}

  def nll(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
          sharding: Any = None) -> jax.Array:
    """Exact -log p(x) in nats per image [B]; binarized models score the images dynamically
    binarized with `rng`."""
    if self.config.pixels == 'tokens':
      raise JaxgenError('a model of VQ-VAE tokens has no image likelihood; drop bpd from --metrics.')
    return -self.log_prob(params, batch, rng)

  # ------------------------------------------------------------------ sampling

  def sample_options(self, **overrides: Any) -> dict[str, Any]:
    """Sampling options (sampler, temperature, label): the config's with non-None overrides applied."""
    opts = config_lib.sample_options(self.sample_config, overrides, 'autoregressive')
    if opts['sampler'] not in SAMPLERS:
      raise JaxgenError(f"--sampler must be cached or naive for this family, got {opts['sampler']!r}.")
    if opts['sampler'] == 'cached' and self.config.network == 'pixelcnnpp':
      raise JaxgenError('PixelCNN++ has only the naive sampler (its down- and up-sampling streams are '
                        'not cached here); pass --sampler naive.')
    if not opts['temperature'] > 0:
      raise JaxgenError(f"--temperature must be positive, got {opts['temperature']}.")
    if opts['label'] >= 0 and not self.conditional:
      raise JaxgenError('--label needs a class-conditional model (model.num_classes > 0); drop it.')
    if opts['label'] >= max(self.config.num_classes, 1):
      raise JaxgenError(f"--label must be below {self.config.num_classes}, got {opts['label']}.")
    return opts

  def requested_labels(self, num: int, **options: Any) -> np.ndarray | None:
    """The classes `sample` draws `num` images of, int32 [num]; None for an unconditional model."""
    if not self.conditional:
      return None
    return config_lib.requested_labels(self.sample_options(**options)['label'], num,
                                       self.config.num_classes)

  def sample(self, params: Any, rng: jax.Array, num: int, *, labels: jax.Array | None = None,
             sharding: Any = None, **options: Any) -> jax.Array:
    """`num` images [num, H, W, C] in [-1, 1], one compiled `lax.scan` over positions.

    `sampler` 'cached' or 'naive' gives the same images for the same key
    (samplers.py). Conditional models draw class `label`, or cycle through the
    classes when it is -1 (or take `labels` [num]).
    """
    opts = self.sample_options(**options)
    if self.conditional and labels is None:
      labels = jnp.asarray(self.requested_labels(num, **options))
    label = labels if self.conditional else None
    net, variables = self.network(), {'params': params}
    cached, temperature = opts['sampler'] == 'cached', opts['temperature']
    h, w, c = self.image_shape
    constrain = (lambda a: jax.lax.with_sharding_constraint(a, sharding)) if sharding is not None \
        else (lambda a: a)
    if self.config.network == 'transformer':
      length, _ = self.seq_shape
      if cached:
        cache = jax.tree.map(constrain, net.init_cache(num))
        tokens = samplers.sequence_cached(
            lambda prev, t, cache: net.apply(variables, prev, t, cache, label, method='decode'),
            cache, rng, num, length, temperature)
      else:
        tokens = samplers.sequence_naive(lambda tokens: net.apply(variables, tokens, label),
                                         rng, num, length, temperature)
      return self._to_image(tokens)
    if self.config.network == 'pixelcnnpp':
      draw = lambda key, out: distributions.sample_discretized_logistic_mixture(
          key, out, c, self.config.num_mixtures)
      return samplers.mixture_naive(lambda image: net.apply(variables, image, label),
                                    draw, rng, (num, h, w, c))
    if cached:
      cache = jax.tree.map(constrain, net.init_cache(num, h, w))
      values = samplers.conv_cached(
          lambda method, *args: net.apply(variables, *args, label, method=method),
          cache, net.pad, self._to_input, rng, (num, h, w, c), temperature)
    else:
      values = samplers.conv_naive(lambda x: net.apply(variables, x, label), self._to_input,
                                   rng, (num, h, w, c), temperature)
    return self._to_image(values)

  def evaluations_per_sample(self, **options: Any) -> int:
    """Network evaluations per image with the naive sampler: one per position."""
    h, w, c = self.image_shape
    if self.config.network == 'transformer':
      return self.seq_shape[0]
    return h * w if self.config.network == 'pixelcnnpp' else h * w * c

  def forward_flops(self) -> float | None:
    """FLOPs of one whole-image (whole-sequence) network evaluation, by XLA's cost analysis."""
    batch = {'image': jnp.zeros((1, *self.image_shape)), 'label': jnp.zeros((1,), jnp.int32)}
    params = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), batch))
    return hlo_flops(lambda p, b: self.log_prob(p, b, jax.random.PRNGKey(0)), params, batch)


def _load_palette(cfg: ARConfig, image_shape: tuple[int, int, int]) -> np.ndarray | None:
  if cfg.pixels != 'palette':
    return None
  c = image_shape[-1]
  if cfg.palette_file:
    try:
      palette = np.load(cfg.palette_file).astype(np.float32)
    except OSError:
      raise JaxgenError(f'model.palette_file {cfg.palette_file!r} cannot be read; write it with '
                        f'`jaxgen palette --dataset NAME --out {cfg.palette_file}`.') from None
    if palette.ndim != 2 or palette.shape[1] != c:
      raise JaxgenError(f'model.palette_file holds colours of shape {palette.shape}; '
                        f'this dataset needs [V, {c}].')
    return palette
  if c != 1:
    raise JaxgenError('an RGB palette is k-means colours: run `jaxgen palette` and set model.palette_file.')
  if cfg.palette_levels < 2:
    raise JaxgenError(f'model.palette_levels must be at least 2, got {cfg.palette_levels}.')
  return np.asarray(palette_lib.gray_levels(cfg.palette_levels))


def _load_tokenizer(cfg: ARConfig):
  if cfg.pixels != 'tokens':
    return None
  if not cfg.tokenizer:
    raise JaxgenError("model.pixels='tokens' needs model.tokenizer, the workdir of a trained VQ-VAE run.")
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top (a run loads families)
  run = load_run(cfg.tokenizer)
  if run.config.family != 'vae' or run.model.config.kind != 'vq':
    raise JaxgenError(f'model.tokenizer {cfg.tokenizer!r} is not a VQ-VAE run (family vae, model.kind vq).')
  return run


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> ARModel:
  """The autoregressive model of `config` for images of `image_shape` (H, W, C); JaxgenError for
  bad choices."""
  cfg = config_lib.section(config, 'model', ARConfig)
  sample_cfg = config_lib.section(config, 'sample', SampleConfig)
  if cfg.network not in NETWORKS:
    raise JaxgenError(f'model.network={cfg.network!r} must be one of {", ".join(NETWORKS)}.')
  if cfg.pixels not in PIXELS[cfg.network]:
    raise JaxgenError(f'model.pixels={cfg.pixels!r} does not go with model.network={cfg.network!r}; '
                      f'choose {" or ".join(PIXELS[cfg.network])}.')
  if cfg.pixels == 'binary' and image_shape[-1] != 1:
    raise JaxgenError('binary pixels are for grayscale images; use categorical.')
  if cfg.network in ('pixelcnn', 'gated') and cfg.features % (2 * image_shape[-1]):
    raise JaxgenError(f'model.features={cfg.features} must be a multiple of {2 * image_shape[-1]} '
                      f'(two gate halves, one group per channel).')
  if cfg.network == 'transformer' and cfg.features % cfg.num_heads:
    raise JaxgenError(f'model.features={cfg.features} must be a multiple of model.num_heads={cfg.num_heads}.')
  if cfg.network == 'pixelcnnpp' and (image_shape[0] % 4 or image_shape[1] % 4):
    raise JaxgenError(f'PixelCNN++ halves the image twice: height and width must be multiples of 4, '
                      f'got {image_shape[:2]}.')
  if sample_cfg.sampler not in SAMPLERS:
    raise JaxgenError(f'sample.sampler={sample_cfg.sampler!r} must be cached or naive.')
  return ARModel(cfg, sample_cfg, tuple(image_shape), _load_palette(cfg, image_shape),
                 _load_tokenizer(cfg))
