"""Pixel palettes that turn images into token sequences and back (ImageGPT's colour clusters).

A palette is a float32 array [K, C] of K colours in the image space [-1, 1]:
either the evenly spaced gray levels (`gray_levels`, 256 of them are the 8-bit
levels, so 8-bit gray images tokenise losslessly) or colour clusters fitted to
the pixels of a data set (`kmeans`, ImageGPT's 512 colours). `to_tokens` maps
each pixel of [B, H, W, C] images to the index of its nearest palette colour
(squared Euclidean distance), in raster order, giving int32 [B, H*W];
`from_tokens` is its inverse on images made of palette colours.

Distances are computed as sum_c (x_c - p_c)^2, not with the expansion
|x|^2 - 2 x.p + |p|^2: with C <= 4 channels the cost is the same, and a pixel
equal to a palette colour is at distance exactly zero, so the round trip is
exact however close two palette colours are. Pixels go through in chunks
(`jax.lax.map`), so the [N, K] distance matrix never exists whole.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import JaxgenError

_CHUNK = 4096  # pixels per chunk of the distance computation: [chunk, K] floats at a time


def gray_levels(levels: int) -> jax.Array:
  """`levels` gray values evenly spaced on [-1, 1], as a palette.

  Returns float32 [levels, 1]: k / ((levels - 1) / 2) - 1, k = 0 .. levels-1,
  computed in float32 as the data pipeline scales uint8 data (k / 127.5 - 1
  for 256 levels, the 8-bit levels -1 + 2k/255), with -1 and 1 exact.
  """
  if not isinstance(levels, (int, np.integer)) or levels < 2:
    raise JaxgenError(f'the number of gray levels must be an integer >= 2, got {levels!r}.')
  k = np.arange(levels, dtype=np.float32)
  values = k / np.float32((levels - 1) / 2) - np.float32(1.0)  # [levels]
  return jnp.asarray(values[:, None])  # [levels, 1]


def _squared_distances(pixels: jax.Array, palette: jax.Array) -> jax.Array:
  """pixels [n, C], palette [K, C] -> [n, K], sum_c (x_c - p_c)^2.

  Written as a sum of C [n, K] terms: XLA on CPU runs that several times
  faster than a reduction over a trailing axis of 1 or 3.
  """
  terms = [jnp.square(pixels[:, i, None] - palette[None, :, i]) for i in range(pixels.shape[1])]
  return functools.reduce(jnp.add, terms)  # [n, K]


def _nearest_chunk(pixels: jax.Array, palette: jax.Array) -> jax.Array:
  """pixels [n, C], palette [K, C] -> int32 [n], the first nearest colour."""
  return jnp.argmin(_squared_distances(pixels, palette), axis=-1).astype(jnp.int32)


def _pad_to_chunks(pixels: jax.Array, chunk: int) -> tuple[jax.Array, int]:
  """pixels [N, C] -> ([N / chunk (rounded up), chunk, C] zero-padded, chunk)."""
  n = pixels.shape[0]
  chunk = max(1, min(chunk, n))
  num_chunks = -(-n // chunk)
  padded = jnp.pad(pixels, ((0, num_chunks * chunk - n), (0, 0)))
  return padded.reshape(num_chunks, chunk, pixels.shape[1]), chunk


def _nearest(pixels: jax.Array, palette: jax.Array, chunk: int = _CHUNK) -> jax.Array:
  """pixels [N, C], palette [K, C] -> int32 [N], chunk by chunk."""
  n = pixels.shape[0]
  chunks, _ = _pad_to_chunks(pixels, chunk)  # [M, chunk, C]
  indices = jax.lax.map(lambda x: _nearest_chunk(x, palette), chunks)  # [M, chunk]
  return indices.reshape(-1)[:n]


def _check_palette(palette: jax.Array) -> None:
  if palette.ndim != 2 or palette.shape[0] < 1:
    raise JaxgenError(f'the palette must be [K, C] with K >= 1, got shape {tuple(palette.shape)}.')


def to_tokens(images: jax.Array, palette: jax.Array) -> jax.Array:
  """The index of the nearest palette colour of every pixel, in raster order.

  Args:
    images: [B, H, W, C] in [-1, 1].
    palette: [K, C].

  Returns:
    int32 [B, H*W]; token h * W + w is pixel (h, w). Ties go to the lower index.
  """
  palette = jnp.asarray(palette, jnp.float32)
  _check_palette(palette)
  if images.ndim != 4 or images.shape[-1] != palette.shape[1]:
    raise JaxgenError(f'images must be [B, H, W, {palette.shape[1]}] to match the palette, '
                      f'got shape {tuple(images.shape)}.')
  b, h, w, c = images.shape
  pixels = jnp.asarray(images, jnp.float32).reshape(b * h * w, c)  # [N, C]
  return _nearest(pixels, palette).reshape(b, h * w)


def from_tokens(tokens: jax.Array, palette: jax.Array,
                image_shape: tuple[int, ...]) -> jax.Array:
  """Images from palette indices, the inverse of `to_tokens`.

  Args:
    tokens: int [B, H*W] in [0, K), raster order.
    palette: [K, C].
    image_shape: (H, W) or (H, W, C) with C the palette's.

  Returns:
    [B, H, W, C] of the palette's dtype.
  """
  palette = jnp.asarray(palette)
  _check_palette(palette)
  k, c = palette.shape
  if len(image_shape) not in (2, 3) or (len(image_shape) == 3 and image_shape[2] != c):
    raise JaxgenError(f'image_shape must be (H, W) or (H, W, {c}) for this palette, '
                      f'got {tuple(image_shape)}.')
  h, w = image_shape[:2]
  if tokens.ndim != 2 or tokens.shape[1] != h * w:
    raise JaxgenError(f'tokens must be [B, {h * w}] for images of {h}x{w}, '
                      f'got shape {tuple(tokens.shape)}.')
  pixels = jnp.take(palette, tokens.astype(jnp.int32), axis=0)  # [B, H*W, C]
  return pixels.reshape(tokens.shape[0], h, w, c)


def _kmeans_plus_plus(rng: jax.Array, pixels: jax.Array, k: int) -> jax.Array:
  """k-means++ seeding (Arthur and Vassilvitskii 2007): pixels [N, C] -> centres [k, C].

  The first centre is a uniform draw, each next one a pixel drawn with
  probability proportional to its squared distance to the nearest centre so
  far: k distinct pixels, and distinct colours where the data has k of them.
  """
  n = pixels.shape[0]
  first_rng, rng = jax.random.split(rng)
  first = pixels[jax.random.randint(first_rng, (), 0, n)]  # [C]
  centres = jnp.zeros((k, pixels.shape[1]), jnp.float32).at[0].set(first)
  nearest = _squared_distances(pixels, first[None])[:, 0]  # [N], squared distance to the centres

  def body(i, carry):
    centres, nearest, rng = carry
    rng, draw_rng = jax.random.split(rng)
    cumulative = jnp.cumsum(nearest)  # [N]
    r = jax.random.uniform(draw_rng, (), jnp.float32) * cumulative[-1]
    index = jnp.clip(jnp.searchsorted(cumulative, r, side='right'), 0, n - 1)
    # Rounding can land on a pixel already at distance zero; take the farthest one then.
    index = jnp.where(nearest[index] > 0, index, jnp.argmax(nearest))
    centre = pixels[index]  # [C]
    centres = centres.at[i].set(centre)
    nearest = jnp.minimum(nearest, _squared_distances(pixels, centre[None])[:, 0])
    return centres, nearest, rng

  centres, _, _ = jax.lax.fori_loop(1, k, body, (centres, nearest, rng))
  return centres


@functools.partial(jax.jit, static_argnames=('k', 'iters', 'chunk'))
def _kmeans(rng: jax.Array, pixels: jax.Array, k: int, iters: int, chunk: int) -> jax.Array:
  """Lloyd's algorithm from k-means++ seeds; see `kmeans`."""
  n, c = pixels.shape
  chunks, chunk = _pad_to_chunks(pixels, chunk)  # [M, chunk, C]
  valid = (jnp.arange(chunks.shape[0] * chunk) < n).astype(jnp.float32)
  valid = valid.reshape(chunks.shape[0], chunk)  # [M, chunk], 0 on the padding

  def step(_, centres):
    def accumulate(totals, xs):
      x, weight = xs  # [chunk, C], [chunk]
      assign = _nearest_chunk(x, centres)  # [chunk]
      sums = jax.ops.segment_sum(x * weight[:, None], assign, num_segments=k)  # [k, C]
      counts = jax.ops.segment_sum(weight, assign, num_segments=k)  # [k]
      return (totals[0] + sums, totals[1] + counts), None

    zeros = (jnp.zeros((k, c), jnp.float32), jnp.zeros((k,), jnp.float32))
    (sums, counts), _ = jax.lax.scan(accumulate, zeros, (chunks, valid))
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, means, centres)  # an empty cluster keeps its centre

  centres = _kmeans_plus_plus(rng, pixels, k)
  return jax.lax.fori_loop(0, iters, step, centres)


