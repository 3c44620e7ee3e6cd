"""Tests of the prediction types, classifier-free guidance and the few-step ODE solvers.

The solver tests use Gaussian data x0 ~ N(mu, s^2) per dimension with its
exact noise predictor (see tests/test_samplers.py). Its probability-flow ODE
maps quantiles to quantiles: x_t = a_t mu + sqrt(a_t^2 s^2 + s_t^2) z with
a_t = sqrt(abar_t), s_t = sqrt(1 - abar_t), so the exact solution from any
x_{T-1} is known in closed form. Everything here is tiny and UNet-free except
the one end-to-end test at the bottom.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import cli, config as config_lib
from jaxgen.diffusion import guidance, model as model_lib, parameterisation, samplers
from jaxgen.diffusion.schedules import cosine_schedule, linear_schedule, q_sample
from jaxgen.errors import JaxgenError
from conftest import REPO
from test_samplers import crude_eps_fn, gaussian_eps_fn

T = 1000
SCHEDULE = linear_schedule(T)
# One (mean, std) per dimension of a [2, 2, 1] "image".
MU = np.array([0.0, 0.4, -0.3, 0.7])
STD = np.array([1.0, 0.5, 0.3, 0.2])
SHAPE = (2, 2, 1)
GAUSS_EPS = gaussian_eps_fn(SCHEDULE, jnp.asarray(MU.reshape(SHAPE), jnp.float32),
                            jnp.asarray((STD ** 2).reshape(SHAPE), jnp.float32))
SOLVERS = {'dpmpp2m': samplers.dpmpp2m_sample, 'heun': samplers.heun_sample}
SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'


# ---------------------------------------------------------------- prediction types


@jax.jit
def _conversions(schedule, x0, noise, t):
  """Every conversion and target at x_t = q_sample(x0, t, noise), in one compiled call."""
  p = parameterisation
  x_t = q_sample(schedule, x0, t, noise)
  out = {}
  # eps -> x0 -> v -> eps, each conversion from x_t and the previous output.
  out['x0_from_eps'] = p.to_x0(schedule, x_t, t, noise, 'eps')
  out['v_from_x0'] = p.from_eps(schedule, x_t, t, p.to_eps(schedule, x_t, t, out['x0_from_eps'], 'x0'),
                                'v')
  out['eps_from_v'] = p.to_eps(schedule, x_t, t, out['v_from_x0'], 'v')
  out['x0_from_v'] = p.to_x0(schedule, x_t, t, out['v_from_x0'], 'v')
  for kind in p.PREDICTION_TYPES:
    target = out[f'target_{kind}'] = p.target(schedule, x0, t, noise, kind)
    out[f'eps_from_target_{kind}'] = p.to_eps(schedule, x_t, t, target, kind)
    out[f'x0_from_target_{kind}'] = p.to_x0(schedule, x_t, t, target, kind)
    out[f'{kind}_from_true_eps'] = p.from_eps(schedule, x_t, t, noise, kind)
  return out


@pytest.mark.parametrize('schedule', [linear_schedule(T), cosine_schedule(T)], ids=['linear', 'cosine'])
def test_prediction_types_convert_into_each_other(schedule):
  gen, b = np.random.default_rng(0), 256
  x0 = gen.uniform(-1.0, 1.0, (b, 3, 3, 2)).astype(np.float32)
  noise = gen.normal(size=x0.shape).astype(np.float32)
  t = gen.integers(0, T, b).astype(np.int32)
  t[:2] = 0, T - 1  # both ends too
  got = jax.device_get(_conversions(schedule, x0, noise, t))
  x0, noise = np.asarray(x0, np.float64), np.asarray(noise, np.float64)

  # float64 truth: v = a eps - s x0 (Salimans & Ho 2022).
  abar = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)][:, None, None, None]
  a, s = np.sqrt(abar), np.sqrt(1 - abar)
  v = a * noise - s * x0
  # eps -> x0 divides by a (down to 0.0064 at t = T - 1 on the linear schedule,
  # far less on the cosine one) and x0 -> eps by s (0.01 at t = 0): float32
  # rounding of x_t, so amplified, is the tolerance, per timestep.
  tol = 4e-6 * (1 + 1 / a + 1 / s)

  def close(actual, expected, name):
    err = np.abs(np.asarray(actual, np.float64) - expected)
    assert np.all(err <= tol), (name, float((err / tol).max()))

  close(got['x0_from_eps'], x0, 'x0_from_eps')
  close(got['v_from_x0'], v, 'v_from_x0')
  close(got['eps_from_v'], noise, 'eps_from_v')
  close(got['x0_from_v'], x0, 'x0_from_v')
  # Each training target is what the conversions give for the true (x0, noise).
  np.testing.assert_array_equal(got['target_eps'], noise.astype(np.float32))
  np.testing.assert_array_equal(got['target_x0'], x0.astype(np.float32))
  close(got['target_v'], v, 'target_v')
  truth = {'eps': noise, 'x0': x0, 'v': v}
  for kind in parameterisation.PREDICTION_TYPES:
    close(got[f'eps_from_target_{kind}'], noise, kind)
    close(got[f'x0_from_target_{kind}'], x0, kind)
    close(got[f'{kind}_from_true_eps'], truth[kind], kind)
  # Where the conditioning is good (most t), the conversions are float32-exact.
  mid = ((abar > 0.01) & (abar < 0.99))[:, 0, 0, 0]
  assert mid.sum() > b // 2
  np.testing.assert_allclose(got['eps_from_v'][mid], noise[mid], atol=2e-6)


def test_unknown_prediction_type_raises():
  with pytest.raises(JaxgenError, match='prediction'):
    parameterisation.target(SCHEDULE, jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32),
                            jnp.zeros((1, 2)), 'score')


# ---------------------------------------------------------------- guidance


def _labelled_eps_fn(calls):
  """A fake label-taking noise predictor that records the batch size of every call."""
  def eps_fn(x, t, y):
    calls.append(x.shape[0])
    return jnp.sin(x * (1.0 + y[:, None, None, None])) + 0.01 * t[:, None, None, None]
  return eps_fn


def test_guidance_scale_one_is_conditional_zero_unconditional():
  b, null, w = 6, 10, 3.0
  x = np.random.default_rng(1).normal(size=(b, *SHAPE)).astype(np.float32)
  t = np.arange(b, dtype=np.int32) * 7
  labels = np.arange(b, dtype=np.int32) % 10
  calls = []
  eps_y = _labelled_eps_fn(calls)

  @jax.jit
  def run(x, t, labels):
    plain = eps_y(x, t, labels), eps_y(x, t, jnp.full((b,), null, jnp.int32))
    guided = [guidance.guided_eps_fn(eps_y, labels, null, scale)(x, t) for scale in (1.0, 0.0, w)]
    return plain, guided

  (cond, uncond), (g1, g0, g3) = run(x, t, labels)
  np.testing.assert_array_equal(g1, cond)
  np.testing.assert_array_equal(g0, uncond)
  np.testing.assert_allclose(g3, uncond + w * (cond - uncond), rtol=1e-6, atol=1e-6)
  # One network call per guided evaluation, on the batch of 2B.
  assert calls == [b, b] + [2 * b] * 3


class _FakeNet(nn.Module):
  """Stands in for the UNet: output = emb[y] (per class, broadcast over pixels) + 0 * x."""
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x, t, y=None, *, train=False):
    if y is None:
      y = jnp.full(x.shape[:1], self.config.num_classes, jnp.int32)
    emb = self.param('emb', nn.initializers.zeros, (self.config.num_classes + 1, x.shape[-1]))
    return 0.0 * x + emb[y][:, None, None, :]


def _fake_model(prediction='eps', label_dropout=0.0, num_classes=10):
  net = _FakeNet(ml_collections.ConfigDict({'num_classes': num_classes, 'dtype': 'float32'}))
  diff = model_lib.DiffusionConfig(prediction=prediction, label_dropout=label_dropout)
  return model_lib.DiffusionModel(net, SCHEDULE, model_lib.SampleConfig(), SHAPE, diff)


@pytest.mark.parametrize('prediction', parameterisation.PREDICTION_TYPES)
def test_model_eps_fn_converts_and_guides_in_one_call(prediction):
  m = _fake_model(prediction, label_dropout=0.1)
  params = {'emb': np.arange(11, dtype=np.float32).reshape(11, 1)}  # class k outputs k
  x = np.random.default_rng(2).normal(size=(4, *SHAPE)).astype(np.float32)
  t = np.array([0, 10, 500, T - 1], np.int32)
  labels = np.array([1, 2, 3, 7], np.int32)

  @jax.jit
  def run(params, x, t, labels):
    to_eps = lambda y: parameterisation.to_eps(  # what the network outputs for class y, as eps
        SCHEDULE, x, t, jnp.broadcast_to(y.astype(jnp.float32)[:, None, None, None], x.shape),
        prediction)
    got = [m.eps_fn(params, labels, guidance=w)(x, t) for w in (1.0, 0.0, 2.5)]
    return got, (to_eps(labels), to_eps(jnp.full((4,), 10, jnp.int32)))

  (g1, g0, g25), (cond, null) = run(params, x, t, labels)
  np.testing.assert_allclose(g1, cond, rtol=1e-6)
  np.testing.assert_allclose(g0, null, rtol=1e-5)
  np.testing.assert_allclose(g25, null + 2.5 * (cond - null), rtol=1e-4, atol=1e-4)


def test_label_dropout_trains_the_null_class_on_the_right_target():
  # Images all 0.5 and prediction 'x0': the target is 0.5 everywhere. The fake
  # network outputs 0.5 for the null class and 10.5 for the others, so the loss
  # is 100 times the fraction of labels kept.
  batch = {'image': np.full((4096, *SHAPE), 0.5, np.float32),
           'label': np.arange(4096, dtype=np.int32) % 10}
  emb = np.full((11, 1), 10.5, np.float32)
  emb[10] = 0.5
  drops = (0.0, 0.3)
  losses = jax.jit(lambda params, batch, rng: [_fake_model('x0', p).loss(params, batch, rng)[0]
                                               for p in drops])({'emb': emb}, batch, jax.random.key(3))
  for p_drop, loss in zip(drops, losses):
    np.testing.assert_allclose(float(loss) / 100, 1 - p_drop, atol=0.03)


def _smoke_model(*overrides):
  config = config_lib.load_config(SMOKE, list(overrides))
  return model_lib.build(config, (28, 28, 1))


def test_guidance_and_config_errors():
  with pytest.raises(JaxgenError, match='conditional'):
    _smoke_model().sample_options(guidance=3.0)
  with pytest.raises(JaxgenError, match='label_dropout'):
    _smoke_model('model.num_classes=10').sample_options(guidance=3.0)
  m = _smoke_model('model.num_classes=10', 'diffusion.label_dropout=0.1', 'diffusion.prediction=v')
  assert m.sample_options(guidance=3.0, label=7)['guidance'] == 3.0
  for bad in (dict(guidance=-1.0), dict(label=10), dict(sampler='dpm')):
    with pytest.raises(JaxgenError):
      m.sample_options(**bad)
  with pytest.raises(JaxgenError, match='label'):
    _smoke_model().sample_options(label=3)
  for bad in (['diffusion.prediction=score'], ['diffusion.label_dropout=0.1'],
              ['model.num_classes=10', 'diffusion.label_dropout=1.0'],
              ['model.num_classes=10', 'sample.guidance=2.0']):  # caught when built, before training
    with pytest.raises(JaxgenError):
      _smoke_model(*bad)


def test_evaluations_per_sample_and_cli_flags():
  m = _smoke_model()  # T = 100
  assert m.evaluations_per_sample(sampler='ddpm') == 100
  assert m.evaluations_per_sample(sampler='ddim', steps=7) == 7
  assert m.evaluations_per_sample(sampler='dpmpp2m', steps=7) == 7
  assert m.evaluations_per_sample(sampler='heun', steps=7) == 13
  assert m.evaluations_per_sample(sampler='heun', steps=0) == 199
  for command in ('sample', 'eval'):
    argv = [command, '--workdir', 'w', '--sampler', 'heun', '--steps', '4', '--guidance', '2']
    if command == 'sample':
      argv += ['--num', '1', '--out', 'x.png']
    opts = cli._sample_options(cli._parser().parse_args(argv))  # pylint: disable=protected-access
    assert opts == dict(sampler='heun', steps=4, guidance=2.0)


# ---------------------------------------------------------------- few-step solvers


def _lambda(schedule):
  return (np.log(np.asarray(schedule.sqrt_alphas_cumprod, np.float64))
          - np.log(np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)))


@pytest.mark.parametrize('schedule', [linear_schedule(T), cosine_schedule(T), linear_schedule(10)],
                         ids=['linear', 'cosine', 'linear10'])
def test_logsnr_timesteps(schedule):
  n = schedule.num_timesteps
  for k in sorted({1, 2, 3, 5, 10, 20, 64, 333, n - 1, n} & set(range(1, n + 1))):
    timesteps, prev = samplers.logsnr_timesteps(schedule, k)
    assert timesteps.dtype == np.int32 and timesteps.shape == (k,)
    assert timesteps[0] == n - 1 and (k == 1 or timesteps[-1] == 0)
    assert np.all(np.diff(timesteps) < 0)
    np.testing.assert_array_equal(prev, np.append(timesteps[1:], -1))
  np.testing.assert_array_equal(samplers.logsnr_timesteps(schedule, n)[0], np.arange(n - 1, -1, -1))
  if schedule.num_timesteps == T and schedule.betas[0] == SCHEDULE.betas[0]:
    lam = _lambda(schedule)
    for k in (5, 10, 20):  # even steps in lambda, up to the rounding to timesteps
      h = np.diff(lam[samplers.logsnr_timesteps(schedule, k)[0]])
      spacing = (lam[0] - lam[-1]) / (k - 1)
      assert 0.7 * spacing < h.min() and h.max() < 1.3 * spacing, (k, h / spacing)


def _exact_ode_then_denoise(x_start):
  """The probability-flow ODE solved exactly from t = T - 1 to t = 0, then the x0 prediction.

  x_start: [N, 4] float64 at t = T - 1. Every solver ends with the x0
  prediction at t = 0 (the step to clean data), so this is the limit of
  their outputs as the steps shrink.
  """
  abar = np.asarray(SCHEDULE.alphas_cumprod, np.float64)
  var = STD ** 2
  a = abar[T - 1]
  z = (x_start - np.sqrt(a) * MU) / np.sqrt(a * var + 1 - a)
  a = abar[0]
  x = np.sqrt(a) * MU + np.sqrt(a * var + 1 - a) * z
  eps = np.sqrt(1 - a) * (x - np.sqrt(a) * MU) / (a * var + 1 - a)
  return (x - np.sqrt(1 - a) * eps) / np.sqrt(a)


@pytest.mark.parametrize('sampler', list(SOLVERS))
def test_ode_error_falls_at_second_order(sampler):
  # Steps even in log-SNR reach the asymptotic regime at K ~ 16 on this
  # problem (measured errors, max over 64 samples: dpmpp2m 5.9e-2, 1.6e-2,
  # 4.0e-3, 9.7e-4; heun 1.7e-1, 3.6e-2, 8.4e-3, 2.0e-3, slopes -2.0 and -2.1).
  ks = (16, 32, 64, 128)
  n = 64
  rng = jax.random.key(4)
  # x_T as the samplers draw it (from the first half of the split rng).
  draw = jax.jit(lambda r: ([SOLVERS[sampler](GAUSS_EPS, SCHEDULE, r, (n, *SHAPE), num_steps=k,
                                              clip_x0=False) for k in ks],
                            jax.random.normal(jax.random.split(r)[0], (n, *SHAPE))))
  outs, x_start = draw(rng)
  x_start = np.asarray(x_start, np.float64)
  exact = _exact_ode_then_denoise(x_start.reshape(n, -1))
  errors = [np.abs(np.asarray(x, np.float64).reshape(n, -1) - exact).max() for x in outs]
  slope = np.polyfit(np.log(ks), np.log(errors), 1)[0]
  assert slope < -1.5, (errors, slope)
  assert errors[-1] < 5e-3, errors


# (sampler, K, tolerance on |std / s - 1|). The exact output distributions
# (float64, by the affine map x_T -> sample) are off by at most: dpmpp2m K=10
# 3.6%, K=20 1.5%; heun K=20 3.7% (Heun needs more steps: 19% at K=10). The
# tolerances add 4 standard errors of the sample std (N = 16384: 0.55% each).
FEW_STEP_CASES = [('dpmpp2m', 10, 0.06), ('dpmpp2m', 20, 0.04), ('heun', 20, 0.06)]


def test_few_step_sample_distribution():
  n = 16384
  draw = jax.jit(lambda rng: [samplers.sample(GAUSS_EPS, SCHEDULE, rng, (n, *SHAPE), sampler=sampler,
                                              steps=k, clip_x0=False)
                              for sampler, k, _ in FEW_STEP_CASES])
  for (sampler, k, std_tol), x in zip(FEW_STEP_CASES, draw(jax.random.key(5))):
    x = np.asarray(x, np.float64).reshape(n, -1)
    # Mean: solver bias < 1e-3 here, plus 5 standard errors.
    assert np.all(np.abs(x.mean(0) - MU) < 2e-3 + 5 * STD / np.sqrt(n)), (sampler, k, x.mean(0) - MU)
    assert np.all(np.abs(x.std(0) / STD - 1) < std_tol), (sampler, k, x.std(0) / STD - 1)


def _exact_sde_dpmpp2m_moments(k):
  """Mean and std [4] of SDE-DPM-Solver++(2M)'s output on the Gaussian problem, in float64.

  With the exact (affine) noise predictor every step is affine in the state
  (x_t, x0_last) and the fresh noise, so the state stays Gaussian: its mean
  [D, 2] and covariance [D, 2, 2] are carried through the update rule of
  `samplers.dpmpp2m_step` (eta = 1), written out again here from Lu et al.'s
  formulas, from x_{T-1} ~ N(0, I) to the final x0 prediction.
  """
  abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))
  a, s = np.sqrt(abar), np.sqrt(1 - abar)
  lam = np.log(a / s)
  var = STD ** 2
  timesteps, nexts = samplers.logsnr_timesteps(SCHEDULE, k)
  mean = np.zeros((MU.size, 2))  # (x_t, x0_last) per dimension
  cov = np.zeros((MU.size, 2, 2))
  cov[:, 0, 0] = 1.0
  t_last = -1
  for t, t_next in zip(timesteps, nexts):
    # x0 prediction = c1 x_t + c0 (the posterior mean of x0 given x_t).
    c1 = a[t] * var / (a[t] ** 2 * var + s[t] ** 2)
    c0 = MU * s[t] ** 2 / (a[t] ** 2 * var + s[t] ** 2)
    if t_next < 0:
      return c1 * mean[:, 0] + c0, np.abs(c1) * np.sqrt(cov[:, 0, 0])
    h = lam[t_next] - lam[t]
    q = 0.5 * h / (lam[t] - lam[t_last]) if t_last >= 0 else 0.0  # 1 / (2r)
    keep = s[t_next] / s[t] * np.exp(-h)
    mix = a[t_next] * (1 - np.exp(-2 * h))
    noise_var = s[t_next] ** 2 * (1 - np.exp(-2 * h))
    # (x_next, x0) = M (x_t, x0_last) + const + (noise, 0).
    m = np.zeros((MU.size, 2, 2))
    m[:, 0, 0] = keep + mix * (1 + q) * c1
    m[:, 0, 1] = -mix * q
    m[:, 1, 0] = c1
    const = np.stack([mix * (1 + q) * c0, c0], axis=1)
    mean = np.einsum('dij,dj->di', m, mean) + const
    cov = np.einsum('dij,djk,dlk->dil', m, cov, m)
    cov[:, 0, 0] += noise_var
    t_last = t
  raise AssertionError('the last step goes to clean data')


def test_sde_solver_output_distribution():
  # The exact output distribution (float64 moments) approaches the data's as
  # the steps grow (std off by at most 3.5%, 1.0%, 0.25% at K = 20, 40, 80:
  # weak second order), and the sampler's samples have those moments.
  ks = (20, 40, 80)
  std_errors = []
  for k in ks:
    mean, std = _exact_sde_dpmpp2m_moments(k)
    assert np.all(np.abs(mean - MU) < 1e-3), (k, mean - MU)
    std_errors.append(np.abs(std / STD - 1).max())
  assert std_errors[0] > 3 * std_errors[1] > 9 * std_errors[2], std_errors
  assert std_errors[2] < 0.005, std_errors

  n = 16384
  k = 20
  draw = jax.jit(lambda rng: samplers.sample(GAUSS_EPS, SCHEDULE, rng, (n, *SHAPE),
                                             sampler='dpmpp2m_sde', steps=k, clip_x0=False))
  x = np.asarray(draw(jax.random.key(5)), np.float64).reshape(n, -1)
  mean, std = _exact_sde_dpmpp2m_moments(k)
  # 5 standard errors of the sample mean and std.
  assert np.all(np.abs(x.mean(0) - mean) < 5 * std / np.sqrt(n)), (x.mean(0) - mean)
  assert np.all(np.abs(x.std(0) / std - 1) < 5 / np.sqrt(2 * n)), (x.std(0) / std - 1)


def test_sde_solver_at_eta_zero_is_the_ode_solver():
  schedule = linear_schedule(30)
  x_T = np.random.default_rng(7).normal(size=(4, *SHAPE)).astype(np.float32)
  step = jax.jit(functools.partial(samplers.dpmpp2m_step, crude_eps_fn, schedule),
                 static_argnames=('eta',))
  x0_last, t, t_next, t_last = np.zeros_like(x_T), jnp.int32(20), jnp.int32(12), jnp.int32(27)
  ode = step(x_T, x0_last, t, t_next, t_last)
  np.testing.assert_array_equal(step(x_T, x0_last, t, t_next, t_last, eta=0.0,
                                     rng_loop=jax.random.key(0))[0], ode[0])
  sde_a = step(x_T, x0_last, t, t_next, t_last, eta=1.0, rng_loop=jax.random.key(0))[0]
  sde_b = step(x_T, x0_last, t, t_next, t_last, eta=1.0, rng_loop=jax.random.key(1))[0]
  assert not np.allclose(sde_a, ode[0]) and not np.allclose(sde_a, sde_b)
  # The step to clean data returns the x0 prediction whatever eta.
  np.testing.assert_array_equal(
      step(x_T, x0_last, t, jnp.int32(-1), t_last, eta=1.0, rng_loop=jax.random.key(0))[0], ode[1])
  with pytest.raises(JaxgenError, match='rng_loop'):
    samplers.dpmpp2m_step(crude_eps_fn, schedule, x_T, x0_last, t, t_next, t_last, eta=1.0)


def test_python_loop_of_jitted_steps_matches_scan():
  schedule = linear_schedule(30)
  shape = (4, *SHAPE)
  x_T = np.random.default_rng(6).normal(size=shape).astype(np.float32)
  timesteps, nexts = samplers.logsnr_timesteps(schedule, 6)
  dpm = jax.jit(functools.partial(samplers.dpmpp2m_step, crude_eps_fn, schedule))
  heun = jax.jit(functools.partial(samplers.heun_step, crude_eps_fn, schedule))
  x, x0_last, y, t_last = x_T, jnp.zeros_like(x_T), x_T, -1
  for t, t_next in zip(timesteps, nexts):
    x, x0_last = dpm(x, x0_last, jnp.int32(t), jnp.int32(t_next), jnp.int32(t_last))
    y = heun(y, jnp.int32(t), jnp.int32(t_next))
    t_last = t
  # The samplers' scans from the same x_T (the bodies of dpmpp2m_sample and heun_sample).
  last = np.append(-1, timesteps[:-1]).astype(np.int32)

  @jax.jit
  def scanned_fns(x_T):
    dpm_body = lambda c, ts: (samplers.dpmpp2m_step(crude_eps_fn, schedule, *c, ts[1], ts[2], ts[0]),
                              None)
    heun_body = lambda x, ts: (samplers.heun_step(crude_eps_fn, schedule, x, *ts), None)
    return {'dpmpp2m': jax.lax.scan(dpm_body, (x_T, jnp.zeros_like(x_T)), (last, timesteps, nexts))[0][0],
            'heun': jax.lax.scan(heun_body, x_T, (timesteps, nexts))[0]}

  scanned_all = scanned_fns(x_T)
  for sampler, looped in (('dpmpp2m', x), ('heun', y)):
    scanned = scanned_all[sampler]
    np.testing.assert_allclose(looped, scanned, rtol=1e-5, atol=1e-6, err_msg=sampler)
    assert np.all(np.abs(np.asarray(scanned)) <= 1.0)  # clip_x0 (default) keeps images in range


@pytest.mark.parametrize('sampler, evals', [('dpmpp2m', 5), ('dpmpp2m_sde', 5), ('heun', 9)])
def test_solver_is_one_scan_that_traces_once(sampler, evals):
  schedule = linear_schedule(20)
  evaluated = []

  def eps_fn(x, t):  # counts evaluations at run time
    jax.debug.callback(lambda: evaluated.append(None))
    return crude_eps_fn(x, t)

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def draw(rng):
    return samplers.sample(eps_fn, schedule, rng, (2, *SHAPE), sampler=sampler, steps=5)

  outputs = jax.block_until_ready([draw(jax.random.key(i)) for i in range(2)])
  assert not np.allclose(outputs[0], outputs[1])
  assert len(evaluated) == 2 * evals
  jaxpr = jax.make_jaxpr(lambda r: samplers.sample(eps_fn, schedule, r, (2, *SHAPE), sampler=sampler,
                                                   steps=5))(jax.random.key(0))
  assert [e.primitive.name for e in jaxpr.eqns].count('scan') == 1


# ---------------------------------------------------------------- end to end


@pytest.mark.slow  # compiles a UNet three times; the pieces are checked above without one
def test_v_prediction_label_dropout_trains_and_samples_guided(mnist_env, tmp_path):
  from jaxgen.train import trainer  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'ddpm_v_cfg')
  # The smoke UNet without its 14x14 level and attention: compiling it is most of this test.
  config = config_lib.load_config(SMOKE, [
      'diffusion.prediction=v', 'diffusion.label_dropout=0.2', 'model.num_classes=10',
      'model.ch_mult=(1,)', 'model.attn_resolutions=()',
      'train.num_steps=4', 'train.log_every=2', 'train.sample_every=0'])
  state = trainer.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  out = tmp_path / 'guided.npz'
  assert cli.main(['sample', '--workdir', workdir, '--num', '4', '--out', str(out), '--batch', '8',
                   '--sampler', 'dpmpp2m', '--steps', '3', '--guidance', '3', '--label', '7']) == 0
  images = np.load(out)['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
