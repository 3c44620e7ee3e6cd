"""Autoregressive samplers, each one compiled `lax.scan` over positions.

Two ways to draw the same images (same key, same images):
- naive: at every position, the whole network on the whole image (or
  sequence) drawn so far, keeping the output at that position;
- cached: only what the new position needs. Conv networks keep every
  layer's activations in caches (pixelcnn.py: `start_row`, `at_pixel`); the
  transformer keeps each layer's keys and values (a KV cache).

The value at position p is drawn with `fold_in(rng, p)` in both, p counting
sub-pixels in raster order (pixel (i, j), channel c: p = (i W + j) C + c) for
per-sub-pixel models, pixels for PixelCNN++ (all channels of a pixel at
once) and tokens for the transformer.

Shapes: B batch, H W C image, K values per sub-pixel, T sequence, V vocabulary.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxgen.nn import masked_conv

# (rng, logits [B, ...]) -> values [B]: the categorical draw shared by every sampler.
Draw = Callable[[jax.Array, jax.Array], jax.Array]


def draw_categorical(rng: jax.Array, logits: jax.Array, temperature: float = 1.0) -> jax.Array:
  """One value per row of logits [B, K] (K = 1: a Bernoulli logit, giving 0 or 1): int32 [B]."""
  if logits.shape[-1] == 1:
    logits = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
  return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)


def conv_naive(logits_fn: Callable[[jax.Array], jax.Array], to_input: Callable[[jax.Array], jax.Array],
               rng: jax.Array, shape: tuple[int, int, int, int], temperature: float = 1.0) -> jax.Array:
  """Sub-pixel by sub-pixel with the whole network each time.

  logits_fn: network input [B, H, W, C] -> logits [B, H, W, C, K].
  to_input: drawn values int32 -> the network's input scale (float).
  Returns the drawn values int32 [B, H, W, C].
  """
  b, h, w, c = shape

  def step(values, p):
    i, j, ch = p // (w * c), (p // c) % w, p % c
    logits = logits_fn(to_input(values))  # [B, H, W, C, K]
    new = draw_categorical(jax.random.fold_in(rng, p), logits[:, i, j, ch], temperature)  # [B]
    return values.at[:, i, j, ch].set(new), None

  values, _ = jax.lax.scan(step, jnp.zeros(shape, jnp.int32), jnp.arange(h * w * c))
  return values


def conv_cached(net_apply: Callable[..., Any], cache: Any, pad: masked_conv.Pad,
                to_input: Callable[[jax.Array], jax.Array], rng: jax.Array,
                shape: tuple[int, int, int, int], temperature: float = 1.0) -> jax.Array:
  """Row by row, pixel by pixel, channel by channel, computing each layer at the new pixel only.

  net_apply(method, *args): the network's `start_row(cache, i)` and
  `at_pixel(cache, i, j) -> (logits [B, C, K], cache)` with its parameters (and label) bound.
  cache: the network's `init_cache`. Returns the drawn values int32 [B, H, W, C].
  """
  b, h, w, c = shape

  def pixel(cache, i, j):
    drawn = jnp.zeros((b, c), jnp.int32)
    for ch in range(c):  # channels in order: group ch is exact once channels < ch are written
      logits, cache = net_apply('at_pixel', cache, i, j)
      new = draw_categorical(jax.random.fold_in(rng, (i * w + j) * c + ch), logits[:, ch], temperature)
      drawn = drawn.at[:, ch].set(new)
      written = jnp.where(jnp.arange(c) <= ch, to_input(drawn), 0.0)
      cache = dict(cache, image=masked_conv.write_pixel(cache['image'], written, i, j, pad))
    return cache, drawn

  def row(cache, i):
    cache = net_apply('start_row', cache, i)
    cache, drawn = jax.lax.scan(lambda cache, j: pixel(cache, i, j), cache, jnp.arange(w))
    return cache, drawn  # drawn: [W, B, C]

  _, values = jax.lax.scan(row, cache, jnp.arange(h))  # [H, W, B, C]
  return jnp.transpose(values, (2, 0, 1, 3))


def mixture_naive(params_fn: Callable[[jax.Array], jax.Array],
                  draw: Callable[[jax.Array, jax.Array], jax.Array],
                  rng: jax.Array, shape: tuple[int, int, int, int]) -> jax.Array:
  """Pixel by pixel (all channels at once) with the whole network each time (PixelCNN++).

  params_fn: image [B, H, W, C] in [-1, 1] -> mixture parameters [B, H, W, P].
  draw: (rng, parameters [B, P]) -> pixel values [B, C] in [-1, 1].
  Returns the image float32 [B, H, W, C].
  """
  b, h, w, c = shape

  def step(image, p):
    i, j = p // w, p % w
    out = params_fn(image)[:, i, j]  # [B, P]
    return image.at[:, i, j].set(draw(jax.random.fold_in(rng, p), out)), None

  image, _ = jax.lax.scan(step, jnp.zeros(shape, jnp.float32), jnp.arange(h * w))
  return image


def sequence_naive(logits_fn: Callable[[jax.Array], jax.Array], rng: jax.Array, batch: int,
                   length: int, temperature: float = 1.0) -> jax.Array:
  """Token by token with the whole transformer each time: logits_fn(tokens [B, T]) -> [B, T, V].
  Returns tokens int32 [B, T]."""

  def step(tokens, t):
    logits = logits_fn(tokens)[:, t]  # [B, V]
    return tokens.at[:, t].set(draw_categorical(jax.random.fold_in(rng, t), logits, temperature)), None

  tokens, _ = jax.lax.scan(step, jnp.zeros((batch, length), jnp.int32), jnp.arange(length))
  return tokens


def sequence_cached(decode_fn: Callable[..., Any], cache: Any, rng: jax.Array, batch: int,
                    length: int, temperature: float = 1.0) -> jax.Array:
  """Token by token with a KV cache: decode_fn(prev_token [B], t, cache) -> (logits [B, V], cache).
  Returns tokens int32 [B, T]."""

  def step(carry, t):
    prev, cache = carry
    logits, cache = decode_fn(prev, t, cache)
    token = draw_categorical(jax.random.fold_in(rng, t), logits, temperature)
    return (token, cache), token

  _, tokens = jax.lax.scan(step, (jnp.zeros((batch,), jnp.int32), cache), jnp.arange(length))
  return tokens.T
