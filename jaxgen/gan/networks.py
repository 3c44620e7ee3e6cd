"""Generators and discriminators of the GAN family (Flax linen, NHWC).

- `DCGANGenerator` / `DCGANDiscriminator` (Radford et al. 2016): a dense
  layer to a small grid, then stride-2 transposed convolutions; D mirrors it
  with stride-2 convolutions. Options: conditional BatchNorm in G, batch /
  layer / no normalisation and spectral normalisation (Miyato et al. 2018) in
  D, and a projection discriminator for labels (Miyato & Koyama 2018).
- `StyleGAN2Generator` / `StyleGAN2Discriminator` (Karras et al. 2020): a
  mapping network, a modulated-convolution synthesis network with skip toRGB
  outputs, and a residual discriminator with a minibatch-stddev layer; built
  from the layers of `jaxgen.gan.stylegan2`.

The calling convention, shared by every network here:

    images = G.apply(variables, z, labels, train=train)   # [B, Z] -> [B, H, W, C] float32
    logits = D.apply(variables, x, labels, train=train)   # [B, H, W, C] -> [B] float32

z is float32 [B, Z] (Z is whatever is passed); labels are int32 [B], or None
when `num_classes` is 0 (labels are then ignored). Parameters are float32 in
'params'; `dtype` is the computation dtype. With train=True the caller makes
'batch_stats' (BatchNorm statistics, StyleGAN2's running mean of w) and
'spectral' (spectral-norm power-iteration vectors) mutable, whichever the net
has; with train=False these are only read and nothing needs to be mutable.

Shape letters: B batch, H W image size, C image channels, R the StyleGAN2
working resolution (a power of two), F feature channels, Z latent width,
D w width, N the number of styles (`num_ws`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.gan.spectral_norm import SNConv, SNDense, spectral_normalize
from jaxgen.gan.stylegan2 import (LRELU_GAIN, LRELU_SLOPE, EqualizedDense, MappingNetwork,
                                  ModulatedConv, NoiseInjection, truncate)
from jaxgen.nn.blocks import upsample_nearest_2x

Dtype = Any

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
DCGAN_LRELU_SLOPE = 0.2
# Radford et al. initialise every weight from N(0, 0.02).
dcgan_init = nn.initializers.normal(0.02)
W_AVG_DECAY = 0.995  # StyleGAN2's w_avg_beta
D_NORMS = ('batch', 'none', 'layer')


def _require_labels(labels: jax.Array | None, num_classes: int, who: str) -> jax.Array:
  if labels is None:
    raise ValueError(f'{who} has num_classes={num_classes} > 0, so it needs labels [B] int32, not None.')
  return labels


def _lrelu(x: jax.Array) -> jax.Array:
  """StyleGAN2's activation: leaky ReLU (0.2) times sqrt(2), which keeps unit variance."""
  return nn.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


# ---------------------------------------------------------------- DCGAN


class ConditionalBatchNorm(nn.Module):
  """BatchNorm whose scale and shift are chosen by the class label.

  Inputs x: [B, H, W, F] (or [B, F]); labels: [B] int. Output, same shape as x:
  BatchNorm(x) (no scale or bias of its own; momentum 0.9, epsilon 1e-5;
  statistics in 'batch_stats') times gamma_y plus beta_y, with
  gamma_y = 1 + Embed(labels) and beta_y = Embed(labels), both embeddings
  initialised to zero, so the layer starts as a plain BatchNorm.
  With train=True the batch statistics are used and the running ones updated
  (needs mutable=['batch_stats']); with train=False the running ones are used.
  """
  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, *, train: bool) -> jax.Array:
    f = x.shape[-1]
    h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     use_scale=False, use_bias=False, dtype=self.dtype, name='bn')(x)
    gamma = 1.0 + nn.Embed(self.num_classes, f, embedding_init=nn.initializers.zeros,
                           name='gamma')(labels)  # [B, F]
    beta = nn.Embed(self.num_classes, f, embedding_init=nn.initializers.zeros, name='beta')(labels)  # [B, F]
    expand = (x.shape[0],) + (1,) * (x.ndim - 2) + (f,)  # broadcast over H, W
    return h * gamma.reshape(expand).astype(h.dtype) + beta.reshape(expand).astype(h.dtype)


