"""The variational bound on a DDPM's negative log-likelihood (Ho et al. 2020, eq. 5).

    -log p(x0) <= L_T + sum_{t>=1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x0) || N(0, I))
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),   x_t ~ q(x_t | x0)
    L_0     = -log p(x0 | x_1), a Gaussian discretised to the 256 levels of 8-bit data

All terms are in nats per image, summed over pixels. Because the decoder
L_0 gives the probability of the 8-bit value itself, the bound is on the
discrete NLL: bits/dim is `nll / (H*W*C * ln 2)` with no further correction.
The whole bound is one `lax.scan` over the T timesteps (T network evaluations).
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, ndtr

from jaxgen.diffusion import samplers
from jaxgen.diffusion.schedules import Schedule, predict_x0_from_eps, q_posterior_mean, q_sample

# Half the spacing between the 256 levels k/127.5 - 1 of data in [-1, 1].
HALF_BIN = 1.0 / 255.0


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
  """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats (broadcasting)."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """Elementwise log P(x) of a Gaussian integrated over x's 8-bit bin.

  x: data at the levels k/127.5 - 1, k = 0..255. The end bins extend to -inf
  and +inf, so the 256 probabilities sum to one. Tails use `log_ndtr`.
  """
  inv_std = jnp.exp(-log_scale)
  upper = inv_std * (x - mean + HALF_BIN)
  lower = inv_std * (x - mean - HALF_BIN)
  log_cdf_upper = log_ndtr(upper)  # log P(X <= upper edge)
  log_sf_lower = log_ndtr(-lower)  # log P(X >= lower edge)
  middle = jnp.log(jnp.maximum(ndtr(upper) - ndtr(lower), 1e-30))
  return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, middle))


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """L_T per image [B]: KL(q(x_T | x0) || N(0, I)), summed over pixels."""
  t_last = schedule.num_timesteps - 1
  mean = schedule.sqrt_alphas_cumprod[t_last] * x0
  logvar = 2.0 * jnp.log(schedule.sqrt_one_minus_alphas_cumprod[t_last])
  kl = normal_kl(mean, logvar, 0.0, 0.0)
  return kl.reshape(x0.shape[0], -1).sum(-1)


def vlb_terms(eps_fn: samplers.EpsFn, schedule: Schedule, x0: jax.Array, rng: jax.Array, *,
              variance: str = 'fixedlarge', clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
  """(terms [T, B], prior [B]) in nats: terms[t] is L_{t-1} for t >= 1 and L_0 for t = 0.

  x0: [B, H, W, C] at the 8-bit levels in [-1, 1]. The noise of timestep t is
  drawn from fold_in(rng, t). `variance` is the reverse process's
  ('fixedlarge' | 'fixedsmall'), as for the DDPM sampler; with `clip_x0` the
  decoder's x0 prediction is clipped to the data range, which keeps the
  bound valid (any decoder gives a bound) and tightens it.
  """
  batch = x0.shape[0]

  def term(_, t):
    t_b = jnp.full((batch,), t, jnp.int32)
    x_t = q_sample(schedule, x0, t_b, jax.random.normal(jax.random.fold_in(rng, t), x0.shape))
    x0_pred = predict_x0_from_eps(schedule, x_t, t_b, eps_fn(x_t, t_b))
    if clip_x0:
      x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
    mean_p = q_posterior_mean(schedule, x0_pred, x_t, t_b)
    logvar_p = samplers.ddpm_log_variance(schedule, t, variance)
    kl = normal_kl(q_posterior_mean(schedule, x0, x_t, t_b),
                   schedule.posterior_log_variance_clipped[t], mean_p, logvar_p)
    nll0 = -discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * logvar_p)
    per_pixel = jnp.where(t == 0, nll0, kl)
    return None, per_pixel.reshape(batch, -1).sum(-1)  # [B]

  _, terms = jax.lax.scan(term, None, jnp.arange(schedule.num_timesteps))
  return terms, prior_kl(schedule, x0)


def nll_bound(eps_fn: samplers.EpsFn, schedule: Schedule, x0: jax.Array, rng: jax.Array,
              **kwargs) -> jax.Array:
  """The variational bound on -log p(x0) per image [B], in nats (see `vlb_terms`)."""
  terms, prior = vlb_terms(eps_fn, schedule, x0, rng, **kwargs)
  return terms.sum(0) + prior
