"""Tests of the pixel palettes that turn images into tokens (jaxgen.autoregressive.palette)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.autoregressive import palette
from jaxgen.errors import JaxgenError


def _brute_force(pixels, colours):
  """Nearest colour in float64: pixels [N, C], colours [K, C] -> [N]."""
  pixels, colours = np.asarray(pixels, np.float64), np.asarray(colours, np.float64)
  return np.argmin(((pixels[:, None, :] - colours[None]) ** 2).sum(-1), axis=-1)


# ---------------------------------------------------------------- gray_levels


def test_gray_levels_are_the_8bit_levels():
  levels = palette.gray_levels(256)
  assert levels.shape == (256, 1) and levels.dtype == jnp.float32
  k = np.arange(256)
  # Exactly the data pipeline's uint8 scaling, k / 127.5 - 1 in float32 ...
  pipeline = k.astype(np.uint8).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  np.testing.assert_array_equal(np.asarray(levels)[:, 0], pipeline)
  # ... which is -1 + 2k/255 to within one float32 rounding, with both ends exact.
  np.testing.assert_allclose(np.asarray(levels)[:, 0], -1 + 2 * k / 255, rtol=0, atol=6e-8)
  assert float(levels[0, 0]) == -1.0 and float(levels[-1, 0]) == 1.0 and float(levels[1, 0]) > -1


def test_gray_levels_small_cases_and_bad_input():
  np.testing.assert_array_equal(np.asarray(palette.gray_levels(2)), [[-1.0], [1.0]])
  np.testing.assert_array_equal(np.asarray(palette.gray_levels(3)), [[-1.0], [0.0], [1.0]])
  np.testing.assert_array_equal(np.asarray(palette.gray_levels(5))[:, 0], [-1, -0.5, 0, 0.5, 1])
  for bad in (1, 0, 2.5):
    with pytest.raises(JaxgenError, match='gray levels'):
      palette.gray_levels(bad)


# ---------------------------------------------------------------- to_tokens / from_tokens


def test_8bit_gray_images_tokenise_to_their_values():
  rng = np.random.default_rng(0)
  uint8 = rng.integers(0, 256, (3, 10, 9, 1)).astype(np.uint8)
  uint8.reshape(-1)[:256] = np.arange(256)  # every level at least once
  images = uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  levels = palette.gray_levels(256)
  tokens = palette.to_tokens(jnp.asarray(images), levels)
  assert tokens.shape == (3, 90) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(tokens), uint8.reshape(3, 90))  # raster order
  back = palette.from_tokens(tokens, levels, (10, 9))
  assert back.shape == (3, 10, 9, 1) and back.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(back), images)


def test_round_trip_on_images_made_of_palette_colours():
  rng = np.random.default_rng(1)
  colours = rng.uniform(-1, 1, (9, 3)).astype(np.float32)
  colours[8] = colours[7] + np.float32(1e-6)  # two nearly equal colours stay distinct
  tokens = rng.integers(0, 9, (2, 48 * 50)).astype(np.int32)  # 4800 pixels: two chunks
  images = palette.from_tokens(jnp.asarray(tokens), jnp.asarray(colours), (48, 50, 3))
  assert images.shape == (2, 48, 50, 3)
  np.testing.assert_array_equal(np.asarray(images), colours[tokens].reshape(2, 48, 50, 3))
  np.testing.assert_array_equal(np.asarray(palette.to_tokens(images, colours)), tokens)


def test_nearest_colour_by_hand():
  colours = np.array([[-1.0, -1.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
  pixel_rows = [
      # pixel, its nearest colour   # squared distances to colours 0, 1, 2
      ([-0.9, -0.8, -1.0], 0),  # 0.05, 5.25, 5.05
      ([0.6, 0.1, 0.0], 1),     # 4.77, 0.17, 1.17
      ([0.1, 0.6, 0.2], 2),     # 5.21, 1.21, 0.21
      ([0.5, 0.5, 0.0], 1),     # 5.5, 0.5, 0.5: a tie goes to the lower index
      ([0.0, 0.0, 0.0], 1),     # 3, 1, 1: a tie again
      ([-0.2, 0.3, -1.0], 2),   # 2.33, 2.53, 1.53
  ]
  pixels = np.array([p for p, _ in pixel_rows], np.float32).reshape(1, 2, 3, 3)
  tokens = palette.to_tokens(jnp.asarray(pixels), jnp.asarray(colours))
  np.testing.assert_array_equal(np.asarray(tokens), [[i for _, i in pixel_rows]])
  # A gray pixel half-way between two levels goes to the lower one.
  half = palette.to_tokens(jnp.full((1, 1, 1, 1), -0.5), palette.gray_levels(3))
  np.testing.assert_array_equal(np.asarray(half), [[0]])


def test_nearest_colour_matches_brute_force_over_chunks():
  rng = np.random.default_rng(2)
  colours = rng.uniform(-1, 1, (37, 3)).astype(np.float32)
  images = rng.uniform(-1, 1, (3, 40, 40, 3)).astype(np.float32)  # 4800 pixels, padded chunks
  tokens = palette.to_tokens(jnp.asarray(images), jnp.asarray(colours))
  np.testing.assert_array_equal(np.asarray(tokens).reshape(-1),
                                _brute_force(images.reshape(-1, 3), colours))


def test_tokens_bad_shapes_raise():
  colours = jnp.zeros((4, 3))
  with pytest.raises(JaxgenError, match='images must be'):
    palette.to_tokens(jnp.zeros((2, 4, 4, 1)), colours)
  with pytest.raises(JaxgenError, match='images must be'):
    palette.to_tokens(jnp.zeros((4, 4, 3)), colours)
  with pytest.raises(JaxgenError, match='tokens must be'):
    palette.from_tokens(jnp.zeros((2, 15), jnp.int32), colours, (4, 4))
  with pytest.raises(JaxgenError, match='image_shape'):
    palette.from_tokens(jnp.zeros((2, 16), jnp.int32), colours, (4, 4, 1))


# ---------------------------------------------------------------- kmeans


_CENTRES = np.array([[-0.7, -0.6, -0.8], [0.6, -0.5, 0.3], [0.1, 0.7, -0.4]], np.float32)


def _clusters():
  """Three well-separated RGB clusters of 40 pixels, each with its centre as exact mean."""
  rng = np.random.default_rng(3)
  offsets = rng.uniform(-0.05, 0.05, (20, 3))
  offsets = np.concatenate([offsets, -offsets])  # symmetric: the mean is 0 exactly
  pixels = np.concatenate([c + offsets for c in _CENTRES.astype(np.float64)])  # [120, 3]
  return rng.permutation(pixels).astype(np.float32)


def _sorted_rows(x):
  x = np.asarray(x)
  return x[np.lexsort(x.T[::-1])]


def test_kmeans_recovers_well_separated_clusters():
  pixels = _clusters()
  centres = palette.kmeans(jax.random.PRNGKey(0), jnp.asarray(pixels), 3, iters=5)
  assert centres.shape == (3, 3) and centres.dtype == jnp.float32
  # The fixed point is each cluster's mean, computed here in float64.
  labels = _brute_force(pixels, _CENTRES)
  means = np.stack([pixels[labels == i].astype(np.float64).mean(0) for i in range(3)])
  np.testing.assert_allclose(means, _CENTRES, atol=1e-6)
  np.testing.assert_allclose(_sorted_rows(centres), _sorted_rows(means), atol=1e-6)
  # Deterministic for a key; another key finds the same clusters, maybe in another order.
  again = palette.kmeans(jax.random.PRNGKey(0), jnp.asarray(pixels), 3, iters=5)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(centres))
  other = palette.kmeans(jax.random.PRNGKey(7), jnp.asarray(pixels), 3, iters=5)
  np.testing.assert_allclose(_sorted_rows(other), _sorted_rows(means), atol=1e-6)


def test_kmeans_seeds_are_distinct_pixels():
  pixels = _clusters()
  seeds = np.asarray(palette.kmeans(jax.random.PRNGKey(1), jnp.asarray(pixels), 6, iters=0))
  assert len({tuple(row) for row in seeds}) == 6
  assert all(any(np.array_equal(row, p) for p in pixels) for row in seeds)


def test_kmeans_with_k_equal_to_n_returns_the_pixels():
  pixels = np.array([[0.0], [0.25], [-0.5], [1.0], [0.9]], np.float32)
  centres = palette.kmeans(jax.random.PRNGKey(2), jnp.asarray(pixels), 5, iters=3)
  np.testing.assert_array_equal(np.sort(np.asarray(centres)[:, 0]), np.sort(pixels[:, 0]))


def test_kmeans_empty_cluster_keeps_its_centre():
  # Two colours and k = 3: the third seed repeats a colour (every pixel is already at
  # distance zero), no pixel picks it (ties go to the lower index), and it must stay put.
  a, b = [-0.5, 0.25, 1.0], [0.75, -1.0, 0.0]
  pixels = np.array([a] * 4 + [b] * 4, np.float32)
  key = jax.random.PRNGKey(3)
  seeds = np.asarray(palette.kmeans(key, jnp.asarray(pixels), 3, iters=0))
  assert len({tuple(row) for row in seeds}) == 2  # the case happens: a repeated seed
  centres = np.asarray(palette.kmeans(key, jnp.asarray(pixels), 3, iters=4))
  np.testing.assert_array_equal(centres, seeds)  # every centre is a mean or kept: no NaN, no 0
  assert {tuple(row) for row in centres} == {tuple(np.float32(a)), tuple(np.float32(b))}


def test_kmeans_gray_pixels_in_chunks():
  # One channel, more pixels than one chunk; two groups whose means are exact in float32.
  pixels = np.concatenate([np.full(3000, -0.5), np.full(2000, 0.5)]).astype(np.float32)[:, None]
  centres = palette.kmeans(jax.random.PRNGKey(4), jnp.asarray(pixels), 2, iters=2)
  np.testing.assert_array_equal(np.sort(np.asarray(centres)[:, 0]), [-0.5, 0.5])


def test_kmeans_bad_input_raises():
  pixels = jnp.zeros((4, 3))
  with pytest.raises(JaxgenError, match='k must be between 1 and the number of pixels'):
    palette.kmeans(jax.random.PRNGKey(0), pixels, 5)
  with pytest.raises(JaxgenError, match='k must be'):
    palette.kmeans(jax.random.PRNGKey(0), pixels, 0)
  with pytest.raises(JaxgenError, match='pixels must be'):
    palette.kmeans(jax.random.PRNGKey(0), jnp.zeros((2, 2, 3)), 2)
