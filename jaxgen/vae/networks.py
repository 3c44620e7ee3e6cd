"""Encoders and decoders of the VAE family (Flax linen, NHWC).

- `MLPEncoder` / `MLPDecoder`: flattened images <-> a latent vector [B, Z].
- `ConvEncoder` / `ConvDecoder`: a residual conv stack that halves the
  resolution once per entry of `ch_mult` after the first; the latent is either
  a vector [B, Z] (a dense layer on the flattened grid) or, with `spatial`, a
  grid [B, h, w, Z] (the KL and VQ autoencoders that latent models use).

- `PixelHead`: a local autoregressive decoder head (the variational lossy
  autoencoder of Chen et al. 2017, a small PixelCNN): pixel (i, j)'s likelihood
  parameters from the decoder's features at (i, j) and the pixels before it in
  raster order within a k x k window, so that z carries the global shape and the
  head the local texture. Evaluated on the whole image (training, likelihoods)
  or at one pixel from a cache (drawing pixels one by one).

Encoders return `out_dim` numbers per latent element position (2*Z for a
Gaussian posterior: mean and log-variance; Z for a VQ encoder). Decoders
return `out_ch` channels per pixel: the likelihood's parameters, or with a
`PixelHead` the features it conditions on.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.masked_conv import Pad, WindowConv

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


class PixelHead(nn.Module):
  """out(i, j) = mix(causal window conv of x at (i, j) + dense(cond(i, j))), mix a per-pixel
  residual MLP. The window covers the k//2 rows above and the k//2 pixels to the left of
  (i, j) (mask 'A': not (i, j) itself), so out(i, j) depends only on earlier pixels."""
  kernel: int  # k, odd
  features: int
  layers: int
  in_ch: int  # image channels C
  out_ch: int
  dtype: Dtype = jnp.float32

  def setup(self):
    r = self.kernel // 2
    self.window = WindowConv(self.in_ch, self.features, (r + 1, self.kernel), (r, r), mask='A',
                             groups=self.in_ch, dtype=self.dtype)
    self.cond = nn.Dense(self.features, dtype=self.dtype)
    self.hidden = [nn.Dense(self.features, dtype=self.dtype) for _ in range(self.layers)]
    self.out = nn.Dense(self.out_ch, dtype=self.dtype)

  @property
  def pad(self) -> Pad:
    """The zero border (top, left, right) of the cache `at` reads."""
    r = self.kernel // 2
    return (r, r, r)

  def _mix(self, h: jax.Array) -> jax.Array:  # [..., features] -> [..., out_ch]
    for layer in self.hidden:
      h = h + layer(nn.gelu(h))
    return self.out(nn.gelu(h)).astype(jnp.float32)

  def __call__(self, cond: jax.Array, x: jax.Array) -> jax.Array:
    """cond [B, H, W, F] (decoder features), x [B, H, W, C] (the pixels) -> [B, H, W, out_ch]."""
    return self._mix(self.window(x) + self.cond(cond))

  def at(self, cond: jax.Array, cache: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
    """Pixel (i, j) only: cond [B, F] (the features at (i, j)), cache [B, Hp, Wp, C] (the pixels
    drawn so far, padded by `pad`) -> [B, out_ch]. Equal to `__call__`'s output at (i, j)."""
    return self._mix(self.window.at(cache, i, j, self.pad) + self.cond(cond))
