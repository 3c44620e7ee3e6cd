"""Tests of the DDPM and DDIM samplers.

The exact tests use Gaussian data x0 ~ N(mu, s^2) per dimension, whose optimal
noise predictor has the closed form
  eps*(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t).
With clip_x0=False every sampler step is then affine in x plus Gaussian noise,
so the output is Gaussian with a mean and variance that float64 numpy
propagates exactly (m <- A m + b, v <- A^2 v + sigma^2) from x_T ~ N(0, 1).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion import samplers
from jaxgen.diffusion.schedules import linear_schedule
from jaxgen.errors import JaxgenError

T = 1000
SCHEDULE = linear_schedule(T)
# One (mean, std) per dimension of a [2, 2, 1] "image"; small stds are the
# hardest case for coarse DDIM steps.
MU = np.array([0.0, 0.4, -0.3, 0.7])
STD = np.array([1.0, 0.5, 0.3, 0.2])
IMAGE_SHAPE = (2, 2, 1)
NUM_SAMPLES = 4096


def gaussian_eps_fn(schedule, mu, var):
  """The exact eps predictor of N(mu, var) data; mu, var broadcast against [B, H, W, C]."""
  def eps_fn(x_t, t):
    abar = schedule.alphas_cumprod[t][:, None, None, None]  # [B, 1, 1, 1]
    return jnp.sqrt(1 - abar) * (x_t - jnp.sqrt(abar) * mu) / (abar * var + 1 - abar)
  return eps_fn


def _params():
  return {'mu': jnp.asarray(MU.reshape(IMAGE_SHAPE), jnp.float32),
          'var': jnp.asarray((STD ** 2).reshape(IMAGE_SHAPE), jnp.float32)}


GAUSS_EPS = gaussian_eps_fn(SCHEDULE, **_params())


def crude_eps_fn(x_t, t):
  """A nonlinear stand-in for a network whose x0 predictions leave [-1, 1]."""
  return 0.9 * jnp.tanh(x_t) + 0.3 * (t[:, None, None, None] / T)


# Reference maths in float64, independent of the float32 Schedule.
_BETAS = np.linspace(1e-4, 0.02, T)
_ABAR = np.cumprod(1 - _BETAS)
_ABAR_PREV = np.append(1.0, _ABAR[:-1])


def _ddpm_updates(variance):
  """(abar_t, p, q, r, sigma^2) per step: x_prev = p x0(x) + q eps(x) + r x + sigma z."""
  posterior_variance = _BETAS * (1 - _ABAR_PREV) / (1 - _ABAR)
  for t in range(T - 1, -1, -1):
    coef1 = _BETAS[t] * np.sqrt(_ABAR_PREV[t]) / (1 - _ABAR[t])
    coef2 = (1 - _ABAR_PREV[t]) * np.sqrt(1 - _BETAS[t]) / (1 - _ABAR[t])
    var = _BETAS[t] if variance == 'fixedlarge' else posterior_variance[t]
    yield _ABAR[t], coef1, 0.0, coef2, 0.0 if t == 0 else var


def _ddim_updates(num_steps, eta):
  timesteps, prev_timesteps = samplers.ddim_timesteps(T, num_steps)
  for t, t_prev in zip(timesteps, prev_timesteps):
    a, a_prev = _ABAR[t], (_ABAR[t_prev] if t_prev >= 0 else 1.0)
    sigma2 = eta ** 2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    yield a, np.sqrt(a_prev), np.sqrt(1 - a_prev - sigma2), 0.0, sigma2


def _propagate(updates):
  """Exact mean and variance [4] of the sampler output for the Gaussian data."""
  var_data = STD ** 2
  m, v = np.zeros_like(MU), np.ones_like(MU)
  for a, p, q, r, sigma2 in updates:
    eps_slope = np.sqrt(1 - a) / (a * var_data + 1 - a)
    eps_icpt = -eps_slope * np.sqrt(a) * MU
    x0_slope = (1 - np.sqrt(1 - a) * eps_slope) / np.sqrt(a)
    x0_icpt = -np.sqrt(1 - a) * eps_icpt / np.sqrt(a)
    slope = p * x0_slope + q * eps_slope + r
    m = slope * m + p * x0_icpt + q * eps_icpt
    v = slope ** 2 * v + sigma2
  return m, v


# (sampler kwargs, reference updates, tolerance on |mean - mu|, on |std / s - 1|).
# Measured deviations of the exact propagation (max over the 4 dimensions):
#   ddpm fixedlarge   mean 4.0e-6  std 0.46%      ddpm fixedsmall  mean 4.0e-6  std 1.85%
#   ddim 1000 eta 0   mean 1.3e-3  std 0.75%      ddim 1000 eta 1  mean 4.0e-6  std 1.85%
#   ddim 100 eta 0    mean 1.2e-3  std 6.2%       ddim 100 eta 1   mean 4.0e-6  std 12.7%
# and the tolerances leave about 1.5-2.5x room. The std errors grow as s
# shrinks (worst at s = 0.2); DDIM with eta = 0 cannot contract the mismatch
# between x_T ~ N(0, 1) and q(x_{T-1}) = N(0.0064 mu, ...), hence its 1e-3 in
# the mean; 100 steps add discretisation error.
EXACT_CASES = {
    'ddpm_fixedlarge': (dict(sampler='ddpm', variance='fixedlarge'),
                        lambda: _ddpm_updates('fixedlarge'), 1e-5, 0.01),
    'ddpm_fixedsmall': (dict(sampler='ddpm', variance='fixedsmall'),
                        lambda: _ddpm_updates('fixedsmall'), 1e-5, 0.03),
    'ddim1000_eta0': (dict(sampler='ddim', steps=1000, eta=0.0),
                      lambda: _ddim_updates(1000, 0.0), 2e-3, 0.015),
    'ddim1000_eta1': (dict(sampler='ddim', steps=1000, eta=1.0),
                      lambda: _ddim_updates(1000, 1.0), 1e-5, 0.03),
    'ddim100_eta0': (dict(sampler='ddim', steps=100, eta=0.0),
                     lambda: _ddim_updates(100, 0.0), 2e-3, 0.1),
    'ddim100_eta1': (dict(sampler='ddim', steps=100, eta=1.0),
                     lambda: _ddim_updates(100, 1.0), 1e-5, 0.2),
}


@pytest.mark.parametrize('case', list(EXACT_CASES))
def test_gaussian_data_output_distribution(case):
  kwargs, updates, mean_tol, std_tol = EXACT_CASES[case]
  m, v = _propagate(updates())
  # The sampler's exact output distribution is close to the data distribution.
  np.testing.assert_array_less(np.abs(m - MU), mean_tol)
  np.testing.assert_array_less(np.abs(np.sqrt(v) / STD - 1), std_tol)

  draw = jax.jit(functools.partial(samplers.sample, GAUSS_EPS, SCHEDULE,
                                   shape=(NUM_SAMPLES, *IMAGE_SHAPE), clip_x0=False, **kwargs))
  x = np.asarray(draw(jax.random.key(0)), np.float64).reshape(NUM_SAMPLES, -1)  # [N, 4]
  # The samples follow the propagated Gaussian: 5 standard errors of the
  # sample mean and of the sample variance.
  n = NUM_SAMPLES
  np.testing.assert_array_less(np.abs(x.mean(0) - m), 5 * np.sqrt(v / n))
  np.testing.assert_array_less(np.abs(x.var(0, ddof=1) - v), 5 * v * np.sqrt(2 / (n - 1)))


def test_reference_ddim_eta1_all_steps_is_ddpm_fixedsmall():
  # The float64 maths behind the sampler equivalence below.
  m1, v1 = _propagate(_ddpm_updates('fixedsmall'))
  m2, v2 = _propagate(_ddim_updates(T, 1.0))
  np.testing.assert_allclose(m1, m2, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(v1, v2, rtol=1e-10)


@pytest.mark.parametrize('clip_x0', [False, True])
def test_ddim_all_steps_eta1_matches_ddpm_fixedsmall(clip_x0):
  shape = (64, 2, 2, 1)
  rng = jax.random.key(3)
  # Without clipping, crude_eps_fn's samples diverge to |x| ~ 100, where float32
  # rounding alone exceeds the tolerance.
  for eps_fn in (GAUSS_EPS, crude_eps_fn) if clip_x0 else (GAUSS_EPS,):
    ddpm = jax.jit(functools.partial(samplers.ddpm_sample, eps_fn, SCHEDULE, shape=shape,
                                     variance='fixedsmall', clip_x0=clip_x0))(rng)
    ddim = jax.jit(functools.partial(samplers.ddim_sample, eps_fn, SCHEDULE, shape=shape,
                                     num_steps=T, eta=1.0, clip_x0=clip_x0))(rng)
    np.testing.assert_allclose(ddim, ddpm, rtol=1e-5, atol=5e-5)


def _manual_ddim(eps_fn, schedule, x_T, rng_loop, num_steps, eta):
  timesteps, prev_timesteps = samplers.ddim_timesteps(schedule.num_timesteps, num_steps)

  def body(x, ts):
    return samplers.ddim_step(eps_fn, schedule, x, ts[0], ts[1], rng_loop, eta=eta), None

  return jax.lax.scan(body, x_T, (jnp.asarray(timesteps), jnp.asarray(prev_timesteps)))[0]


def test_ddim_eta0_is_deterministic():
  schedule = linear_schedule(50)
  shape = (8, 2, 2, 1)
  rng = jax.random.key(7)
  # The documented key derivation: x_T from rng_init, step noise from rng_loop.
  rng_init, rng_loop = jax.random.split(rng)
  x_T = jax.random.normal(rng_init, shape)
  run = jax.jit(_manual_ddim, static_argnums=(0, 4))
  a = run(crude_eps_fn, schedule, x_T, rng_loop, 10, 0.0)
  b = run(crude_eps_fn, schedule, x_T, jax.random.key(123), 10, 0.0)
  np.testing.assert_array_equal(a, b)
  draw = jax.jit(functools.partial(samplers.ddim_sample, crude_eps_fn, schedule, shape=shape,
                                   num_steps=10))
  np.testing.assert_array_equal(draw(rng), draw(rng))
  np.testing.assert_allclose(draw(rng), a, rtol=1e-6, atol=1e-6)
  # With eta = 1 the loop noise matters.
  c = run(crude_eps_fn, schedule, x_T, rng_loop, 10, 1.0)
  d = run(crude_eps_fn, schedule, x_T, jax.random.key(123), 10, 1.0)
  assert np.abs(np.asarray(c - d)).max() > 1e-3


def test_python_loop_of_jitted_steps_matches_scan():
  schedule = linear_schedule(20)
  shape = (4, 2, 2, 1)
  rng = jax.random.key(5)
  rng_init, rng_loop = jax.random.split(rng)
  x = jax.random.normal(rng_init, shape)
  step = jax.jit(functools.partial(samplers.ddpm_step, crude_eps_fn, schedule))
  for t in range(19, -1, -1):
    x = step(x, jnp.int32(t), rng_loop)
  scanned = jax.jit(functools.partial(samplers.ddpm_sample, crude_eps_fn, schedule,
                                      shape=shape))(rng)
  np.testing.assert_allclose(x, scanned, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('sampler, steps', [('ddpm', None), ('ddim', 5)])
def test_jitted_sampler_traces_once(sampler, steps):
  schedule = linear_schedule(10)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draw(rng):
    return samplers.sample(crude_eps_fn, schedule, rng, (2, 2, 2, 1), sampler=sampler, steps=steps)

  outputs = [draw(jax.random.key(i)) for i in range(3)]
  assert not np.allclose(outputs[0], outputs[1])


def test_eps_fn_closing_over_params_passed_into_jit():
  shape = (16, *IMAGE_SHAPE)
  traces = []

  @jax.jit
  def draw(params, rng):
    traces.append(None)
    eps_fn = lambda x, t: gaussian_eps_fn(SCHEDULE, params['mu'], params['var'])(x, t)
    return samplers.ddpm_sample(eps_fn, SCHEDULE, rng, shape, clip_x0=False)

  params = _params()
  for i in range(3):
    got = draw(params, jax.random.key(i))
  other = jax.tree.map(lambda p: p * 0.5, params)
  draw(other, jax.random.key(0))
  assert len(traces) == 1
  expected = jax.jit(functools.partial(samplers.ddpm_sample, GAUSS_EPS, SCHEDULE, shape=shape,
                                       clip_x0=False))(jax.random.key(2))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sampler, steps', [('ddpm', None), ('ddim', 4)])
def test_clipped_samples_are_images(sampler, steps):
  schedule = linear_schedule(30)
  x = samplers.sample(crude_eps_fn, schedule, jax.random.key(0), (3, 4, 4, 3),
                      sampler=sampler, steps=steps, eta=0.5)
  assert x.shape == (3, 4, 4, 3) and x.dtype == jnp.float32
  assert np.all(np.abs(np.asarray(x)) <= 1.0)


def test_sample_dispatches_by_name():
  schedule = linear_schedule(12)
  shape, rng = (2, 2, 2, 1), jax.random.key(1)
  np.testing.assert_array_equal(
      samplers.sample(crude_eps_fn, schedule, rng, shape, sampler='ddim', steps=4, eta=0.3),
      samplers.ddim_sample(crude_eps_fn, schedule, rng, shape, num_steps=4, eta=0.3))
  np.testing.assert_array_equal(
      samplers.sample(crude_eps_fn, schedule, rng, shape, sampler='ddpm', variance='fixedsmall'),
      samplers.ddpm_sample(crude_eps_fn, schedule, rng, shape, variance='fixedsmall'))
  np.testing.assert_array_equal(
      samplers.sample(crude_eps_fn, schedule, rng, shape, sampler='ddim'),
      samplers.ddim_sample(crude_eps_fn, schedule, rng, shape, num_steps=12))


def test_ddim_timesteps():
  timesteps, prev = samplers.ddim_timesteps(T, T)
  np.testing.assert_array_equal(timesteps, np.arange(T - 1, -1, -1))
  np.testing.assert_array_equal(prev, np.arange(T - 2, -2, -1))
  np.testing.assert_array_equal(samplers.ddim_timesteps(T, 1)[0], [T - 1])
  for n in (2, 3, 7, 50, 100, 333, 999):
    timesteps, prev = samplers.ddim_timesteps(T, n)
    assert timesteps.dtype == np.int32 and timesteps.shape == (n,)
    assert timesteps[0] == T - 1 and timesteps[-1] == 0
    assert np.all(np.diff(timesteps) < 0)
    np.testing.assert_array_equal(prev, np.append(timesteps[1:], -1))


@pytest.mark.parametrize('kwargs', [
    dict(sampler='ddpn'),
    dict(sampler='ddim', steps=0),
    dict(sampler='ddim', steps=11),
    dict(sampler='ddim', steps=2.5),
    dict(sampler='ddpm', steps=5),
    dict(sampler='ddpm', variance='learned'),
])
def test_bad_arguments_raise(kwargs):
  with pytest.raises(JaxgenError):
    samplers.sample(crude_eps_fn, linear_schedule(10), jax.random.key(0), (1, 2, 2, 1), **kwargs)
