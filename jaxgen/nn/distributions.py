"""Log-likelihoods and KL divergences shared by the families, and the mixture sampler.

Images are float in [-1, 1]; 8-bit data sits on the 256 levels -1 + 2k/255.
The elementwise functions return log-densities (or KLs) of the shape of their
inputs: the caller sums over the dimensions it wants. The discretized logistic
mixture (PixelCNN++) is per pixel: it couples the channels, so it takes
[..., C] pixels and returns [...].
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import JaxgenError

_HALF_BIN = 1.0 / 255.0  # half the width of one 8-bit level on [-1, 1]


def gaussian_kl_standard(mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """KL(N(mean, exp(log_var)) || N(0, 1)) per element, in closed form:
  0.5 * (mean^2 + exp(log_var) - 1 - log_var)."""
  return 0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var)


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """log N(x; mean, exp(log_var)) per element."""
  return -0.5 * (jnp.log(2 * jnp.pi) + log_var + jnp.square(x - mean) * jnp.exp(-log_var))


def bernoulli_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
  """log Bernoulli(x; sigmoid(logits)) per element, x in {0, 1}; stable for large |logits|."""
  return x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)


def discretized_logistic_log_prob(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log P(x) of 8-bit data x in [-1, 1] under a logistic(mean, exp(log_scale)) discretised to 256 bins.

  Bin k covers [x - 1/255, x + 1/255]; the edge bins take the whole tails
  (x = -1 gets (-inf, -1 + 1/255], x = 1 gets [1 - 1/255, inf)), so the 256
  probabilities sum to 1. As in PixelCNN++ (Salimans et al. 2017), a bin whose
  probability underflows falls back to the density at its centre times the bin
  width.
  """
  centered = x - mean
  inv_scale = jnp.exp(-log_scale)
  plus = inv_scale * (centered + _HALF_BIN)
  minus = inv_scale * (centered - _HALF_BIN)
  log_cdf_plus = jax.nn.log_sigmoid(plus)  # log sigmoid(plus), for the bin at -1
  log_one_minus_cdf_minus = -jax.nn.softplus(minus)  # log(1 - sigmoid(minus)), for the bin at 1
  cdf_delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
  mid = inv_scale * centered
  log_pdf_mid = mid - log_scale - 2.0 * jax.nn.softplus(mid)  # log density at the bin centre
  log_mid = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)),
                      log_pdf_mid + jnp.log(2 * _HALF_BIN))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_minus, log_mid))


# ---------------------------------------------------------------- discretized logistic mixture
#
# PixelCNN++ (Salimans et al. 2017) models a pixel x [C] of 8-bit data as a mixture of M
# components; in component k the channels are discretized logistics whose means are coupled
# linearly to the earlier channels of the same pixel:
#
#     mean_c(k) = mu[c, k] + sum_{c' < c} tanh(coeff[(c, c'), k]) * x_c'
#
# (for C = 3: g += a * r, b += b1 * r + b2 * g). Shape letters: C channels, M components,
# P = C (C - 1) / 2 coupling coefficients, one per pair c' < c in the order
# (1, 0), (2, 0), (2, 1), (3, 0), ... (for RGB: (g, r), (b, r), (b, g)).
#
# The parameter vector of a pixel, [M (1 + 2C + P)]:
#     [0, M)                    mixture logits                       [M]
#     [M, M + CM)               means, channel-major                 [C, M]
#     [M + CM, M + 2CM)         log-scales (clamped below at -7)     [C, M]
#     [M + 2CM, M (1 + 2C + P)) raw coefficients (through tanh)      [P, M]

MIN_LOG_SCALE = -7.0  # the PixelCNN++ floor of a component's log-scale
# The 256 levels -1 + 2k/255, each correctly rounded to float32 (float32 arithmetic, where XLA
# turns the division into a product by 1/255, can be an ulp off).
_LEVELS = np.asarray(-1.0 + 2.0 * np.arange(256) / 255.0, np.float32)


