"""Tests of the diffusion schedules and the forward process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion import schedules
from jaxgen.errors import JaxgenError

T = 1000
FIELDS = ('betas', 'alphas_cumprod', 'alphas_cumprod_prev', 'sqrt_alphas_cumprod',
          'sqrt_one_minus_alphas_cumprod', 'posterior_variance',
          'posterior_log_variance_clipped', 'posterior_mean_coef1', 'posterior_mean_coef2')


def _np(schedule, name):
  return np.asarray(getattr(schedule, name))


@pytest.mark.parametrize('make', [schedules.linear_schedule, schedules.cosine_schedule])
def test_fields_are_float32_arrays_of_length_t(make):
  schedule = make(37)
  assert schedule.num_timesteps == 37
  for name in FIELDS:
    value = getattr(schedule, name)
    assert value.shape == (37,), name
    assert value.dtype == jnp.float32, name
    assert np.all(np.isfinite(np.asarray(value))), name


def test_linear_betas_equal_linspace_and_cumprod():
  schedule = schedules.linear_schedule(T, beta_start=1e-4, beta_end=0.02)
  betas64 = np.linspace(1e-4, 0.02, T)
  np.testing.assert_array_equal(_np(schedule, 'betas'), betas64.astype(np.float32))
  abar64 = np.cumprod(1.0 - betas64)
  # Computed in float64 and rounded once, so equal to the float32 rounding.
  np.testing.assert_array_equal(_np(schedule, 'alphas_cumprod'), abar64.astype(np.float32))
  np.testing.assert_array_equal(_np(schedule, 'alphas_cumprod_prev'),
                                np.append(1.0, abar64[:-1]).astype(np.float32))
  np.testing.assert_allclose(_np(schedule, 'sqrt_alphas_cumprod'), np.sqrt(abar64), rtol=1e-6)
  np.testing.assert_allclose(_np(schedule, 'sqrt_one_minus_alphas_cumprod'),
                             np.sqrt(1.0 - abar64), rtol=1e-6)


def test_cosine_alpha_bar_matches_closed_form():
  s = 0.008
  schedule = schedules.cosine_schedule(T, s=s, max_beta=0.999)
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
  t = np.arange(T)
  closed = f((t + 1) / T) / f(0.0)
  abar = _np(schedule, 'alphas_cumprod').astype(np.float64)
  # Only the last beta (abar -> 0 at u = 1) is clipped by max_beta.
  np.testing.assert_allclose(abar[:-1], closed[:-1], rtol=0, atol=1e-6)
  betas = _np(schedule, 'betas')
  assert np.all(betas[:-1] < 0.999)
  assert betas[-1] == np.float32(0.999)
  np.testing.assert_allclose(betas[:-1], 1 - f((t[:-1] + 1) / T) / f(t[:-1] / T), rtol=1e-6)


def _cosine_betas64(num_timesteps, s=0.008, max_beta=0.999):
  abar = np.cos((np.arange(num_timesteps + 1) / num_timesteps + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1 - abar[1:] / abar[:-1], max_beta)


@pytest.mark.parametrize('make, betas64', [
    (schedules.linear_schedule, lambda n: np.linspace(1e-4, 0.02, n)),
    (schedules.cosine_schedule, _cosine_betas64),
])
def test_posterior_terms(make, betas64):
  schedule = make(T)
  # The float64 betas, not the stored float32 ones: 1 - beta at beta = 0.999
  # would lose 4 digits to the float32 rounding of beta.
  betas = betas64(T)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  variance = betas * (1 - abar_prev) / (1 - abar)
  got = _np(schedule, 'posterior_variance')
  assert got[0] == 0.0
  np.testing.assert_allclose(got, variance, rtol=2e-6)
  log_clipped = _np(schedule, 'posterior_log_variance_clipped')
  assert log_clipped[0] == log_clipped[1]
  np.testing.assert_allclose(log_clipped[1:], np.log(variance[1:]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(_np(schedule, 'posterior_mean_coef1'),
                             betas * np.sqrt(abar_prev) / (1 - abar), rtol=2e-6)
  np.testing.assert_allclose(_np(schedule, 'posterior_mean_coef2'),
                             (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar), rtol=2e-6)
  # At t = 0 the posterior mean is x0 itself.
  assert _np(schedule, 'posterior_mean_coef1')[0] == 1.0
  assert _np(schedule, 'posterior_mean_coef2')[0] == 0.0


def test_q_sample_marginal_statistics():
  schedule = schedules.linear_schedule(T)
  n = 20000
  x0 = jnp.array([1.0, -0.5, 0.3], jnp.float32)
  abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))
  for i, t in enumerate([0, 10, 250, 600, 999]):
    noise = jax.random.normal(jax.random.key(i), (n, 3))
    x_t = schedules.q_sample(schedule, jnp.broadcast_to(x0, (n, 3)),
                             jnp.full((n,), t, jnp.int32), noise)
    x_t = np.asarray(x_t, np.float64)
    mean, var = np.sqrt(abar[t]) * np.asarray(x0), 1.0 - abar[t]
    # 5 standard errors of the sample mean and of the sample variance.
    np.testing.assert_array_less(np.abs(x_t.mean(0) - mean), 5 * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(x_t.var(0, ddof=1) - var), 5 * var * np.sqrt(2 / (n - 1)))


def test_q_sample_broadcasts_per_example_timesteps_and_inverts():
  schedule = schedules.cosine_schedule(50)
  x0 = jax.random.uniform(jax.random.key(0), (4, 3, 3, 2), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.array([0, 7, 30, 49], jnp.int32)
  x_t = schedules.q_sample(schedule, x0, t, noise)
  for b in range(4):
    expected = (schedule.sqrt_alphas_cumprod[t[b]] * x0[b]
                + schedule.sqrt_one_minus_alphas_cumprod[t[b]] * noise[b])
    np.testing.assert_allclose(x_t[b], expected, rtol=1e-6, atol=1e-6)
  # Recovering x0 from the noisiest step divides by sqrt(abar) ~ 1e-2.
  np.testing.assert_allclose(schedules.predict_x0_from_eps(schedule, x_t, t, noise), x0, atol=1e-4)
  np.testing.assert_allclose(schedules.eps_from_x0(schedule, x_t, t, x0), noise, atol=1e-4)


def test_make_schedule_by_name():
  for name, make in [('linear', schedules.linear_schedule), ('cosine', schedules.cosine_schedule)]:
    a, b = schedules.make_schedule(name, 20), make(20)
    for field in FIELDS:
      np.testing.assert_array_equal(_np(a, field), _np(b, field))
  custom = schedules.make_schedule('linear', 20, beta_end=0.05)
  assert np.float32(custom.betas[-1]) == np.float32(0.05)


def test_unknown_schedule_name_raises():
  with pytest.raises(JaxgenError, match="'linear', 'cosine'"):
    schedules.make_schedule('quadratic', 100)


def test_schedule_is_a_pytree_usable_as_jit_argument():
  schedule = schedules.linear_schedule(16)
  assert len(jax.tree.leaves(schedule)) == len(FIELDS)

  @jax.jit
  def last_abar(s):
    return s.alphas_cumprod[s.num_timesteps - 1]

  assert last_abar(schedule) == schedule.alphas_cumprod[15]
