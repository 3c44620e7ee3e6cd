"""Multi-head attention and the spatial transformer of latent diffusion (Rombach et al. 2022).

Shapes: B batch, N query positions, L context (key) positions, C query width,
D context width, K heads, E = C / K the width of one head; images NHWC.

`Attention` attends from x [B, N, C] to a context [B, L, D] (cross-attention)
or to x itself (self-attention), with an optional key padding mask [B, L]
(True: a real entry). `SpatialTransformer` is the block that latent-diffusion
UNets use in place of spatial self-attention: the image positions attend to
each other and to the conditioning sequence (a prompt's encoding, or a class
embedding as a sequence of one).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.blocks import default_init, group_norm, zeros_init
from jaxgen.nn.kernels import dot_product_attention

Dtype = Any


class Attention(nn.Module):
  """Multi-head scaled dot-product attention, via `jax.nn.dot_product_attention`.

  Call: x [B, N, C]; context [B, L, D] or None (self-attention: the context is
  x); mask bool [B, L] or None, False for padded context entries, which then get
  no weight (every row needs at least one True entry). Returns [B, N, C].
  attention: the kernel, 'auto', 'xla' or 'cudnn' (`jaxgen.nn.kernels`).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  out_init: Any = default_init
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    c = x.shape[-1]
    if c % self.num_heads:
      raise ValueError(f'width {c} must be divisible by num_heads={self.num_heads}.')
    heads = (self.num_heads, c // self.num_heads)
    context = x if context is None else context
    dense = lambda name: nn.DenseGeneral(heads, dtype=self.dtype, kernel_init=default_init, name=name)
    q = dense('query')(x)  # [B, N, K, E]
    k = dense('key')(context)  # [B, L, K, E]
    v = dense('value')(context)  # [B, L, K, E]
    if mask is not None:
      mask = mask[:, None, None, :]  # [B, 1 (heads), 1 (queries), L]
    h = dot_product_attention(q, k, v, mask=mask, implementation=self.attention)  # [B, N, K, E]
    return nn.DenseGeneral(c, axis=(-2, -1), dtype=self.dtype, kernel_init=self.out_init,
                           name='out')(h)  # [B, N, C]


class FeedForward(nn.Module):
  """The GEGLU feed-forward of the latent-diffusion transformer (Shazeer 2020).

  [B, N, C] -> [B, N, C] through a hidden width of `mult` * C: a * gelu(b).
  """
  mult: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    a, gate = jnp.split(nn.Dense(2 * self.mult * c, dtype=self.dtype, kernel_init=default_init,
                                 name='proj')(x), 2, axis=-1)  # each [B, N, mult C]
    return nn.Dense(c, dtype=self.dtype, kernel_init=default_init, name='out')(a * nn.gelu(gate))


class TransformerBlock(nn.Module):
  """Pre-LN: self-attention, cross-attention to the context, GEGLU feed-forward; each residual.

  Call: x [B, N, C], context [B, L, D] or None (then the cross-attention is a
  second self-attention), mask bool [B, L] or None. Returns [B, N, C].
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    ln = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)
    attn = lambda name: Attention(self.num_heads, self.dtype, attention=self.attention, name=name)
    x = x + attn('self_attn')(ln('norm1')(x))
    x = x + attn('cross_attn')(
        ln('norm2')(x), context, None if context is None else mask)
    return x + FeedForward(dtype=self.dtype, name='ff')(ln('norm3')(x))


class SpatialTransformer(nn.Module):
  """Rombach et al.'s spatial transformer: an image block that attends to a context.

  GroupNorm, a 1x1 projection in, `depth` TransformerBlocks over the H*W
  positions, a zero-initialised 1x1 projection out (so the block starts as the
  identity, like every residual branch of the UNet), and the residual.

  Call: x [B, H, W, C] (C divisible by 32 for the GroupNorm and by num_heads);
  context [B, L, D] or None; mask bool [B, L] or None. Returns [B, H, W, C].
  attention: the kernel of its attention layers (`jaxgen.nn.kernels`).
  """
  num_heads: int
  depth: int = 1
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None) -> jax.Array:
    b, hgt, wid, c = x.shape
    h = group_norm(self.dtype)(x)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=default_init, name='proj_in')(h)  # a 1x1 conv
    h = h.reshape(b, hgt * wid, c)  # [B, N = H W, C]
    for i in range(self.depth):
      h = TransformerBlock(self.num_heads, self.dtype, self.attention, name=f'block_{i}')(
          h, context, mask)
    h = h.reshape(b, hgt, wid, c)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=zeros_init, name='proj_out')(h)
    return x + h
