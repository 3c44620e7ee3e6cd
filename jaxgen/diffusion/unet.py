"""The DDPM UNet (Ho et al. 2020), configurable, with optional class conditioning.

With `ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)`
on 32x32x3 images this is the 35.7M-parameter CIFAR-10 network of the paper.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.nn.blocks import AttnBlock, Downsample, ResBlock, Upsample, default_init, group_norm, zeros_init
from jaxgen.nn.embeddings import timestep_embedding


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
  """
  ch: int = 128
  ch_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (16,)
  dropout: float = 0.1
  num_classes: int = 0
  dtype: str = 'float32'

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(self.ch_mult))
    object.__setattr__(self, 'attn_resolutions', tuple(self.attn_resolutions))


class UNet(nn.Module):
  """Noise predictor eps(x_t, t[, y]).

  Call: x [B, H, W, C] float, t [B] int32 timesteps, y [B] int32 labels or None,
  train (bool, enables dropout; needs a 'dropout' rng). Returns [B, H, W, C]
  float32 (same channels as the input).
  """
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    cfg = self.config
    dtype: Any = jnp.dtype(cfg.dtype)
    ch, n_levels = cfg.ch, len(cfg.ch_mult)
    if any(s % 2 ** (n_levels - 1) for s in x.shape[1:3]):
      raise ValueError(f'image size {x.shape[1:3]} must be divisible by 2**{n_levels - 1}.')

    emb = timestep_embedding(t, ch)  # [B, ch]
    emb = nn.Dense(4 * ch, dtype=dtype, kernel_init=default_init)(emb)
    emb = nn.Dense(4 * ch, dtype=dtype, kernel_init=default_init)(nn.silu(emb))  # [B, 4ch]
    if cfg.num_classes:
      if y is None:
        y = jnp.full(x.shape[:1], cfg.num_classes, jnp.int32)
      emb = emb + nn.Embed(cfg.num_classes + 1, 4 * ch, dtype=dtype, name='label_emb')(y)

    def res(h, out_ch):
      return ResBlock(out_ch, cfg.dropout, dtype)(h, emb, train=train)

    h = nn.Conv(ch, (3, 3), dtype=dtype, kernel_init=default_init, name='conv_in')(x.astype(dtype))
    hs = [h]
    for level, mult in enumerate(cfg.ch_mult):
      for _ in range(cfg.num_res_blocks):
        h = res(hs[-1], ch * mult)
        if h.shape[1] in cfg.attn_resolutions:
          h = AttnBlock(dtype)(h)
        hs.append(h)
      if level != n_levels - 1:
        hs.append(Downsample(dtype)(hs[-1]))

    h = res(hs[-1], h.shape[-1])
    h = AttnBlock(dtype)(h)
    h = res(h, h.shape[-1])

    for level, mult in reversed(list(enumerate(cfg.ch_mult))):
      for _ in range(cfg.num_res_blocks + 1):
        h = res(jnp.concatenate([h, hs.pop()], axis=-1), ch * mult)
        if h.shape[1] in cfg.attn_resolutions:
          h = AttnBlock(dtype)(h)
      if level != 0:
        h = Upsample(dtype)(h)
    assert not hs

    h = nn.silu(group_norm(dtype)(h))
    h = nn.Conv(x.shape[-1], (3, 3), dtype=dtype, kernel_init=zeros_init, name='conv_out')(h)
    return h.astype(jnp.float32)
