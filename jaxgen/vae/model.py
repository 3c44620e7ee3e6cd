"""The VAE family behind the family contract: VAE, beta-VAE with KL warm-up, the
KL autoencoder and the VQ-VAE.

Config sections:
- `model` (`VAEConfig`): `kind` 'gaussian' (a Gaussian posterior: the VAE and
  beta-VAE with a latent vector, the KL autoencoder with a latent grid) or 'vq'
  (a VQ-VAE with an EMA codebook); the networks; the likelihood of the pixels:
  'bernoulli' (binarized images, dynamically binarized each batch), 'gaussian'
  or 'logistic' (discretized logistic over the 256 levels of 8-bit images),
  the latter two with a mean and a log-scale per sub-pixel from the decoder;
  optionally (`pixel_window` k > 0, Bernoulli only) a local autoregressive
  head (`networks.PixelHead`): each pixel's probability also depends on the
  pixels before it within a k x k window (the variational lossy autoencoder).
- `vae` (`ObjectiveConfig`): beta, the linear KL warm-up, VQ's commitment
  weight and codebook decay.

Shapes: B batch, H W C image, Z latent channels, h w the latent grid, K
importance samples.

`encode(params, images)` and `decode(params, latents)` are the public, pure
functions that latent diffusion and token models use (through `load_run`);
for the VQ-VAE `encode` returns code indices [B, h, w] and `decode` takes them.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import config as config_lib
from jaxgen.errors import JaxgenError
from jaxgen.nn import distributions, masked_conv
from jaxgen.nn.flops import hlo_flops
from jaxgen.nn.interpolate import slerp
from jaxgen.vae import networks, vq

CONFIG_SECTIONS = ('model', 'vae')
LIKELIHOODS = ('bernoulli', 'gaussian', 'logistic')
_MIN_LOG_SCALE = -7.0  # keeps discretized/Gaussian scales above ~1e-3 (a fraction of one 8-bit level)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The `config.model` section."""
  kind: str = 'gaussian'  # 'gaussian' (VAE, beta-VAE, KL autoencoder) | 'vq' (VQ-VAE)
  network: str = 'conv'  # 'mlp' | 'conv'
  hidden: tuple[int, ...] = (512, 256)  # mlp widths (the decoder mirrors them)
  ch: int = 32  # conv base width
  ch_mult: tuple[int, ...] = (1, 2, 2)  # conv width multipliers; the resolution halves after each but the first
  num_res_blocks: int = 1
  latent_dim: int = 32  # Z: latent vector size, or latent grid channels
  spatial: bool = False  # conv only: a latent grid [h, w, Z] instead of a vector
  likelihood: str = 'bernoulli'
  num_codes: int = 512  # VQ codebook size K
  pixel_window: int = 0  # k > 0 (odd): a local autoregressive head over k x k windows; 0: none
  pixel_features: int = 32  # the head's width
  pixel_layers: int = 1  # the head's per-pixel residual layers
  pixel_cond: int = 4  # decoder output channels per pixel that the head conditions on
  dtype: str = 'float32'


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """The `config.vae` section: loss = reconstruction NLL + beta_t * KL (+ commitment for VQ)."""
  beta: float = 1.0
  warmup_steps: int = 0  # beta_t rises linearly from 0 to beta over these steps; 0: beta throughout
  commitment: float = 0.25  # VQ: weight of |z - sg(e)|^2
  codebook_decay: float = 0.99  # VQ: EMA decay of the codebook


def beta_at(cfg: ObjectiveConfig, step: jax.Array) -> jax.Array:
  """beta_t = beta * min(1, step / warmup_steps), or beta without warm-up. float32 scalar."""
  if not cfg.warmup_steps:
    return jnp.float32(cfg.beta)
  return cfg.beta * jnp.minimum(1.0, step.astype(jnp.float32) / cfg.warmup_steps)