def logistic_mixture_num_params(num_channels: int, num_mixtures: int) -> int:
  """The length of a pixel's parameter vector, M * (1 + 2C + C (C - 1) / 2)."""
  if num_channels < 1 or num_mixtures < 1:
    raise JaxgenError(f'a logistic mixture needs num_channels >= 1 and num_mixtures >= 1, '
                      f'got {num_channels} and {num_mixtures}.')
  return num_mixtures * (1 + 2 * num_channels + num_channels * (num_channels - 1) // 2)


def _coeff_index(c: int, c_prev: int) -> int:
  """The row of the coefficient of channel c_prev in the mean of channel c (c_prev < c)."""
  return c * (c - 1) // 2 + c_prev


def _split_mixture_params(params: jax.Array, num_channels: int, num_mixtures: int
                          ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """params [..., M (1 + 2C + P)] -> logits [..., M], means [..., C, M],
  log_scales [..., C, M] (clamped at -7), coeffs [..., P, M] (after tanh)."""
  c, m = num_channels, num_mixtures
  want = logistic_mixture_num_params(c, m)
  if params.shape[-1] != want:
    raise JaxgenError(f'a mixture of {m} logistics over {c} channels takes {want} parameters per '
                      f'pixel (M * (1 + 2C + C(C-1)/2)), got a last axis of {params.shape[-1]}.')
  lead = params.shape[:-1]
  logits = params[..., :m]  # [..., M]
  means = params[..., m:m + c * m].reshape(*lead, c, m)  # [..., C, M]
  log_scales = jnp.maximum(params[..., m + c * m:m + 2 * c * m].reshape(*lead, c, m),
                           MIN_LOG_SCALE)  # [..., C, M]
  coeffs = jnp.tanh(params[..., m + 2 * c * m:].reshape(*lead, c * (c - 1) // 2, m))  # [..., P, M]
  return logits, means, log_scales, coeffs


def discretized_logistic_mixture_log_prob(x: jax.Array, params: jax.Array,
                                          num_mixtures: int) -> jax.Array:
  """log P(x) of whole 8-bit pixels under the PixelCNN++ discretized logistic mixture.

  Args:
    x: [..., C] data in [-1, 1] on the levels -1 + 2k/255; C = x.shape[-1] >= 1.
    params: [..., M (1 + 2C + C(C-1)/2)], laid out as in the comment above; its leading
      axes broadcast against those of x.
    num_mixtures: M.

  Returns:
    [...] (the broadcast leading shape): log sum_k softmax(logits)_k prod_c P_k(x_c | x_<c),
    each P_k a `discretized_logistic_log_prob` term (the edge levels take the tails), so that
    the probabilities of the 256^C pixels sum to 1.
  """
  num_channels = x.shape[-1]
  lead = jnp.broadcast_shapes(x.shape[:-1], params.shape[:-1])
  params = jnp.broadcast_to(params, (*lead, params.shape[-1]))
  logits, means, log_scales, coeffs = _split_mixture_params(params, num_channels, num_mixtures)
  # Components first, [M, ...]: the elementwise work then runs along the pixels, which XLA's
  # CPU backend vectorises several times better than a minor axis of M.
  first = lambda a: jnp.moveaxis(a, -1, 0)
  log_probs = first(jax.nn.log_softmax(logits, axis=-1))  # [M, ...]
  for c in range(num_channels):
    mean = first(means[..., c, :])  # [M, ...]
    for c_prev in range(c):
      mean = mean + first(coeffs[..., _coeff_index(c, c_prev), :]) * x[..., c_prev]
    log_probs = log_probs + discretized_logistic_log_prob(x[..., c], mean,
                                                          first(log_scales[..., c, :]))
  return jax.nn.logsumexp(log_probs, axis=0)


def sample_discretized_logistic_mixture(rng: jax.Array, params: jax.Array, num_channels: int,
                                        num_mixtures: int) -> jax.Array:
  """Draws 8-bit pixels from the PixelCNN++ discretized logistic mixture.

  One component per pixel (categorical on the logits), then the channels in order: channel c
  is mean_c + s_c * logistic noise, the mean coupled to the channels already drawn (their
  8-bit values, which are what `discretized_logistic_mixture_log_prob` conditions on), clipped
  to [-1, 1] and rounded to the nearest level -1 + 2k/255. Rounding the clipped draw gives
  level k exactly the probability of its bin (the tails for the edge levels), so the draws
  follow the log-prob's distribution. Deterministic given rng; jit-able.

  Args:
    rng: a PRNG key.
    params: [..., M (1 + 2C + C(C-1)/2)].
    num_channels: C.
    num_mixtures: M.

  Returns:
    [..., C] float32 on the 256 levels, each the correctly rounded -1 + 2k/255.
  """
  params = jnp.asarray(params, jnp.float32)
  logits, means, log_scales, coeffs = _split_mixture_params(params, num_channels, num_mixtures)
  rng_component, rng_noise = jax.random.split(rng)
  component = jax.random.categorical(rng_component, logits, axis=-1)  # [...]
  one_hot = jax.nn.one_hot(component, num_mixtures, dtype=jnp.float32)[..., None, :]  # [..., 1, M]
  pick = lambda a: jnp.sum(a * one_hot, axis=-1)  # [..., K, M] -> [..., K]
  means, scales, coeffs = pick(means), jnp.exp(pick(log_scales)), pick(coeffs)
  noise = jax.random.logistic(rng_noise, means.shape, jnp.float32)  # [..., C]
  channels = []
  for c in range(num_channels):
    value = means[..., c] + scales[..., c] * noise[..., c]
    for c_prev in range(c):
      value = value + coeffs[..., _coeff_index(c, c_prev)] * channels[c_prev]
    level = jnp.round((jnp.clip(value, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.int32)  # k in [0, 255]
    channels.append(jnp.asarray(_LEVELS)[level])
  return jnp.stack(channels, axis=-1)
