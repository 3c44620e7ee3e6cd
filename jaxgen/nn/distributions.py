"""Log-likelihoods and KL divergences shared by the families, all elementwise.

Images are float in [-1, 1]; 8-bit data sits on the 256 levels -1 + 2k/255.
Every function returns log-densities (or KLs) of the shape of its inputs: the
caller sums over the dimensions it wants.
"""

import jax
import jax.numpy as jnp

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