class SNEmbed(nn.Module):
  """A class embedding whose table [num_classes, F] is spectrally normalised.

  Input labels [B] int; output [B, F] float32. The table is divided by its
  top singular value estimated by power iteration, the right singular vector
  u [F] kept as 'spectral'/'u' (as `SNDense` does); `update_stats` advances
  and stores u (needs mutable=['spectral']). Miyato & Koyama (2018)
  normalise the projection embedding the same way.
  """
  num_classes: int
  features: int
  n_steps: int = 1

  @nn.compact
  def __call__(self, labels: jax.Array, *, update_stats: bool) -> jax.Array:
    table = self.param('embedding', nn.initializers.normal(1.0), (self.num_classes, self.features),
                       jnp.float32)  # [num_classes, F]

    def init_u():
      u = jax.random.normal(self.make_rng('params'), (self.features,), jnp.float32)
      return u / jnp.linalg.norm(u)

    u_var = self.variable('spectral', 'u', init_u)
    table_sn, u_new, _ = spectral_normalize(table, u_var.value, self.n_steps)
    if update_stats:
      u_var.value = u_new
    return jnp.take(table_sn, labels, axis=0)  # [B, F]


def dcgan_base_size(image_shape: tuple[int, int, int], num_up: int) -> tuple[int, int]:
  """The grid (h, w) = (H, W) / 2**num_up a DCGAN generator starts from.

  Raises ValueError unless 2**num_up divides both H and W (num_up >= 1).
  """
  height, width = image_shape[:2]
  factor = 2 ** num_up
  if num_up < 1 or height % factor or width % factor:
    raise ValueError(
        f'DCGAN image size {height}x{width} is not divisible by 2**num_up = {factor}: choose '
        f'num_up (>= 1) so that 2**num_up divides both H and W (num_up=2 for 28x28, 3 for 32x32), '
        f'or change image_shape.')
  return height // factor, width // factor


class DCGANGenerator(nn.Module):
  """DCGAN generator: z [B, Z] (float32), labels [B] int32 or None -> images [B, H, W, C] in [-1, 1].

  Dense(z) -> [B, H/2**num_up, W/2**num_up, ch * 2**num_up] -> BN -> ReLU,
  then `num_up` transposed convolutions (4x4, stride 2, SAME), each halving
  the channels and followed by BN + ReLU, except the last, which outputs C
  channels and a tanh. The dense layer and the convolutions followed by a BN
  have no bias (the BN shift replaces it). BatchNorm: momentum 0.9, epsilon
  1e-5; with num_classes > 0 every BN is a `ConditionalBatchNorm`. Weights
  start from N(0, 0.02). `z_dim` is not used by the module (z's width is
  whatever is passed); it documents the configuration.
  """
  image_shape: tuple[int, int, int]
  z_dim: int = 100
  ch: int = 64
  num_up: int = 2
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    dcgan_base_size(self.image_shape, self.num_up)  # fail at construction, before any work
    super().__post_init__()

  def _norm(self, x: jax.Array, labels: jax.Array | None, train: bool, name: str) -> jax.Array:
    if self.num_classes > 0:
      return ConditionalBatchNorm(self.num_classes, dtype=self.dtype, name=name)(x, labels, train=train)
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None, *, train: bool) -> jax.Array:
    if self.num_classes > 0:
      labels = _require_labels(labels, self.num_classes, 'DCGANGenerator')
    base_h, base_w = dcgan_base_size(self.image_shape, self.num_up)
    c_top = self.ch * 2 ** self.num_up
    h = nn.Dense(base_h * base_w * c_top, use_bias=False, kernel_init=dcgan_init, dtype=self.dtype,
                 name='fc')(z.astype(self.dtype))  # [B, h * w * F]
    h = h.reshape(z.shape[0], base_h, base_w, c_top)  # [B, h, w, F]
    h = nn.relu(self._norm(h, labels, train, 'bn_fc'))
    for i in range(self.num_up):
      last = i == self.num_up - 1
      features = self.image_shape[-1] if last else c_top // 2 ** (i + 1)
      h = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME', use_bias=last,
                           kernel_init=dcgan_init, dtype=self.dtype, name=f'deconv{i}')(h)  # [B, 2h, 2w, F/2]
      if not last:
        h = nn.relu(self._norm(h, labels, train, f'bn{i}'))
    return jnp.tanh(h.astype(jnp.float32))  # [B, H, W, C]


