"""PixelCNN (van den Oord et al. 2016a) and the gated PixelCNN (van den Oord et al. 2016b).

Both map an image [B, H, W, C] (float, the model's input scale) to logits
[B, H, W, C, K]: a K-way distribution per sub-pixel (K = 256 for 8-bit images,
K = 1 for a Bernoulli logit on binarized images), where the logits of
sub-pixel (i, j, c) depend only on the pixels before (i, j) in raster order and
on channels < c of pixel (i, j) (R, then G given R, then B given R and G).
Features carry the channel group f % C through every layer (jaxgen.nn.masked_conv).

Each network is evaluated three ways with one set of parameters:
- `__call__(x, label)`: every position at once (training, likelihood, the naive sampler);
- `init_cache`, `start_row`, `at_pixel`: the cached sampler's steps, which compute
  each layer at the new pixel only (and, for the gated network's vertical
  stack, once per row), reading earlier positions from per-layer caches, in
  the spirit of Fast PixelCNN++ (Ramachandran et al. 2017). The caches hold
  each layer's input padded by `pad` (masked_conv.Pad); `cache['image']` is the
  image being drawn, written by the sampler.

Shapes: B batch, H W C image, F features, K values per sub-pixel.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn import masked_conv
from jaxgen.nn.masked_conv import WindowConv

Dtype = Any
Cache = dict[str, Any]


def _to_logits(h: jax.Array, channels: int, values: int) -> jax.Array:
  """Output features [..., K * C] (feature f in channel group f % C) -> logits [..., C, K] float32."""
  h = h.reshape(*h.shape[:-1], values, channels)
  return jnp.swapaxes(h, -1, -2).astype(jnp.float32)


class _Head(nn.Module):
  """relu -> 1x1 (mask B) -> relu -> 1x1 (mask B) to K * C logits, applied pointwise."""
  in_features: int
  hidden: int
  channels: int
  values: int
  dtype: Dtype

  def setup(self):
    self.fc1 = WindowConv(self.in_features, self.hidden, (1, 1), (0, 0), 'B', self.channels, self.dtype)
    self.fc2 = WindowConv(self.hidden, self.values * self.channels, (1, 1), (0, 0), 'B', self.channels,
                          self.dtype)

  def __call__(self, h: jax.Array) -> jax.Array:
    """h [..., F] -> logits [..., C, K]."""
    shape = h.shape
    h = h.reshape(-1, 1, 1, shape[-1])
    out = self.fc2(nn.relu(self.fc1(nn.relu(h))))
    return _to_logits(out.reshape(*shape[:-1], -1), self.channels, self.values)


class _ClassBias(nn.Module):
  """A learned bias per class and layer: label [B] -> [B, num_layers, F] (zeros without classes)."""
  num_classes: int
  num_layers: int
  features: int

  @nn.compact
  def __call__(self, label: jax.Array | None, batch: int) -> jax.Array:
    if not self.num_classes:
      return jnp.zeros((batch, self.num_layers, self.features), jnp.float32)
    if label is None:
      raise ValueError('this PixelCNN is class-conditional: pass label')
    table = self.param('embedding', nn.initializers.zeros,
                       (self.num_classes, self.num_layers, self.features), jnp.float32)
    return table[label]


class PixelCNN(nn.Module):
  """The masked PixelCNN: a k x k mask-A conv, residual 3 x 3 mask-B convs, a 1 x 1 head.

  Masked k x k kernels are stored as their (k//2 + 1) x k upper part: the rows
  below the anchor would be masked to zero anyway.
  """
  channels: int  # C
  values: int  # K: 256 (8-bit softmax) or 1 (Bernoulli logit)
  features: int = 64  # F, a multiple of C
  num_layers: int = 7  # residual mask-B layers after the first
  first_kernel: int = 7
  kernel: int = 3
  head: int = 256  # width of the 1 x 1 head
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @property
  def pad(self) -> masked_conv.Pad:
    k = max(self.first_kernel, self.kernel) // 2
    return (k, k, k)

  def setup(self):
    k0, k = self.first_kernel, self.kernel
    self.first = WindowConv(self.channels, self.features, (k0 // 2 + 1, k0), (k0 // 2, k0 // 2), 'A',
                            self.channels, self.dtype)
    self.convs = [WindowConv(self.features, self.features, (k // 2 + 1, k), (k // 2, k // 2), 'B',
                             self.channels, self.dtype) for _ in range(self.num_layers)]
    self.out = _Head(self.features, self.head, self.channels, self.values, self.dtype)
    self.cond = _ClassBias(self.num_classes, self.num_layers + 1, self.features)

  def __call__(self, x: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """x [B, H, W, C] -> logits [B, H, W, C, K]."""
    bias = self.cond(label, x.shape[0])[:, :, None, None].astype(self.dtype)  # [B, L+1, 1, 1, F]
    h = self.first(x) + bias[:, 0]
    for layer, conv in enumerate(self.convs):
      h = h + conv(nn.relu(h)) + bias[:, layer + 1]
    return self.out(h)

  def init_cache(self, batch: int, height: int, width: int) -> Cache:
    """Zero caches: the image and the input of every residual conv, [B, Hp, Wp, C or F]."""
    top, left, right = self.pad
    shape = (batch, top + height, left + width + right)
    return {'image': jnp.zeros((*shape, self.channels), jnp.float32),
            'hidden': [jnp.zeros((*shape, self.features), self.dtype) for _ in range(self.num_layers)]}

  def start_row(self, cache: Cache, i: jax.Array, label: jax.Array | None = None) -> Cache:
    """Nothing to do once per row: every layer is computed pixel by pixel."""
    return cache

  def at_pixel(self, cache: Cache, i: jax.Array, j: jax.Array,
               label: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """Every layer at pixel (i, j) from the caches: (logits [B, C, K], caches with (i, j) written).

    Pixels before (i, j) and channels of (i, j) already drawn must be in
    cache['image']; group c of the result is then exact for every c up to the
    first channel not yet drawn.
    """
    pad = self.pad
    batch = cache['image'].shape[0]
    bias = self.cond(label, batch).astype(self.dtype)  # [B, L+1, F]
    h = self.first.at(cache['image'], i, j, pad) + bias[:, 0]  # [B, F]
    hidden = list(cache['hidden'])
    for layer, conv in enumerate(self.convs):
      hidden[layer] = masked_conv.write_pixel(hidden[layer], nn.relu(h), i, j, pad)
      h = h + conv.at(hidden[layer], i, j, pad) + bias[:, layer + 1]
    return self.out(h), dict(cache, hidden=hidden)


def _gate(h: jax.Array) -> jax.Array:
  """tanh(a) * sigmoid(b) over the two halves of the features; groups (f % C) stay aligned
  because F is a multiple of C."""
  a, b = jnp.split(h, 2, axis=-1)
  return jnp.tanh(a) * nn.sigmoid(b)


def _shift_down(v: jax.Array) -> jax.Array:
  """[B, H, W, F]: row i gets row i - 1, row 0 zeros."""
  return jnp.pad(v, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


class GatedPixelCNN(nn.Module):
  """The gated PixelCNN: vertical and horizontal stacks with no blind spot, gated units.

  Vertical stack: (k//2 + 1) x k windows over the rows up to the current one,
  whose output reaches the horizontal stack shifted down by one row (so it
  only carries rows above). Horizontal stack: 1 x (k//2 + 1) windows over the
  current row up to the current pixel (mask A in the first layer, B after),
  plus a 1 x 1 link from the vertical stack; residual 1 x 1 outputs. Classes
  enter as a learned bias on every gate (the paper's h).
  """
  channels: int
  values: int
  features: int = 64  # F, a multiple of C; the gates see 2F
  num_layers: int = 15  # gated layers, the first included
  kernel: int = 7  # first layer
  kernel_rest: int = 3
  head: int = 256
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @property
  def pad(self) -> masked_conv.Pad:
    k = max(self.kernel, self.kernel_rest) // 2
    return (k, k, k)

  def setup(self):
    f2, groups = 2 * self.features, self.channels
    ks = [self.kernel] + [self.kernel_rest] * (self.num_layers - 1)
    fin = lambda n: self.channels if n == 0 else self.features  # noqa: E731 (the image feeds layer 0)
    self.vconv = [WindowConv(fin(n), f2, (k // 2 + 1, k), (k // 2, k // 2), None, groups, self.dtype)
                  for n, k in enumerate(ks)]
    self.hconv = [WindowConv(fin(n), f2, (1, k // 2 + 1), (0, k // 2), 'A' if n == 0 else 'B', groups,
                             self.dtype) for n, k in enumerate(ks)]
    self.link = [WindowConv(f2, f2, (1, 1), (0, 0), None, groups, self.dtype) for _ in ks]
    self.res = [WindowConv(self.features, self.features, (1, 1), (0, 0), 'B', groups, self.dtype)
                for _ in ks[1:]]
    self.out = _Head(self.features, self.head, self.channels, self.values, self.dtype)
    self.cond = _ClassBias(self.num_classes, self.num_layers, f2)

  def __call__(self, x: jax.Array, label: jax.Array | None = None) -> jax.Array:
    """x [B, H, W, C] -> logits [B, H, W, C, K]."""
    bias = self.cond(label, x.shape[0])[:, :, None, None].astype(self.dtype)  # [B, L, 1, 1, 2F]
    v = h = x
    for n in range(self.num_layers):
      v_pre = self.vconv[n](v)  # [B, H, W, 2F], rows <= i
      h_pre = self.hconv[n](h) + self.link[n](_shift_down(v_pre))
      v = _gate(v_pre + bias[:, n])
      gated = _gate(h_pre + bias[:, n])
      h = gated if n == 0 else h + self.res[n - 1](gated)
    return self.out(h)

  def init_cache(self, batch: int, height: int, width: int) -> Cache:
    """Zero caches: the image; each layer's vertical and horizontal inputs [B, Hp, Wp, F] (layer 0
    reads the image); each layer's vertical pre-activation on the row above, [B, W, 2F]."""
    top, left, right = self.pad
    shape = (batch, top + height, left + width + right)
    zeros = lambda f: jnp.zeros((*shape, f), self.dtype)
    return {'image': jnp.zeros((*shape, self.channels), jnp.float32),
            'v': [zeros(self.features) for _ in range(self.num_layers - 1)],
            'h': [zeros(self.features) for _ in range(self.num_layers - 1)],
            'v_above': [jnp.zeros((batch, width, 2 * self.features), self.dtype)
                        for _ in range(self.num_layers)]}

  def start_row(self, cache: Cache, i: jax.Array, label: jax.Array | None = None) -> Cache:
    """The vertical stack on row i - 1 (complete once row i starts), every layer: fills `v_above`
    (zeros on row 0, as the shift down gives) and the vertical caches of row i - 1."""
    pad, width = self.pad, cache['v_above'][0].shape[1]
    batch = cache['image'].shape[0]
    bias = self.cond(label, batch)[:, :, None].astype(self.dtype)  # [B, L, 1, 2F]
    above = jnp.maximum(i - 1, 0)
    v_caches, v_above = list(cache['v']), []
    v_in = cache['image']
    for n in range(self.num_layers):
      v_pre = self.vconv[n].row(v_in, above, width, pad)  # [B, W, 2F]
      v_above.append(jnp.where(i > 0, v_pre, 0.0).astype(self.dtype))
      if n + 1 < self.num_layers:
        v_caches[n] = masked_conv.write_row(v_caches[n], _gate(v_pre + bias[:, n]), above, pad)
        v_in = v_caches[n]
    return dict(cache, v=v_caches, v_above=v_above)

  def at_pixel(self, cache: Cache, i: jax.Array, j: jax.Array,
               label: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """The horizontal stack at pixel (i, j) (after `start_row(i)`): (logits [B, C, K], caches)."""
    pad = self.pad
    batch = cache['image'].shape[0]
    bias = self.cond(label, batch).astype(self.dtype)  # [B, L, 2F]
    h_caches = list(cache['h'])
    h_in, h = cache['image'], None
    for n in range(self.num_layers):
      above = jax.lax.dynamic_index_in_dim(cache['v_above'][n], j, axis=1, keepdims=False)  # [B, 2F]
      h_pre = self.hconv[n].at(h_in, i, j, pad) + self.link[n](above[:, None, None])[:, 0, 0]
      gated = _gate(h_pre + bias[:, n])
      h = gated if n == 0 else h + self.res[n - 1](gated[:, None, None])[:, 0, 0]
      if n + 1 < self.num_layers:
        h_caches[n] = masked_conv.write_pixel(h_caches[n], h, i, j, pad)
        h_in = h_caches[n]
    return self.out(h), dict(cache, h=h_caches)
