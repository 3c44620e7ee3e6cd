"""Dropout whose mask is a keyed hash of each element's position.

`flax.linen.Dropout` draws the mask with `jax.random.bernoulli`: random bits
for every element, written to device memory, compared, and the mask kept for
the backward pass. On a GPU those are memory passes of their own (about 1 ms
of a 57 ms DDPM CIFAR-10 training step at batch 512 on an H200, with XLA's
Philox bits; benchmarks/results/h200_speed.md). Here element i is kept or
dropped by a function of i and a 64-bit per-call seed, two rounds of an integer hash
(Wellons' "lowbias32" finaliser, keyed): a handful of integer operations
that XLA fuses into the pass that produces the activation and recomputes in
the backward pass, so no bits and no mask are ever written.

The same Bernoulli(1 - rate) keep mask and 1 / (1 - rate) scaling as
`flax.linen.Dropout` (keep probability exact to 2**-32); a different stream
of masks for the same key. The mask depends on the seed and the global
element index only, so a sharded array gets the same mask whatever the mesh.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _lowbias32(h: jax.Array) -> jax.Array:
  """A 32-bit integer hash with good avalanche (uint32 in, uint32 out, elementwise)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def keep_mask(shape: tuple[int, ...], seed: jax.Array, rate: float) -> jax.Array:
  """bool `shape`: True with probability 1 - rate, independently per element.

  seed: uint32 [2] (from `jax.random.bits`). Element i (row-major) keeps iff
  hash(hash(i ^ seed[0]) + seed[1]) >= rate * 2**32.
  """
  size = int(np.prod(shape))
  if size >= 2 ** 32:
    raise ValueError(f'dropout indexes elements with 32 bits; an array of {size} elements is too '
                     'large, split it.')
  index = jax.lax.iota(jnp.uint32, size).reshape(shape)
  h = _lowbias32(_lowbias32(index ^ seed[0]) + seed[1])
  threshold = jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
  return h >= threshold


def dropout(x: jax.Array, rate: float, seed: jax.Array) -> jax.Array:
  """x with each element zeroed with probability `rate`, the rest scaled by 1 / (1 - rate)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout rate must be in [0, 1), got {rate}.')
  if rate == 0.0:
    return x
  keep = keep_mask(x.shape, seed, rate)
  return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
  """Dropout with rate `rate` of any [...] array (identity when `deterministic`).

  Draws its 64-bit seed from the 'dropout' rng collection, as
  `flax.linen.Dropout` does.
  """
  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    seed = jax.random.bits(self.make_rng('dropout'), (2,), jnp.uint32)
    return dropout(x, self.rate, seed)