def kmeans(rng: jax.Array, pixels: jax.Array, k: int, iters: int = 20) -> jax.Array:
  """A palette of k colours fitted to pixels by k-means (Lloyd's algorithm).

  Seeded with k distinct pixels drawn by k-means++ with `rng`, then `iters`
  rounds of: assign every pixel to its nearest centre, move every centre to
  the mean of its pixels (a centre with no pixels stays where it is). One
  jit-compiled program, deterministic for a given rng; the assignment runs
  in chunks of 4096 pixels, so 1e6 pixels and k = 512 need a few tens of MB
  beside the pixels themselves.

  Args:
    rng: a PRNG key.
    pixels: [N, C], e.g. the pixels of a data set, reshaped.
    k: the number of colours, at most N.
    iters: Lloyd iterations.

  Returns:
    float32 [k, C] centres.
  """
  pixels = jnp.asarray(pixels, jnp.float32)
  if pixels.ndim != 2:
    raise JaxgenError(f'pixels must be [N, C] (reshape the images), '
                      f'got shape {tuple(pixels.shape)}.')
  if not 1 <= k <= pixels.shape[0]:
    raise JaxgenError(f'k must be between 1 and the number of pixels ({pixels.shape[0]}), got {k}.')
  if iters < 0:
    raise JaxgenError(f'iters must be >= 0, got {iters}.')
  return _kmeans(rng, pixels, k=int(k), iters=int(iters), chunk=_CHUNK)


