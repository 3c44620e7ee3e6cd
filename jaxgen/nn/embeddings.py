"""Embeddings of scalars and labels shared by the model families."""

import math

import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (possibly fractional) timesteps, as in Ho et al. 2020.

  Args:
    t: [B] timesteps (int or float).
    dim: embedding width (even).
    max_period: the longest wavelength.

  Returns:
    [B, dim] float32: `concat([sin(t * f), cos(t * f)])` with frequencies
    f_i = max_period ** (-i / (dim / 2 - 1)), i = 0 .. dim/2 - 1 (the DDPM
    reference code's spacing; diffusers' `freq_shift=1, flip_sin_to_cos=False`).
  """
  if dim % 2:
    raise ValueError(f'timestep embedding width must be even, got {dim}.')
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # [B, dim]
