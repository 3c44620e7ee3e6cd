"""Encoders and decoders of the VAE family (Flax linen, NHWC).

- `MLPEncoder` / `MLPDecoder`: flattened images <-> a latent vector [B, Z].
- `ConvEncoder` / `ConvDecoder`: a residual conv stack that halves the
  resolution once per entry of `ch_mult` after the first; the latent is either
  a vector [B, Z] (a dense layer on the flattened grid) or, with `spatial`, a
  grid [B, h, w, Z] (the KL and VQ autoencoders that latent models use).

Encoders return `out_dim` numbers per latent element position (2*Z for a
Gaussian posterior: mean and log-variance; Z for a VQ encoder). Decoders
return `out_ch` channels per pixel: the likelihood's parameters.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class MLPEncoder(nn.Module):
  hidden: Sequence[int]
  out_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, out_dim]
    h = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      h = nn.gelu(nn.Dense(width, dtype=self.dtype)(h))
    return nn.Dense(self.out_dim, dtype=self.dtype)(h).astype(jnp.float32)


class MLPDecoder(nn.Module):
  hidden: Sequence[int]
  image_shape: tuple[int, int, int]
  out_ch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:  # [B, Z] -> [B, H, W, out_ch]
    h = z
    for width in reversed(tuple(self.hidden)):
      h = nn.gelu(nn.Dense(width, dtype=self.dtype)(h))
    height, width, _ = self.image_shape
    out = nn.Dense(height * width * self.out_ch, dtype=self.dtype)(h)
    return out.reshape(z.shape[0], height, width, self.out_ch).astype(jnp.float32)


class ResBlock(nn.Module):
  """x + conv(silu(conv(silu(x)))), channels kept. [B, H, W, C] -> [B, H, W, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ch = x.shape[-1]
    h = nn.Conv(ch, (3, 3), dtype=self.dtype)(nn.silu(x))
    h = nn.Conv(ch, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(nn.silu(h))
    return x + h


def _grid_shape(image_shape: tuple[int, int, int], levels: int) -> tuple[int, int]:
  """Spatial size after `levels - 1` halvings (SAME padding rounds up)."""
  h, w = image_shape[:2]
  for _ in range(levels - 1):
    h, w = -(-h // 2), -(-w // 2)
  return h, w


class ConvEncoder(nn.Module):
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  out_dim: int
  spatial: bool  # True: [B, h, w, out_dim]; False: [B, out_dim]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.ch * self.ch_mult[0], (3, 3), dtype=self.dtype)(x)
    for level, mult in enumerate(self.ch_mult):
      if level:  # halve the resolution, change the width
        h = nn.Conv(self.ch * mult, (3, 3), strides=(2, 2), dtype=self.dtype)(nn.silu(h))
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.dtype)(h)
    h = nn.silu(h)
    if self.spatial:
      return nn.Conv(self.out_dim, (1, 1), dtype=self.dtype)(h).astype(jnp.float32)
    return nn.Dense(self.out_dim, dtype=self.dtype)(h.reshape(h.shape[0], -1)).astype(jnp.float32)


class ConvDecoder(nn.Module):
  ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  image_shape: tuple[int, int, int]
  out_ch: int
  spatial: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:  # [B, Z] or [B, h, w, Z] -> [B, H, W, out_ch]
    top = self.ch * self.ch_mult[-1]
    if self.spatial:
      h = nn.Conv(top, (3, 3), dtype=self.dtype)(z)
    else:
      gh, gw = _grid_shape(self.image_shape, len(self.ch_mult))
      h = nn.Dense(gh * gw * top, dtype=self.dtype)(z).reshape(z.shape[0], gh, gw, top)
    # Target sizes on the way up, so odd sizes (7 -> 14 -> 28, or 4 -> 7) come out exactly.
    sizes = [_grid_shape(self.image_shape, n) for n in range(len(self.ch_mult), 0, -1)]
    for i, mult in enumerate(reversed(tuple(self.ch_mult))):
      if i:
        th, tw = sizes[i]
        h = jax.image.resize(h, (h.shape[0], th, tw, h.shape[-1]), 'nearest')
        h = nn.Conv(self.ch * mult, (3, 3), dtype=self.dtype)(nn.silu(h))
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.dtype)(h)
    return nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(nn.silu(h)).astype(jnp.float32)