def dataset_palette(dataset: str, k: int, *, num_pixels: int = 1_000_000, iters: int = 20,
                    seed: int = 0, batch: int = 1000) -> np.ndarray:
  """k-means colours [k, C] of `num_pixels` pixels drawn uniformly (with `seed`) from the train
  split of `dataset` (a name `jaxgen.data` knows): what `jaxgen palette` writes."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxgen import data as data_lib  # pylint: disable=g-import-not-at-top (TFDS, grain)
  config = ml_collections.ConfigDict(dict(name=dataset, random_flip=False))
  spec = data_lib.dataset_spec(config)
  rng = np.random.default_rng(seed)
  chunks = []
  per_image = max(1, -(-num_pixels // spec.num_train_examples))  # pixels kept from each image
  for b in data_lib.eval_batches(config, batch_size=batch, split='train', process_index=0,
                                 process_count=1):
    images = b['image'][b['mask']].reshape(-1, spec.image_shape[0] * spec.image_shape[1],
                                          spec.image_shape[2])  # [b, H*W, C]
    idx = rng.integers(0, images.shape[1], (len(images), per_image))
    chunks.append(np.take_along_axis(images, idx[..., None], axis=1).reshape(-1, spec.image_shape[2]))
  pixels = np.concatenate(chunks)
  pixels = pixels[rng.permutation(len(pixels))[:num_pixels]]
  return np.asarray(kmeans(jax.random.PRNGKey(seed), pixels, k, iters))