class DCGANDiscriminator(nn.Module):
  """DCGAN discriminator: x [B, H, W, C], labels [B] int32 or None -> logits [B] float32.

  `num_down` convolutions (4x4, stride 2, SAME) with ch, 2ch, 4ch, ...
  channels, each followed by a norm (except the first) and LeakyReLU(0.2).
  `norm`: 'batch' (BatchNorm, momentum 0.9, epsilon 1e-5, statistics in
  'batch_stats'), 'layer' (LayerNorm over H, W, F with a per-channel scale and
  shift) or 'none'. `spectral_norm`: every convolution and dense layer is
  spectrally normalised (u vectors in 'spectral', advanced when train=True);
  it excludes norm='batch'. A convolution followed by BatchNorm has no bias.

  Unconditional (num_classes = 0): flatten -> Dense(1). Conditional: a
  projection discriminator, phi [B, F] = the last features summed over H and
  W, logits = Dense(1)(phi) + sum(Embed(labels) * phi, -1); with
  spectral_norm the embedding table is spectrally normalised too (`SNEmbed`).
  Weights of the plain layers start from N(0, 0.02).
  """
  image_shape: tuple[int, int, int]
  ch: int = 64
  num_down: int = 2
  norm: str = 'batch'
  spectral_norm: bool = False
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    if self.norm not in D_NORMS:
      raise ValueError(f'DCGANDiscriminator norm must be one of {D_NORMS}, not {self.norm!r}.')
    if self.spectral_norm and self.norm == 'batch':
      raise ValueError("DCGANDiscriminator with spectral_norm=True needs norm='none' or 'layer', "
                       "not 'batch'.")
    if self.num_down < 1:
      raise ValueError(f'DCGANDiscriminator num_down must be >= 1, not {self.num_down}.')
    super().__post_init__()

  def _conv(self, h: jax.Array, features: int, train: bool, use_bias: bool, name: str) -> jax.Array:
    if self.spectral_norm:
      return SNConv(features, (4, 4), strides=(2, 2), padding='SAME', use_bias=use_bias,
                    dtype=self.dtype, name=name)(h, update_stats=train)
    return nn.Conv(features, (4, 4), strides=(2, 2), padding='SAME', use_bias=use_bias,
                   kernel_init=dcgan_init, dtype=self.dtype, name=name)(h)

  def _dense(self, h: jax.Array, train: bool) -> jax.Array:
    if self.spectral_norm:
      return SNDense(1, dtype=self.dtype, name='fc')(h, update_stats=train)
    return nn.Dense(1, kernel_init=dcgan_init, dtype=self.dtype, name='fc')(h)

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, *, train: bool) -> jax.Array:
    h = x.astype(self.dtype)  # [B, H, W, C]
    for i in range(self.num_down):
      batch_norm = i > 0 and self.norm == 'batch'  # its shift replaces the conv's bias
      h = self._conv(h, self.ch * 2 ** i, train, not batch_norm,
                     f'conv{i}')  # [B, H / 2^(i+1), W / 2^(i+1), ch * 2^i]
      if batch_norm:
        h = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                         dtype=self.dtype, name=f'norm{i}')(h)
      elif i > 0 and self.norm == 'layer':
        h = nn.LayerNorm(reduction_axes=(-3, -2, -1), feature_axes=-1, dtype=self.dtype,
                         name=f'norm{i}')(h)
      h = nn.leaky_relu(h, DCGAN_LRELU_SLOPE)
    if self.num_classes == 0:
      out = self._dense(h.reshape(h.shape[0], -1), train)  # [B, 1]
      return out[:, 0].astype(jnp.float32)
    labels = _require_labels(labels, self.num_classes, 'DCGANDiscriminator')
    phi = jnp.sum(h.astype(jnp.float32), axis=(1, 2))  # [B, F]
    out = self._dense(phi.astype(self.dtype), train)[:, 0].astype(jnp.float32)  # [B]
    if self.spectral_norm:
      emb = SNEmbed(self.num_classes, phi.shape[-1], name='embed')(labels, update_stats=train)  # [B, F]
    else:
      emb = nn.Embed(self.num_classes, phi.shape[-1], name='embed')(labels)  # [B, F]
    return out + jnp.sum(emb.astype(jnp.float32) * phi, axis=-1)  # [B]


