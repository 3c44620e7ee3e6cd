"""Causal convolutions for autoregressive image models (PixelCNN, gated PixelCNN).

A `WindowConv` is a convolution whose kernel window is anchored explicitly:

    out[i, j] = b + sum_{dy < kh, dx < kw} x[i + dy - top, j + dx - left] . K[dy, dx]

with zeros outside the image. Anchoring (rather than "same" padding) is what
lets one layer be evaluated three ways with the same parameters and the same
result: on the whole image (`__call__`, training and the naive sampler), at one
pixel (`at`) or on one row (`row`), reading its input from a cache that holds
the layer's input padded by `pad` = (top, left, right) (the cached samplers;
their windows end on the anchor row, since nothing below it is known yet).

Raster order within a pixel: features are in `groups` channel groups, feature f
in group f % groups (group c belongs to image channel c, R G B). A mask of type
'A' lets the output of group g at the window's anchor see input groups < g of
the anchor pixel, type 'B' groups <= g; every window position before the anchor
in raster order is visible, every one after it is not.

Shapes: B batch, H W image, Ci Co input/output features, Hp Wp the padded cache.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Pad = tuple[int, int, int]  # (top, left, right) zero rows/columns around a cache; none at the bottom


def causal_mask(kernel: tuple[int, int], anchor: tuple[int, int], in_features: int,
                out_features: int, mask_type: str, groups: int = 1) -> np.ndarray:
  """The 0/1 mask [kh, kw, Ci, Co] of a `WindowConv` whose window is anchored at `anchor`.

  Window cells before the anchor in raster order are 1, cells after it 0; the
  anchor cell is 1 where group(in) < group(out) ('A') or <= ('B'), with
  group(f) = f % groups.
  """
  if mask_type not in ('A', 'B'):
    raise ValueError(f'mask_type must be A or B, got {mask_type!r}')
  kh, kw = kernel
  top, left = anchor
  mask = np.zeros((kh, kw, in_features, out_features), np.float32)
  for dy in range(kh):
    for dx in range(kw):
      if (dy - top, dx - left) < (0, 0):  # strictly before the anchor in raster order
        mask[dy, dx] = 1.0
  g_in = np.arange(in_features)[:, None] % groups
  g_out = np.arange(out_features)[None, :] % groups
  if 0 <= top < kh and 0 <= left < kw:
    mask[top, left] = (g_in < g_out) if mask_type == 'A' else (g_in <= g_out)
  return mask


class WindowConv(nn.Module):
  """A convolution with an anchored window (module docstring), optionally masked.

  `anchor` (top, left): the window covers rows [i - top, i - top + kh) and
  columns [j - left, j - left + kw) of the input for output (i, j). `mask`
  'A' or 'B' masks the anchor pixel by channel group and everything after it;
  None uses the whole window (the vertical stack of the gated PixelCNN, whose
  window ends above the current row once shifted).
  """
  in_features: int
  features: int
  kernel: tuple[int, int]
  anchor: tuple[int, int]
  mask: str | None = None
  groups: int = 1
  dtype: Dtype = jnp.float32

  def setup(self):
    self.kernel_ = self.param('kernel', nn.initializers.lecun_normal(),
                              (*self.kernel, self.in_features, self.features), jnp.float32)
    self.bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)

  def _weights(self, in_features: int) -> tuple[jax.Array, jax.Array]:
    if in_features != self.in_features:
      raise ValueError(f'this WindowConv takes {self.in_features} input features, got {in_features}')
    kernel = self.kernel_
    if self.mask is not None:
      kernel = kernel * causal_mask(self.kernel, self.anchor, self.in_features, self.features,
                                    self.mask, self.groups)
    return kernel.astype(self.dtype), self.bias.astype(self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, H, W, Ci] -> [B, H, W, Co]."""
    kernel, bias = self._weights(x.shape[-1])
    (kh, kw), (top, left) = self.kernel, self.anchor
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel, (1, 1), ((top, kh - 1 - top), (left, kw - 1 - left)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y + bias

  def _check_cached(self, pad: Pad) -> None:
    (kh, kw), (top, left) = self.kernel, self.anchor
    if kh - 1 != top or top > pad[0] or left > pad[1] or kw - 1 - left > pad[2]:
      raise ValueError(f'a cached window must end on its anchor row and fit the cache padding {pad}; '
                       f'got window {self.kernel} anchored at {self.anchor}')

  def at(self, cache: jax.Array, i: jax.Array, j: jax.Array, pad: Pad) -> jax.Array:
    """The output at pixel (i, j) only: cache [B, Hp, Wp, Ci] (the input padded by `pad`) -> [B, Co]."""
    self._check_cached(pad)
    kernel, bias = self._weights(cache.shape[-1])
    (kh, kw), (top, left) = self.kernel, self.anchor
    patch = jax.lax.dynamic_slice(cache.astype(self.dtype),
                                  (0, i + pad[0] - top, j + pad[1] - left, 0),
                                  (cache.shape[0], kh, kw, cache.shape[-1]))  # [B, kh, kw, Ci]
    return jnp.einsum('bhwc,hwco->bo', patch, kernel) + bias

  def row(self, cache: jax.Array, i: jax.Array, width: int, pad: Pad) -> jax.Array:
    """The outputs on row i only: cache [B, Hp, Wp, Ci] -> [B, W, Co] for an image `width` wide."""
    self._check_cached(pad)
    kernel, bias = self._weights(cache.shape[-1])
    (kh, kw), (top, left) = self.kernel, self.anchor
    rows = jax.lax.dynamic_slice_in_dim(cache.astype(self.dtype), i + pad[0] - top, kh, axis=1)
    start = pad[1] - left
    rows = rows[:, :, start:start + width + kw - 1]  # [B, kh, W + kw - 1, Ci]
    y = jax.lax.conv_general_dilated(rows, kernel, (1, 1), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [B, 1, W, Co]
    return y[:, 0] + bias


def pad_cache(x: jax.Array, pad: Pad) -> jax.Array:
  """x [B, H, W, C] -> the cache layout [B, top + H, left + W + right, C] (zeros around)."""
  return jnp.pad(x, ((0, 0), (pad[0], 0), (pad[1], pad[2]), (0, 0)))


def write_pixel(cache: jax.Array, value: jax.Array, i: jax.Array, j: jax.Array, pad: Pad) -> jax.Array:
  """cache [B, Hp, Wp, C] with value [B, C] written at pixel (i, j)."""
  return jax.lax.dynamic_update_slice(cache, value[:, None, None].astype(cache.dtype),
                                      (0, i + pad[0], j + pad[1], 0))


def write_row(cache: jax.Array, value: jax.Array, i: jax.Array, pad: Pad) -> jax.Array:
  """cache [B, Hp, Wp, C] with value [B, W, C] written on row i."""
  return jax.lax.dynamic_update_slice(cache, value[:, None].astype(cache.dtype),
                                      (0, i + pad[0], pad[1], 0))
