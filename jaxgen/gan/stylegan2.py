"""The layers of StyleGAN2 (Karras et al. 2020): modulated convolution, the
mapping network, noise injection and the truncation trick.

Shape letters: B batch, H W spatial, k kernel size, I input channels (C_in),
O output channels (C_out), Z latent width, D intermediate latent (w) width.

Equalised learning rate (Karras et al. 2018): every weight is stored as
N(0, 1) / lr_multiplier and multiplied at run time by lr_multiplier /
sqrt(fan_in), so that Adam's step is the same for every layer relative to
the weight's scale, and lr_multiplier (0.01 in the mapping network) slows a
layer down. Leaky ReLUs are followed by the gain sqrt(2) of the official
implementation, which keeps activations at unit variance.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.blocks import upsample_conv, upsample_nearest_2x

Dtype = Any

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def modulated_conv(x: jax.Array, weight: jax.Array, styles: jax.Array, demodulate: bool = True,
                   eps: float = 1e-8, precision: Any = None, fused: bool = True,
                   upsample: bool = False) -> jax.Array:
  """Convolution with per-sample modulated (and demodulated) weights, SAME padding.

  Args:
    x: [B, H, W, I] inputs.
    weight: [k, k, I, O] shared weights.
    styles: [B, I] per-sample scales of the input channels.
    demodulate: divide each sample's output channel o by
      sqrt(sum_{kh, kw, i} w'[kh, kw, i, o]^2 + eps), which returns unit-variance
      inputs to unit variance whatever the styles.
    eps: see `demodulate`.
    precision: passed to `jax.lax.conv_general_dilated`.
    fused: one grouped convolution with per-sample weights (below); False
      scales the inputs by the styles, convolves with the shared weights and
      scales the outputs by the demodulation factors, the same function.
    upsample: convolve the nearest 2x up-sampling of x. Unfused with a 3x3
      kernel that is `nn.blocks.upsample_conv` (the styles scale channels, so
      they commute with the up-sampling): on a GPU one transposed convolution,
      with no up-sampled copy and 16 instead of 36 multiply-adds per input pixel.

  Returns:
    [B, H, W, O] ([B, 2H, 2W, O] with upsample) in x's dtype: sample b convolved with
    w'_b[kh, kw, i, o] = weight[kh, kw, i, o] * styles[b, i] (demodulated).

  The B convolutions run as one grouped convolution: the batch is folded into
  the channels ([1, H, W, B * I]) with feature_group_count = B, the fused
  modulation of the official implementation. The modulation and
  demodulation are computed in float32.
  """
  k_h, k_w, _, c_out = weight.shape
  if upsample and (fused or (k_h, k_w) != (3, 3)):
    x, upsample = upsample_nearest_2x(x), False  # [B, 2H, 2W, I]
  b, hgt, wid, c_in = x.shape
  w = weight.astype(jnp.float32)[None] * styles.astype(jnp.float32)[:, None, None, :, None]  # [B, k, k, I, O]
  demod = None
  if demodulate:
    demod = jax.lax.rsqrt(jnp.sum(jnp.square(w), axis=(1, 2, 3)) + eps)  # [B, O]
    w = w * demod[:, None, None, None, :]
  if not fused:
    xs = (x.astype(jnp.float32) * styles.astype(jnp.float32)[:, None, None, :]).astype(x.dtype)
    if upsample:
      y = upsample_conv(xs, weight.astype(x.dtype), precision)  # [B, 2H, 2W, O]
    else:
      y = jax.lax.conv_general_dilated(
          xs, weight.astype(x.dtype), window_strides=(1, 1), padding='SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)  # [B, H, W, O]
    return y if demod is None else (y * demod[:, None, None, :]).astype(x.dtype)
  w = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(k_h, k_w, c_in, b * c_out)  # [k, k, I, B*O]
  xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, hgt, wid, b * c_in)  # [1, H, W, B*I]
  y = jax.lax.conv_general_dilated(
      xg, w.astype(x.dtype), window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=b,
      precision=precision)  # [1, H, W, B*O]
  return jnp.transpose(y.reshape(hgt, wid, b, c_out), (2, 0, 1, 3))  # [B, H, W, O]


def truncate(w: jax.Array, w_avg: jax.Array, psi: float | jax.Array) -> jax.Array:
  """The truncation trick: w_avg + psi * (w - w_avg), pulling w towards the mean.

  w: [..., D]; w_avg: [D] (broadcast). Written (1 - psi) * w_avg + psi * w, so
  that psi = 0 gives w_avg and psi = 1 gives w bit for bit.
  """
  return (1.0 - psi) * w_avg + psi * w


class EqualizedDense(nn.Module):
  """A dense layer with equalised learning rate. [..., fan_in] -> [..., features].

  The kernel is stored as N(0, 1 / lr_multiplier^2) and used times
  lr_multiplier / sqrt(fan_in); the bias is stored as bias_init / lr_multiplier
  and used times lr_multiplier, so it starts at `bias_init` whatever the
  multiplier.
  """
  features: int
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.normal(1.0 / self.lr_multiplier),
                        (fan_in, self.features), jnp.float32)  # [fan_in, F]
    bias = self.param('bias', nn.initializers.constant(self.bias_init / self.lr_multiplier),
                      (self.features,), jnp.float32)  # [F]
    kernel = kernel * (self.lr_multiplier / math.sqrt(fan_in))
    y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))
    return y + (bias * self.lr_multiplier).astype(self.dtype)


class MappingNetwork(nn.Module):
  """z -> w: pixel norm, then `num_layers` equalised dense layers with leaky ReLU.

  Input z: [B, Z]. Output w: [B, D] float32, D = w_dim. z is first divided by
  its root mean square (z * rsqrt(mean(z^2) + 1e-8)); each layer is
  EqualizedDense(w_dim, lr_multiplier) followed by leaky_relu(0.2) * sqrt(2).
  The paper uses 8 layers, w_dim 512, lr_multiplier 0.01.
  """
  w_dim: int = 512
  num_layers: int = 8
  lr_multiplier: float = 0.01
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    h = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + 1e-8)  # [B, Z]
    for i in range(self.num_layers):
      h = EqualizedDense(self.w_dim, self.lr_multiplier, dtype=self.dtype, name=f'fc{i}')(h)
      h = nn.leaky_relu(h, LRELU_SLOPE) * LRELU_GAIN  # [B, D]
    return h.astype(jnp.float32)


class ModulatedConv(nn.Module):
  """A StyleGAN2 modulated convolution layer, optionally upsampling by 2.

  Inputs x: [B, H, W, I]; w: [B, D]. Output: [B, H', W', features] with
  H' = 2H if `upsample` else H. The styles [B, I] come from w through an
  EqualizedDense whose bias starts at 1 (so each layer starts unmodulated);
  the kernel [k, k, I, O] is stored N(0, 1) and scaled by 1/sqrt(k * k * I)
  (equalised learning rate; the scale cancels under demodulation). The
  upsampling is nearest-neighbour before the convolution, simpler than the
  paper's transposed convolution with a [1, 3, 3, 1] low-pass filter. A bias
  [O] (zero init) is added; the caller adds `NoiseInjection` and the leaky
  ReLU (gain sqrt(2)) after this layer (noise and bias commute).

  `fused` picks `modulated_conv`'s grouped form. It is off by default: on a
  batch-sharded mesh XLA's partitioner cannot split a grouped convolution whose
  groups are the samples (it fails to compile on 8 devices), and the unfused
  form is one ordinary convolution on every backend.
  """
  features: int
  kernel_size: int = 3
  demodulate: bool = True
  upsample: bool = False
  fused: bool = False
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    c_in = x.shape[-1]
    styles = EqualizedDense(c_in, bias_init=1.0, dtype=jnp.float32, name='affine')(w)  # [B, I]
    k = self.kernel_size
    weight = self.param('kernel', nn.initializers.normal(1.0), (k, k, c_in, self.features),
                        jnp.float32)  # [k, k, I, O]
    weight = weight / math.sqrt(k * k * c_in)
    x = x.astype(self.dtype)
    y = modulated_conv(x, weight, styles, demodulate=self.demodulate, fused=self.fused,
                       upsample=self.upsample)  # [B, H', W', O]
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


class NoiseInjection(nn.Module):
  """Adds per-pixel noise with a learned per-channel strength (zero init).

  Input x: [B, H, W, C]; noise: [B, H, W, 1] (broadcast over the channels, as
  in the paper) or anything broadcastable to x; when None it is drawn from
  N(0, 1) with the rng stream 'noise'. Output: x + strength * noise, [B, H, W, C]
  in x's dtype; strength [C] starts at zero, so the layer starts as the identity.
  """

  @nn.compact
  def __call__(self, x: jax.Array, noise: jax.Array | None = None) -> jax.Array:
    strength = self.param('strength', nn.initializers.zeros, (x.shape[-1],), jnp.float32)  # [C]
    if noise is None:
      noise = jax.random.normal(self.make_rng('noise'), (*x.shape[:-1], 1), jnp.float32)  # [B, H, W, 1]
    return (x.astype(jnp.float32) + strength * noise.astype(jnp.float32)).astype(x.dtype)