@dataclasses.dataclass(frozen=True)
class VAEModel:
  """A VAE or VQ-VAE over images float [-1, 1], [B, H, W, C]."""
  config: VAEConfig
  objective: ObjectiveConfig
  image_shape: tuple[int, int, int]

  # ------------------------------------------------------------------ networks

  @property
  def _lik_ch(self) -> int:
    """Likelihood parameters per pixel: a logit per channel (Bernoulli), else mean and log-scale."""
    c = self.image_shape[-1]
    return c if self.config.likelihood == 'bernoulli' else 2 * c

  @property
  def _out_ch(self) -> int:
    """Decoder output channels: the likelihood's parameters, or the pixel head's conditioning."""
    return self.config.pixel_cond if self.config.pixel_window else self._lik_ch

  def _head(self) -> networks.PixelHead:
    cfg = self.config
    return networks.PixelHead(cfg.pixel_window, cfg.pixel_features, cfg.pixel_layers,
                              self.image_shape[-1], self._lik_ch, jnp.dtype(cfg.dtype))

  @property
  def _enc_dim(self) -> int:
    z = self.config.latent_dim
    return z if self.config.kind == 'vq' else 2 * z

  def _encoder(self):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    if cfg.network == 'mlp':
      return networks.MLPEncoder(cfg.hidden, self._enc_dim, dtype)
    return networks.ConvEncoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, self._enc_dim,
                                cfg.spatial, dtype)

  def _decoder(self):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    if cfg.network == 'mlp':
      return networks.MLPDecoder(cfg.hidden, self.image_shape, self._out_ch, dtype)
    return networks.ConvDecoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, self.image_shape,
                                self._out_ch, cfg.spatial, dtype)

  @property
  def latent_shape(self) -> tuple[int, ...]:
    """Shape of one image's latent: (Z,) or (h, w, Z)."""
    cfg = self.config
    if cfg.network == 'conv' and cfg.spatial:
      return (*networks._grid_shape(self.image_shape, len(cfg.ch_mult)), cfg.latent_dim)  # pylint: disable=protected-access
    return (cfg.latent_dim,)

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
    """{'encoder', 'decoder'} parameters, plus {'codebook'} (EMA state, no gradients) for VQ and
    {'pixel_head'} with a pixel head."""
    rng_enc, rng_dec, rng_code = jax.random.split(rng, 3)
    x = batch['image']
    z = jnp.zeros((x.shape[0], *self.latent_shape), jnp.float32)
    params = {'encoder': self._encoder().init(rng_enc, x)['params'],
              'decoder': self._decoder().init(rng_dec, z)['params']}
    if self.config.pixel_window:
      cond = jnp.zeros((*x.shape[:3], self.config.pixel_cond), jnp.float32)
      params['pixel_head'] = self._head().init(jax.random.fold_in(rng_dec, 1), cond, x)['params']
    if self.config.kind == 'vq':
      params['codebook'] = vq.init_codebook(rng_code, self.config.num_codes, self.config.latent_dim)
    return params

  def _posterior(self, params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, log_var), each [B, *latent_shape]."""
    out = self._encoder().apply({'params': params['encoder']}, x)
    mean, log_var = jnp.split(out, 2, axis=-1)
    return mean, jnp.clip(log_var, -30.0, 20.0)

  def _decode_raw(self, params: Any, z: jax.Array) -> jax.Array:
    """Decoder outputs [B, H, W, out_ch]: the likelihood's parameters (or the head's conditioning)."""
    return self._decoder().apply({'params': params['decoder']}, z)

  def _pixel_params(self, params: Any, z: jax.Array, x: jax.Array) -> jax.Array:
    """The likelihood's parameters [B, H, W, lik_ch] of targets x given z; with the pixel head,
    each pixel's also given the pixels of x before it (teacher forcing)."""
    out = self._decode_raw(params, z)
    if self.config.pixel_window:
      out = self._head().apply({'params': params['pixel_head']}, out, x)
    return out

  def _draw_pixels(self, params: Any, cond: jax.Array, rng: jax.Array) -> jax.Array:
    """Pixels {0, 1} [B, H, W, C] drawn one at a time in raster order through the pixel head,
    given the decoder's features cond [B, H, W, pixel_cond]. One compiled loop of H*W steps,
    each reading only its k x k window from a padded cache; pixel n's key is fold_in(rng, n)."""
    head, hp = self._head(), {'params': params['pixel_head']}
    height, width, channels = self.image_shape
    top, left, _ = head.pad
    cache = masked_conv.pad_cache(jnp.zeros((cond.shape[0], height, width, channels)), head.pad)

    def step(cache, n):
      i, j = n // width, n % width
      logits = head.apply(hp, cond[:, i, j], cache, i, j, method='at')  # [B, C]
      bits = jax.random.bernoulli(jax.random.fold_in(rng, n), jax.nn.sigmoid(logits))
      return masked_conv.write_pixel(cache, bits.astype(cache.dtype), i, j, head.pad), None

    cache, _ = jax.lax.scan(step, cache, jnp.arange(height * width))
    return cache[:, top:top + height, left:left + width]

  def _targets(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    """What the likelihood scores: dynamically binarized {0, 1} images for Bernoulli, else the images."""
    if self.config.likelihood == 'bernoulli':
      return jax.random.bernoulli(rng, (images + 1.0) / 2.0).astype(jnp.float32)
    return images

  def _log_likelihood(self, out: jax.Array, x: jax.Array) -> jax.Array:
    """log p(x | z) per image [B] from decoder outputs `out` [B, H, W, out_ch]."""
    lik = self.config.likelihood
    if lik == 'bernoulli':
      lp = distributions.bernoulli_log_prob(x, out)
    else:
      mean, log_scale = jnp.split(out, 2, axis=-1)
      log_scale = jnp.maximum(log_scale, _MIN_LOG_SCALE)
      if lik == 'gaussian':
        lp = distributions.gaussian_log_prob(x, mean, 2.0 * log_scale)
      else:
        lp = distributions.discretized_logistic_log_prob(x, mean, log_scale)
    return lp.reshape(lp.shape[0], -1).sum(-1)

  def _mean_image(self, out: jax.Array) -> jax.Array:
    """The decoder's mean image in [-1, 1]."""
    if self.config.likelihood == 'bernoulli':
      return 2.0 * jax.nn.sigmoid(out) - 1.0
    return jnp.clip(jnp.split(out, 2, axis=-1)[0], -1.0, 1.0)

  # ------------------------------------------------------------------ training

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    """Negative ELBO with beta_t (Gaussian) or reconstruction + commitment (VQ), mean over the batch.

    Metrics (nats per image): `recon` (-log p(x|z)), `kl`, `nelbo` (recon + kl,
    the bound at beta = 1), `beta`; VQ: `commitment` (|z - sg(e)|^2 summed over
    one image's latent), `codebook_usage`, `perplexity`. For VQ, aux also carries the new codebook state (the EMA update).
    """
    rng_bin, rng_z = jax.random.split(rng)
    x = self._targets(batch['image'], rng_bin)
    if self.config.kind == 'vq':
      return self._vq_loss(params, batch['image'], x)
    mean, log_var = self._posterior(params, batch['image'])
    eps = jax.random.normal(rng_z, mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * log_var) * eps  # the reparameterisation trick
    recon = -self._log_likelihood(self._pixel_params(params, z, x), x)  # [B]
    kl = distributions.gaussian_kl_standard(mean, log_var).reshape(mean.shape[0], -1).sum(-1)  # [B]
    beta = beta_at(self.objective, batch.get('step', jnp.zeros((), jnp.int32)))
    loss = jnp.mean(recon + beta * kl)
    return loss, {'loss': loss, 'recon': recon.mean(), 'kl': kl.mean(),
                  'nelbo': (recon + kl).mean(), 'beta': beta}

  def _vq_loss(self, params: Any, images: jax.Array, x: jax.Array):
    z_e = self._encoder().apply({'params': params['encoder']}, images)  # [B, h, w, Z]
    codebook = params['codebook']
    z_q, indices, commitment = vq.quantize(jax.lax.stop_gradient(codebook['codebook']), z_e)
    recon = -self._log_likelihood(self._decode_raw(params, z_q), x)  # [B]
    # As in van den Oord et al., the commitment term is a sum over the latent like the
    # reconstruction term is over the pixels (vq.quantize gives the mean per element).
    commitment = commitment * math.prod(z_e.shape[1:])
    loss = recon.mean() + self.objective.commitment * commitment
    usage, perplexity = vq.codebook_usage(indices, self.config.num_codes)
    new_codebook = vq.ema_update(codebook, jax.lax.stop_gradient(z_e), indices,
                                 self.objective.codebook_decay)
    metrics = {'loss': loss, 'recon': recon.mean(), 'commitment': commitment,
               'codebook_usage': usage, 'perplexity': perplexity}
    return loss, (metrics, {'codebook': new_codebook})

  # ------------------------------------------------------------------ public encode / decode

  def encode(self, params: Any, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """images [B, H, W, C] in [-1, 1] -> latents [B, *latent_shape] (the posterior mean, or a
    sample with `rng`); for VQ, code indices int32 [B, h, w]."""
    if self.config.kind == 'vq':
      z_e = self._encoder().apply({'params': params['encoder']}, images)
      return vq.nearest_codes(params['codebook']['codebook'], z_e)
    mean, log_var = self._posterior(params, images)
    if rng is None:
      return mean
    return mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mean.shape, mean.dtype)

  def decode(self, params: Any, latents: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """latents [B, *latent_shape] (VQ: code indices [B, h, w]) -> mean images [B, H, W, C] in [-1, 1].

    With a pixel head there is no closed-form mean: the pixels are drawn one by one
    (binary images in {-1, 1}) with `rng` (default PRNGKey(0), so decode stays a function).
    """
    if self.config.kind == 'vq':
      latents = params['codebook']['codebook'][latents]  # [B, h, w, Z]
    out = self._decode_raw(params, latents)
    if self.config.pixel_window:
      rng = jax.random.PRNGKey(0) if rng is None else rng
      return 2.0 * self._draw_pixels(params, out, rng) - 1.0
    return self._mean_image(out)

  def reconstruct(self, params: Any, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """decode(encode(images)) with the posterior mean: [B, H, W, C] in [-1, 1]."""
    return self.decode(params, self.encode(params, images), rng)

  def interpolate(self, params: Any, a: jax.Array, b: jax.Array, num: int,
                  method: str = 'linear') -> jax.Array:
    """Decoded path between the latents of images a and b [H, W, C]: [num, H, W, C].

    `method` 'linear' or 'spherical' (slerp, the natural path under a Gaussian prior).
    With a pixel head every image on the path is drawn with the same key.
    """
    if self.config.kind == 'vq':
      raise JaxgenError('a VQ-VAE has discrete latents; interpolate a Gaussian VAE instead.')
    za, zb = self.encode(params, jnp.stack([a, b]))
    t = jnp.linspace(0.0, 1.0, num)
    path = slerp(za, zb, t) if method == 'spherical' else \
        (1 - t.reshape((-1,) + (1,) * za.ndim)) * za + t.reshape((-1,) + (1,) * za.ndim) * zb
    return self.decode(params, path)

  def manifold(self, params: Any, n: int) -> jax.Array:
    """For a 2-d latent: decoded images on an n x n grid of prior quantiles, [n*n, H, W, C]."""
    if self.latent_shape != (2,) or self.config.kind == 'vq':
      raise JaxgenError(f'the latent manifold needs a 2-d Gaussian latent; this model has '
                        f'{self.latent_shape}; set model.latent_dim=2 and model.spatial=False.')
    q = jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, n))
    zy, zx = jnp.meshgrid(q[::-1], q, indexing='ij')
    return self.decode(params, jnp.stack([zx.reshape(-1), zy.reshape(-1)], -1))

  # ------------------------------------------------------------------ sampling

  def sample_options(self, **overrides: Any) -> dict[str, Any]:
    """No sampling options: every non-None override is an error (naming it)."""
    given = sorted(k for k, v in overrides.items() if v is not None)
    if given:
      raise JaxgenError(f'the vae family has no sampling option {given[0]!r}; drop --{given[0]}.')
    return {}

  def sample(self, params: Any, rng: jax.Array, num: int, *, sharding: Any = None,
             **options: Any) -> jax.Array:
    """`num` decoder means [num, H, W, C] in [-1, 1] from the prior.

    Gaussian: z ~ N(0, I). VQ: codes drawn independently per position from the
    codebook's usage frequencies (a unigram prior; a token model gives real samples).
    """
    self.sample_options(**options)
    if self.config.kind == 'vq':
      sizes = params['codebook']['cluster_size']  # [K]
      logits = jnp.log(sizes / sizes.sum() + 1e-10)
      codes = jax.random.categorical(rng, logits, shape=(num, *self.latent_shape[:-1]))
      return self.decode(params, codes)
    z = jax.random.normal(rng, (num, *self.latent_shape))
    if sharding is not None:
      z = jax.lax.with_sharding_constraint(z, sharding)
    return self.decode(params, z, jax.random.fold_in(rng, 1))

  def evaluations_per_sample(self, **options: Any) -> int:
    return 1

  def forward_flops(self) -> float | None:
    """FLOPs of one encoder + decoder pass on one image (with a pixel head, all pixels at once,
    as in training and likelihoods), by XLA's cost analysis (nothing runs)."""
    x = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.float32)
    params = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), {'image': jnp.zeros(x.shape)}))
    if self.config.pixel_window:
      return hlo_flops(lambda p, im: self._pixel_params(p, self.encode(p, im), im), params, x)
    return hlo_flops(self.reconstruct, params, x)

  # ------------------------------------------------------------------ likelihood

  def log_weights(self, params: Any, images: jax.Array, x: jax.Array, rng: jax.Array,
                  num_samples: int) -> jax.Array:
    """log p(x, z_k) - log q(z_k | x) for K = num_samples posterior samples: [K, B]."""
    mean, log_var = self._posterior(params, images)
    flat = lambda a: a.reshape(a.shape[0], -1).sum(-1)

    def one(rng_k):
      z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng_k, mean.shape, mean.dtype)
      log_px = self._log_likelihood(self._pixel_params(params, z, x), x)
      log_pz = flat(distributions.gaussian_log_prob(z, 0.0, jnp.zeros_like(z)))
      log_qz = flat(distributions.gaussian_log_prob(z, mean, log_var))
      return log_px + log_pz - log_qz  # [B]

    return jax.lax.map(one, jax.random.split(rng, num_samples))

  def nll(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, sharding: Any = None,
          num_samples: int = 1) -> jax.Array:
    """The IWAE bound on -log p(x) in nats per image [B] with K = num_samples (K = 1: the
    negative ELBO). It tightens (never rises, in expectation) as K grows (Burda et al. 2016).

    Bernoulli models score the images dynamically binarized with `rng`.
    """
    if self.config.kind == 'vq':
      raise JaxgenError('a VQ-VAE has no likelihood of its own; drop bpd from --metrics.')
    if num_samples < 1:
      raise JaxgenError(f'--iwae-samples must be at least 1, got {num_samples}.')
    rng_bin, rng_z = jax.random.split(rng)
    x = self._targets(batch['image'], rng_bin)
    log_w = self.log_weights(params, batch['image'], x, rng_z, num_samples)  # [K, B]
    return -(jax.scipy.special.logsumexp(log_w, axis=0) - math.log(num_samples))


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> VAEModel:
  """The VAE of `config` for images of `image_shape` (H, W, C); JaxgenError for bad choices."""
  cfg = config_lib.section(config, 'model', VAEConfig)
  objective = config_lib.section(config, 'vae', ObjectiveConfig)
  if cfg.kind not in ('gaussian', 'vq'):
    raise JaxgenError(f'model.kind={cfg.kind!r} must be gaussian or vq.')
  if cfg.network not in ('mlp', 'conv'):
    raise JaxgenError(f'model.network={cfg.network!r} must be mlp or conv.')
  if cfg.likelihood not in LIKELIHOODS:
    raise JaxgenError(f'model.likelihood={cfg.likelihood!r} must be one of {", ".join(LIKELIHOODS)}.')
  if cfg.spatial and cfg.network != 'conv':
    raise JaxgenError('a latent grid (model.spatial=True) needs model.network=conv.')
  if cfg.kind == 'vq' and not (cfg.network == 'conv' and cfg.spatial):
    raise JaxgenError('a VQ-VAE quantises a latent grid: set model.network=conv and model.spatial=True.')
  if cfg.likelihood == 'bernoulli' and image_shape[-1] != 1:
    raise JaxgenError('the bernoulli likelihood is for binarized grayscale images; use logistic.')
  if cfg.pixel_window < 0 or (cfg.pixel_window and cfg.pixel_window % 2 == 0):
    raise JaxgenError(f'model.pixel_window={cfg.pixel_window} must be an odd window size, or 0 '
                      f'for no pixel head.')
  if cfg.pixel_window and (cfg.likelihood != 'bernoulli' or cfg.kind != 'gaussian'):
    raise JaxgenError('the pixel head (model.pixel_window > 0) draws binary pixels: it needs '
                      'model.likelihood=bernoulli and model.kind=gaussian; set model.pixel_window=0.')
  return VAEModel(cfg, objective, tuple(image_shape))