# ---------------------------------------------------------------- StyleGAN2


def stylegan2_resolution(image_shape: tuple[int, int, int]) -> int:
  """R: the smallest power of two >= max(H, W), at least 8 (28x28 -> 32)."""
  side = max(image_shape[0], image_shape[1], 8)
  return 1 << (side - 1).bit_length()


def _stylegan2_levels(image_shape: tuple[int, int, int]) -> list[int]:
  """The synthesis resolutions 4, 8, ..., R."""
  res = stylegan2_resolution(image_shape)
  return [4 * 2 ** i for i in range(int(math.log2(res)) - 1)]


def num_ws(image_shape: tuple[int, int, int]) -> int:
  """N: the number of styles the StyleGAN2 synthesis network takes, one per styled layer.

  In order: at 4x4 one conv and a toRGB; at each of 8..R two convs and a
  toRGB. So 2 + 3 * log2(R / 4): 11 for R = 32.
  """
  return 2 + 3 * (len(_stylegan2_levels(image_shape)) - 1)


def _normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


class StyleGAN2Generator(nn.Module):
  """StyleGAN2 generator: z [B, Z] float32, labels [B] int32 or None -> images [B, H, W, C] float32.

  Mapping: `MappingNetwork(w_dim, mapping_layers, lr_multiplier 0.01)`; with
  num_classes > 0 an embedding of the label (w_dim wide) is normalised to
  unit second moment and concatenated to the normalised z first (StyleGAN2-ADA).
  Synthesis: a learned constant [4, 4, ch]; at 4x4 one 3x3 `ModulatedConv`,
  at 8..R two (the first up-sampling); each followed by `NoiseInjection`, its
  bias and leaky ReLU(0.2) * sqrt(2). A 1x1 toRGB (not demodulated) at every
  resolution, summed with the nearest-neighbour up-sampled RGB of the previous
  one (the skip architecture). Every layer has `ch` channels (a small model:
  no halving at high resolutions). The [B, R, R, C] output is center-cropped
  to (H, W); it is linear (not squashed or clipped).

  Variables: 'params', and 'batch_stats'/'w_avg' [D] (the running mean of w,
  for truncation). Noise comes from the rng stream 'noise' when the caller
  passes one (rngs={'noise': key}), and is zero otherwise.

  Methods (use `G.apply(variables, ..., method='mapping')` etc.):
    mapping(z, labels) -> w [B, D];
    synthesis(ws, *, train) -> images [B, H, W, C], ws [B, N, D] with
      N = `num_ws` (`train` is accepted for the common signature; nothing in
      the synthesis network depends on it);
    __call__(z, labels, *, train, psi=1.0, mix_z=None, mix_cutoff=None).
  """
  image_shape: tuple[int, int, int]
  z_dim: int = 128
  w_dim: int = 128
  ch: int = 64
  mapping_layers: int = 4
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @property
  def num_ws(self) -> int:
    """N, the number of styles of `synthesis` (see the module-level `num_ws`)."""
    return num_ws(self.image_shape)

  @property
  def resolution(self) -> int:
    """R, the synthesis resolution before cropping."""
    return stylegan2_resolution(self.image_shape)

  def setup(self):
    self.mapping_net = MappingNetwork(self.w_dim, self.mapping_layers, lr_multiplier=0.01,
                                      dtype=self.dtype)
    if self.num_classes > 0:
      self.label_embed = nn.Embed(self.num_classes, self.w_dim,
                                  embedding_init=nn.initializers.normal(1.0))
    self.const = self.param('const', nn.initializers.normal(1.0), (4, 4, self.ch), jnp.float32)
    convs, noises, to_rgbs = [], [], []
    for res in _stylegan2_levels(self.image_shape):
      for j in range(1 if res == 4 else 2):
        convs.append(ModulatedConv(self.ch, 3, upsample=(res > 4 and j == 0), dtype=self.dtype))
        noises.append(NoiseInjection())
      to_rgbs.append(ModulatedConv(self.image_shape[-1], 1, demodulate=False, dtype=self.dtype))
    self.convs, self.noises, self.to_rgbs = convs, noises, to_rgbs
    # Declared only where it exists or may be created, so that `mapping` and
    # `synthesis` can be applied with 'params' alone.
    if self.is_mutable_collection('batch_stats') or self.has_variable('batch_stats', 'w_avg'):
      self.w_avg = self.variable('batch_stats', 'w_avg', jnp.zeros, (self.w_dim,), jnp.float32)

  def mapping(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """z [B, Z] float32, labels [B] int32 (None when unconditional) -> w [B, D] float32."""
    z = z.astype(jnp.float32)
    if self.num_classes > 0:
      labels = _require_labels(labels, self.num_classes, 'StyleGAN2Generator')
      y = self.label_embed(labels).astype(jnp.float32)  # [B, D]
      z = jnp.concatenate([_normalize_2nd_moment(z), _normalize_2nd_moment(y)], axis=-1)  # [B, Z + D]
    return self.mapping_net(z)  # [B, D]

  def synthesis(self, ws: jax.Array, *, train: bool = False) -> jax.Array:
    """ws [B, N, D] (one w per styled layer, in the order of `num_ws`) -> images [B, H, W, C] float32."""
    del train  # no layer behaves differently in training
    if ws.ndim != 3 or ws.shape[1] != self.num_ws:
      raise ValueError(f'StyleGAN2 synthesis takes ws [B, {self.num_ws}, D], got shape {ws.shape}.')
    b = ws.shape[0]
    use_noise = self.has_rng('noise')
    x = jnp.broadcast_to(self.const.astype(self.dtype), (b, 4, 4, self.ch))  # [B, 4, 4, F]
    rgb = None
    i_w, i_conv = 0, 0
    for level, res in enumerate(_stylegan2_levels(self.image_shape)):
      for _ in range(1 if res == 4 else 2):
        x = self.convs[i_conv](x, ws[:, i_w])  # [B, res, res, F], bias included
        noise = None if use_noise else jnp.zeros((*x.shape[:-1], 1), jnp.float32)  # [B, res, res, 1]
        x = _lrelu(self.noises[i_conv](x, noise))
        i_conv, i_w = i_conv + 1, i_w + 1
      y = self.to_rgbs[level](x, ws[:, i_w]).astype(jnp.float32)  # [B, res, res, C]
      i_w += 1
      rgb = y if rgb is None else upsample_nearest_2x(rgb) + y
    height, width = self.image_shape[:2]
    top, left = (self.resolution - height) // 2, (self.resolution - width) // 2
    return rgb[:, top:top + height, left:left + width, :]  # [B, H, W, C]

  def __call__(self, z: jax.Array, labels: jax.Array | None, *, train: bool, psi: float = 1.0,
               mix_z: jax.Array | None = None, mix_cutoff: int | None = None) -> jax.Array:
    """z [B, Z] float32, labels [B] int32 or None -> images [B, H, W, C] float32 (linear).

    train: update 'batch_stats'/'w_avg' <- w_avg + (1 - 0.995) (mean_B(w) - w_avg)
      before truncation (needs mutable=['batch_stats']).
    psi: truncation, w <- w_avg + psi (w - w_avg) (a float or a traced scalar;
      the literal 1.0 skips it), applied to the mixing w as well.
    mix_z: [B, Z], style mixing: the styles of layers >= mix_cutoff (a Python
      int in [0, N]) come from mapping(mix_z, labels).
    """
    w = self.mapping(z, labels)  # [B, D]
    truncating = not (isinstance(psi, (int, float)) and psi == 1.0)
    if (train or truncating) and not hasattr(self, 'w_avg'):
      raise ValueError("StyleGAN2Generator needs 'batch_stats'/'w_avg' for train=True or psi != 1: "
                       "apply it with the variables from init (and mutable=['batch_stats'] to train).")
    if train:
      self.w_avg.value = self.w_avg.value + (1.0 - W_AVG_DECAY) * (jnp.mean(w, axis=0) - self.w_avg.value)
    if truncating:
      w = truncate(w, self.w_avg.value, psi)
    ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], self.num_ws, w.shape[-1]))  # [B, N, D]
    if mix_z is not None:
      if mix_cutoff is None:
        raise ValueError('StyleGAN2Generator style mixing needs mix_cutoff (an int in [0, num_ws]) '
                         'with mix_z.')
      w2 = self.mapping(mix_z, labels)  # [B, D]
      if truncating:
        w2 = truncate(w2, self.w_avg.value, psi)
      take_second = (jnp.arange(self.num_ws) >= mix_cutoff)[None, :, None]  # [1, N, 1]
      ws = jnp.where(take_second, w2[:, None, :], ws)  # [B, N, D]
    return self.synthesis(ws, train=train)


