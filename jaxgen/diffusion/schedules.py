"""Noise schedules of the discrete-time diffusion process (Ho et al. 2020).

A `Schedule` is plain data: float32 arrays of length T, computed once in
float64 numpy and indexed by timestep inside compiled code. Timesteps are
0-based: t = 0 is the least noisy step and t = T - 1 the noisiest, so that
`alphas_cumprod[t]` is abar_{t+1} in the paper's 1-based notation.

The forward process is q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) and
the posterior is q(x_{t-1} | x_t, x_0) = N(coef1_t x_0 + coef2_t x_t, beta~_t I).
"""

import math
from typing import Any

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import JaxgenError

SCHEDULE_NAMES = ('linear', 'cosine')


@struct.dataclass
class Schedule:
  """Per-timestep coefficients of the diffusion process; every field is float32 [T].

  Attributes:
    betas: beta_t in (0, 1), the variance added at step t.
    alphas_cumprod: abar_t = prod_{s <= t} (1 - beta_s), in (0, 1), decreasing.
    alphas_cumprod_prev: abar_{t-1}, with abar_{-1} = 1.0 prepended.
    sqrt_alphas_cumprod: sqrt(abar_t), the signal scale of x_t.
    sqrt_one_minus_alphas_cumprod: sqrt(1 - abar_t), the noise scale of x_t.
    posterior_variance: beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t); 0 at t = 0.
    posterior_log_variance_clipped: log beta~_t with the t = 0 entry (log 0)
      replaced by the t = 1 entry, as in Ho et al.'s code.
    posterior_mean_coef1: coefficient of x_0 in the posterior mean,
      beta_t sqrt(abar_{t-1}) / (1 - abar_t).
    posterior_mean_coef2: coefficient of x_t in the posterior mean,
      (1 - abar_{t-1}) sqrt(1 - beta_t) / (1 - abar_t).
  """
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @property
  def num_timesteps(self) -> int:
    """T, read from the array shape (static even when the arrays are traced)."""
    return self.betas.shape[0]


def schedule_from_betas(betas: np.ndarray) -> Schedule:
  """Builds every coefficient from betas [T] (values in (0, 1)).

  All arithmetic is float64 and only the results are rounded to float32:
  1 - abar_t and the posterior terms lose most of their digits near t = 0 if
  computed in float32.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise JaxgenError(f'A schedule needs at least 2 timesteps, got betas of shape {betas.shape}.')
  if not np.all((betas > 0) & (betas < 1)):
    raise JaxgenError('Every beta of a schedule must lie strictly between 0 and 1.')
  alphas = 1.0 - betas
  alphas_cumprod = np.cumprod(alphas)
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  # beta~_0 = 0, so its log is -inf; Ho et al. clip it to the t = 1 value (the
  # t = 0 step adds no noise anyway).
  posterior_log_variance_clipped = np.log(
      np.append(posterior_variance[1], posterior_variance[1:]))
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  return Schedule(
      betas=f32(betas),
      alphas_cumprod=f32(alphas_cumprod),
      alphas_cumprod_prev=f32(alphas_cumprod_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(alphas_cumprod)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - alphas_cumprod)),
      posterior_variance=f32(posterior_variance),
      posterior_log_variance_clipped=f32(posterior_log_variance_clipped),
      posterior_mean_coef1=f32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
      posterior_mean_coef2=f32(
          (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
  )


def linear_schedule(num_timesteps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> Schedule:
  """Ho et al.'s schedule: betas = linspace(beta_start, beta_end, T) (float64)."""
  return schedule_from_betas(np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64))


def cosine_alpha_bar(u: np.ndarray, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal's closed form cos^2((u + s) / (1 + s) * pi / 2), u = t / T in [0, 1]."""
  return np.cos((np.asarray(u, dtype=np.float64) + s) / (1.0 + s) * math.pi / 2) ** 2


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008,
                    max_beta: float = 0.999) -> Schedule:
  """Nichol & Dhariwal 2021: beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta).

  Before clipping, alphas_cumprod[t] = abar((t + 1) / T) / abar(0) exactly;
  max_beta keeps the last steps (where abar -> 0) from being singular.
  """
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps  # [T + 1]
  abar = cosine_alpha_bar(u, s)
  betas = np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)
  return schedule_from_betas(betas)


def make_schedule(name: str, num_timesteps: int, **kwargs: Any) -> Schedule:
  """The schedule called `name` ('linear' or 'cosine') with T = num_timesteps.

  Extra keyword arguments go to the schedule's constructor (e.g. beta_end, s).
  """
  if name == 'linear':
    return linear_schedule(num_timesteps, **kwargs)
  if name == 'cosine':
    return cosine_schedule(num_timesteps, **kwargs)
  raise JaxgenError(
      f"Unknown noise schedule {name!r}; use one of {', '.join(map(repr, SCHEDULE_NAMES))}.")


def _extract(coef: jax.Array, t: jax.Array, x_shape: tuple[int, ...]) -> jax.Array:
  """coef[t] shaped to broadcast against x.

  t is int32 [B] (giving [B, 1, ..., 1]) or a scalar (giving [1, ..., 1]), so
  the same helper serves batched training timesteps and a sampler's single step.
  """
  c = coef[t]
  return c.reshape(c.shape + (1,) * (len(x_shape) - c.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Sample of q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise.

  Args:
    schedule: the diffusion schedule (T timesteps).
    x0: [B, ...] clean data (images in [-1, 1]).
    t: int32 [B] timesteps in [0, T).
    noise: [B, ...] standard normal, same shape as x0.

  Returns:
    x_t, [B, ...].
  """
  return (_extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0
          + _extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array,
                        eps: jax.Array) -> jax.Array:
  """Inverts q_sample for x0: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t).

  x_t, eps: [B, ...]; t: int32 [B] or a scalar in [0, T). Returns [B, ...] (unclipped).
  """
  return ((x_t - _extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * eps)
          / _extract(schedule.sqrt_alphas_cumprod, t, x_t.shape))


def eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  """Inverts q_sample for the noise: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t).

  x_t, x0: [B, ...]; t: int32 [B] or a scalar in [0, T). Returns [B, ...].
  """
  return ((x_t - _extract(schedule.sqrt_alphas_cumprod, t, x_t.shape) * x0)
          / _extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape))


def q_posterior_mean(schedule: Schedule, x0: jax.Array, x_t: jax.Array,
                     t: jax.Array) -> jax.Array:
  """Mean of q(x_{t-1} | x_t, x_0): coef1_t x0 + coef2_t x_t.

  x0, x_t: [B, ...]; t: int32 [B] or a scalar in [0, T). Returns [B, ...].
  """
  return (_extract(schedule.posterior_mean_coef1, t, x_t.shape) * x0
          + _extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
