"""Convolutional building blocks (NHWC) shared by the model families.

Every module takes `dtype` (computation) and keeps parameters in float32, so
that one config flag switches a model to bfloat16 compute on accelerators.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Ho et al. zero-initialise the last layer of every residual branch so that each
# block starts as the identity.
zeros_init = nn.initializers.zeros
# The DDPM reference initialises with variance scaling (fan_avg, uniform).
default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')


def group_norm(dtype: Dtype, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm(32) with the epsilon of the DDPM reference (1e-6)."""
  return nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype, name=name)


class ResBlock(nn.Module):
  """Residual block with a time (and class) embedding, Ho et al. 2020.

  Inputs x: [B, H, W, C]; emb: [B, E]. Output: [B, H, W, out_ch].
  """
  out_ch: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool) -> jax.Array:
    h = nn.silu(group_norm(self.dtype)(x))
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=default_init)(h)
    h = h + nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=default_init)(
        nn.silu(emb))[:, None, None, :]
    h = nn.silu(group_norm(self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=zeros_init)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=default_init, name='skip')(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head spatial self-attention with a residual connection.

  Input and output: [B, H, W, C]. Uses `jax.nn.dot_product_attention`, which
  picks a fused kernel where the backend has one.
  """
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    h = group_norm(self.dtype)(x)
    qkv = nn.DenseGeneral((3, c), dtype=self.dtype, kernel_init=default_init, name='qkv')(h)
    qkv = qkv.reshape(b, hgt * wid, 3, 1, c)  # [B, L, 3, heads=1, C]
    # One product, then slices: three products with kernel slices were no faster on an H200
    # (benchmarks/results/h200_speed.md).
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, L, 1, C]
    h = jax.nn.dot_product_attention(q, k, v)  # [B, L, 1, C]
    h = h.reshape(b, hgt, wid, c)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=zeros_init, name='proj_out')(h)
    return x + h


class Downsample(nn.Module):
  """Halves H and W: a stride-2 3x3 convolution. [B, H, W, C] -> [B, H/2, W/2, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype,
                   kernel_init=default_init)(x)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x up-sampling, [B, H, W, C] -> [B, 2H, 2W, C].

  The same values as `jax.image.resize(..., method='nearest')`, written as a
  broadcast and a reshape, which XLA fuses like any elementwise op, where
  resize lowers to a gather.
  """
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))  # [B, H, 2, W, 2, C]
  return x.reshape(b, 2 * h, 2 * w, c)


class Upsample(nn.Module):
  """Doubles H and W: nearest-neighbour then a 3x3 convolution. [B, H, W, C] -> [B, 2H, 2W, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = upsample_nearest_2x(x)
    return nn.Conv(x.shape[-1], (3, 3), dtype=self.dtype, kernel_init=default_init)(x)