class EqualizedConv(nn.Module):
  """A convolution with equalised learning rate, SAME padding. [B, H, W, I] -> [B, H, W, features].

  The kernel [k, k, I, O] is stored as N(0, 1) and used times 1 / sqrt(k * k * I);
  the bias [O] (optional) starts at zero.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c_in = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', nn.initializers.normal(1.0), (k, k, c_in, self.features),
                        jnp.float32)  # [k, k, I, O]
    kernel = kernel * (1.0 / math.sqrt(k * k * c_in))
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1, 1), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [B, H, W, O]
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def _avg_pool_2x(x: jax.Array) -> jax.Array:
  """2x2 average pooling, [B, H, W, F] -> [B, H/2, W/2, F] (H, W even)."""
  b, h, w, f = x.shape
  return jnp.mean(x.reshape(b, h // 2, 2, w // 2, 2, f), axis=(2, 4))


def mbstd_group_size(batch: int, max_group: int) -> int:
  """The group size of the minibatch-stddev layer: the largest divisor of `batch` <= `max_group`.

  StyleGAN2 uses min(max_group, batch) and requires it to divide the batch;
  taking the largest divisor instead never fails (a prime batch gives 1,
  where the stddev over a group of one is 0 and the layer adds a constant).
  """
  for g in range(max(1, min(max_group, batch)), 0, -1):
    if batch % g == 0:
      return g
  return 1


def minibatch_stddev(x: jax.Array, group_size: int, eps: float = 1e-8) -> jax.Array:
  """Appends the minibatch standard deviation as one channel. [B, H, W, F] -> [B, H, W, F + 1].

  Samples b and b + B/G, b + 2B/G, ... form a group (as in the official code);
  the extra channel of every member is the mean over H, W, F of the stddev
  over the group, sqrt(var + eps). Computed in float32. group_size must divide B.
  """
  b, h, w, f = x.shape
  y = x.astype(jnp.float32).reshape(group_size, b // group_size, h, w, f)  # [G, M, H, W, F]
  y = jnp.sqrt(jnp.var(y, axis=0) + eps)  # [M, H, W, F]
  y = jnp.mean(y, axis=(1, 2, 3))  # [M]
  y = jnp.tile(y, group_size)  # [B], sample b gets group b % M
  y = jnp.broadcast_to(y[:, None, None, None], (b, h, w, 1)).astype(x.dtype)
  return jnp.concatenate([x, y], axis=-1)


class _DBlock(nn.Module):
  """A residual discriminator block: [B, H, W, F] -> [B, H/2, W/2, F].

  main = avgpool(lrelu(conv3x3(lrelu(conv3x3(x))))), skip = conv1x1(avgpool(x))
  without bias, out = (main + skip) / sqrt(2).
  """
  ch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _lrelu(EqualizedConv(self.ch, 3, dtype=self.dtype, name='conv0')(x))
    h = _lrelu(EqualizedConv(self.ch, 3, dtype=self.dtype, name='conv1')(h))
    h = _avg_pool_2x(h)  # [B, H/2, W/2, F]
    skip = EqualizedConv(self.ch, 1, use_bias=False, dtype=self.dtype, name='skip')(_avg_pool_2x(x))
    return (h + skip) * (1.0 / math.sqrt(2.0))


class StyleGAN2Discriminator(nn.Module):
  """StyleGAN2 residual discriminator: x [B, H, W, C], labels [B] int32 or None -> logits [B] float32.

  x is padded to [B, R, R, C] with -1 (the background value; the padding is
  split as the generator's crop), then fromRGB (1x1 conv + lrelu), `_DBlock`s
  from R down to 4x4 (ch channels throughout), the minibatch-stddev channel
  (group size `mbstd_group_size(B, mbstd_group)`), a 3x3 conv + lrelu, flatten,
  EqualizedDense(ch) + lrelu = phi [B, ch], then EqualizedDense(1). With
  num_classes > 0 a projection is added: sum(e_y * phi, -1) / sqrt(ch), with
  e_y from an N(0, 1) embedding (the 1 / sqrt(ch) as in StyleGAN2-ADA's
  conditional output). Only 'params'; `train` is accepted for the common
  signature and changes nothing.
  """
  image_shape: tuple[int, int, int]
  ch: int = 64
  num_classes: int = 0
  mbstd_group: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None, *, train: bool) -> jax.Array:
    del train
    if tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f'StyleGAN2Discriminator expects images [B, *{tuple(self.image_shape)}], '
                       f'got {x.shape}.')
    res = stylegan2_resolution(self.image_shape)
    height, width = self.image_shape[:2]
    top, left = (res - height) // 2, (res - width) // 2
    pads = ((0, 0), (top, res - height - top), (left, res - width - left), (0, 0))
    x = jnp.pad(x.astype(jnp.float32), pads, constant_values=-1.0).astype(self.dtype)  # [B, R, R, C]
    h = _lrelu(EqualizedConv(self.ch, 1, dtype=self.dtype, name='from_rgb')(x))  # [B, R, R, F]
    while h.shape[1] > 4:
      h = _DBlock(self.ch, dtype=self.dtype, name=f'block{h.shape[1]}')(h)  # [B, res/2, res/2, F]
    h = minibatch_stddev(h, mbstd_group_size(h.shape[0], self.mbstd_group))  # [B, 4, 4, F + 1]
    h = _lrelu(EqualizedConv(self.ch, 3, dtype=self.dtype, name='conv')(h))  # [B, 4, 4, F]
    h = h.reshape(h.shape[0], -1)  # [B, 16 F]
    phi = _lrelu(EqualizedDense(self.ch, dtype=self.dtype, name='fc')(h))  # [B, F]
    out = EqualizedDense(1, dtype=self.dtype, name='out')(phi)[:, 0].astype(jnp.float32)  # [B]
    if self.num_classes == 0:
      return out
    labels = _require_labels(labels, self.num_classes, 'StyleGAN2Discriminator')
    emb = nn.Embed(self.num_classes, self.ch, embedding_init=nn.initializers.normal(1.0),
                   name='embed')(labels)  # [B, F]
    proj = jnp.sum(emb.astype(jnp.float32) * phi.astype(jnp.float32), axis=-1)  # [B]
    return out + proj * (1.0 / math.sqrt(self.ch))
