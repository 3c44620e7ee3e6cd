"""The DDPM UNet (Ho et al. 2020), configurable, with optional class or text conditioning.

With `ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)`
on 32x32x3 images this is the 35.7M-parameter CIFAR-10 network of the paper.

With `context_dim > 0` it is the latent-diffusion UNet of Rombach et al. 2022:
its attention blocks become `SpatialTransformer`s that also attend to a
conditioning sequence, the output of a `TextEncoder` that the UNet owns (its
parameters are under 'text_encoder') for `conditioning='text'`, or a learned
embedding of the class label as a sequence of one for 'class'. With
`context_dim == 0` (the default) the network and its parameter tree are the
DDPM's, a class label (if any) added to the time embedding.
"""

import dataclasses
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.attention import SpatialTransformer
from jaxgen.nn.blocks import (CONV_OUTPUT, AttnBlock, Downsample, ResBlock, Upsample, default_init,
                               group_norm, zeros_init)
from jaxgen.nn.embeddings import timestep_embedding
from jaxgen.nn.kernels import IMPLEMENTATIONS as ATTENTION_KERNELS
from jaxgen.nn.text import TextEncoder

CONDITIONINGS = ('class', 'text')


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The `config.model` section of a diffusion experiment.

  Attributes:
    ch: base width.
    ch_mult: width multiplier per resolution; len(ch_mult) - 1 downsamplings.
    num_res_blocks: residual blocks per resolution on the way down (one more up).
    attn_resolutions: spatial sizes (H) at which self-attention follows each block.
    dropout: dropout rate inside residual blocks (training only).
    num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1
      are embedded, and label `num_classes` is the "no label" token that
      classifier-free guidance uses.
    dtype: computation dtype, 'float32' or 'bfloat16' (parameters stay float32).
    pad_to_fit: pad an input whose H or W is not divisible by 2**(len(ch_mult) - 1)
      with zeros (bottom and right) up to the next multiple, and crop the output
      back: for odd latent grids such as 7x7 (padded to 8x8; attn_resolutions
      then count the padded sizes, 8 and 4). False: such an input is an error.
    context_dim: 0 for no cross-attention (the DDPM). Otherwise the width D of
      the conditioning sequence [B, L, D] that every attention block (at
      attn_resolutions and in the middle) attends to, as a SpatialTransformer.
    num_heads: attention heads of the SpatialTransformers and the text encoder.
    transformer_depth: transformer blocks per SpatialTransformer.
    conditioning: with context_dim > 0, 'class' (y: labels int32 [B], the context
      a learned embedding of the label; needs num_classes) or 'text' (y: tokens
      int32 [B, L] from `jaxgen.nn.text.encode_text`, 0 = padding, an all-zero
      row the empty prompt; the context the UNet's own TextEncoder's output).
    text_width: width of the text encoder (0: context_dim); its output is
      projected to context_dim when they differ.
    text_layers: transformer layers of the text encoder.
    text_max_len: longest prompt in bytes (tokens).
    attention: the attention kernel, 'auto' (cuDNN's fused flash attention on
      NVIDIA GPUs with bfloat16 compute, XLA's elsewhere), 'xla' or 'cudnn'
      (`jaxgen.nn.kernels`).
    split_skip: hand each up-path block its input and skip connection as two
      arrays (`ResBlock`, `PartsDense`) instead of their concatenation, which
      XLA then never writes to memory. The same function and parameters either
      way; True is faster and lighter on GPUs (benchmarks/results/h200_speed.md).
    remat: recompute the normalisations and activations of every residual
      block in the backward pass, keeping only the convolution outputs
      (`jax.checkpoint`): less training memory for some extra time.
  """
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.1
  num_classes: int = 0
  dtype: str = 'float32'
  pad_to_fit: bool = False
  context_dim: int = 0
  num_heads: int = 4
  transformer_depth: int = 1
  conditioning: str = 'class'
  text_width: int = 0
  text_layers: int = 2
  text_max_len: int = 32
  attention: str = 'auto'
  split_skip: bool = True
  remat: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(self.ch_mult))
    object.__setattr__(self, 'attn_resolutions', tuple(self.attn_resolutions))
    if self.attention not in ATTENTION_KERNELS:
      raise ValueError(f'model.attention must be one of {ATTENTION_KERNELS}, got {self.attention!r}.')


class UNet(nn.Module):
  """Noise predictor eps(x_t, t[, y]).

  Call: x [B, H, W, C] float, t [B] int32 timesteps, y the conditioning or None
  (the null condition: class num_classes, or the empty prompt): labels int32
  [B] for a class model, tokens int32 [B, L] (L <= text_max_len) for a text
  model; train (bool, enables dropout; needs a 'dropout' rng). Returns
  [B, H, W, C] float32 (same channels as the input).
  """
  config: UNetConfig

  def _context(self, y: jax.Array | None, batch: int, dtype: Any
               ) -> tuple[jax.Array | None, jax.Array | None]:
    """The cross-attention context [B, L, context_dim] and its mask bool [B, L], or (None, None)."""
    cfg = self.config
    if not cfg.context_dim:
      return None, None
    if cfg.conditioning == 'text':
      if y is None:
        y = jnp.zeros((batch, 1), jnp.int32)  # the empty prompt
      width = cfg.text_width or cfg.context_dim
      context, mask = TextEncoder(width, cfg.text_layers, cfg.num_heads, cfg.text_max_len, dtype,
                                  name='text_encoder')(y)  # [B, 1 + L, width]
      if width != cfg.context_dim:
        context = nn.Dense(cfg.context_dim, dtype=dtype, kernel_init=default_init,
                           name='context_proj')(context)
      return context, mask
    if y is None:
      y = jnp.full((batch,), cfg.num_classes, jnp.int32)
    context = nn.Embed(cfg.num_classes + 1, cfg.context_dim, dtype=dtype,
                       name='label_context')(y)[:, None, :]  # [B, 1, D]
    return context, None

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    cfg = self.config
    dtype: Any = jnp.dtype(cfg.dtype)
    ch, n_levels = cfg.ch, len(cfg.ch_mult)
    size, factor = x.shape[1:3], 2 ** (n_levels - 1)
    if any(s % factor for s in size):
      if not cfg.pad_to_fit:
        raise ValueError(f'image size {size} must be divisible by 2**{n_levels - 1}; '
                         'or set model.pad_to_fit=True to pad it.')
      x = jnp.pad(x, ((0, 0), (0, -size[0] % factor), (0, -size[1] % factor), (0, 0)))

    emb = timestep_embedding(t, ch)  # [B, ch]
    emb = nn.Dense(4 * ch, dtype=dtype, kernel_init=default_init)(emb)
    emb = nn.Dense(4 * ch, dtype=dtype, kernel_init=default_init)(nn.silu(emb))  # [B, 4ch]
    context, mask = self._context(y, x.shape[0], dtype)  # [B, L, D], [B, L] or None
    if cfg.num_classes and context is None:
      if y is None:
        y = jnp.full(x.shape[:1], cfg.num_classes, jnp.int32)
      emb = emb + nn.Embed(cfg.num_classes + 1, 4 * ch, dtype=dtype, name='label_emb')(y)

    block = ResBlock
    if cfg.remat:
      # static_argnums counts self: `train` (argument 3) stays a Python bool.
      block = nn.remat(ResBlock, static_argnums=(3,),
                       policy=jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT))

    n_res = itertools.count()

    def res(h, out_ch, split_conv=False, in_shift=None):  # h: [B, H, W, C] or a tuple of them
      # Named as Flax names a plain ResBlock, so remat leaves the parameter tree unchanged.
      return block(out_ch, cfg.dropout, dtype, split_conv,
                   name=f'ResBlock_{next(n_res)}')(h, emb, train, in_shift)

    def attn(h):
      if context is None:
        return AttnBlock(dtype, cfg.attention)(h)
      return SpatialTransformer(cfg.num_heads, cfg.transformer_depth, dtype, cfg.attention)(
          h, context, mask)

    h = nn.Conv(ch, (3, 3), dtype=dtype, kernel_init=default_init, name='conv_in')(x.astype(dtype))
    hs = [h]
    for level, mult in enumerate(cfg.ch_mult):
      for _ in range(cfg.num_res_blocks):
        h = res(hs[-1], ch * mult)
        if h.shape[1] in cfg.attn_resolutions:
          h = attn(h)
        hs.append(h)
      if level != n_levels - 1:
        hs.append(Downsample(dtype)(hs[-1]))

    h = res(hs[-1], h.shape[-1])
    h = attn(h)
    h = res(h, h.shape[-1])

    up_bias = None  # [C]: the bias of the up-sampling before, not yet added to h
    for level, mult in reversed(list(enumerate(cfg.ch_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        skip = hs.pop()
        if cfg.split_skip:
          # The up-sampling's bias is added inside the block; where the block narrows the
          # channels, the up-sampled input is the widest activation alive, so its first
          # convolution is split over the parts (ResBlock.split_conv) to free it sooner.
          in_shift = None if up_bias is None else jnp.concatenate(
              [up_bias, jnp.zeros((skip.shape[-1],), up_bias.dtype)])  # [C_h + C_skip]
          h = res((h, skip), ch * mult, split_conv=h.shape[-1] > ch * mult, in_shift=in_shift)
          up_bias = None
        else:
          h = res(jnp.concatenate([h, skip], axis=-1), ch * mult)
        if h.shape[1] in cfg.attn_resolutions:
          h = attn(h)
      if level != 0:
        if cfg.split_skip:
          h, up_bias = Upsample(dtype, bias_apart=True)(h)
        else:
          h = Upsample(dtype)(h)
    assert not hs

    h = group_norm(dtype, silu=True)(h)
    h = nn.Conv(x.shape[-1], (3, 3), dtype=dtype, kernel_init=zeros_init, name='conv_out')(h)
    return h[:, :size[0], :size[1]].astype(jnp.float32)
