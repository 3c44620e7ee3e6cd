"""The DDPM variational bound: its pieces against closed forms, and the whole bound exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxgen.diffusion import likelihood
from jaxgen.diffusion.schedules import linear_schedule

LEVELS = np.arange(256) / 127.5 - 1.0  # the 8-bit levels in [-1, 1]


@pytest.mark.parametrize('mean, scale', [(0.0, 0.01), (0.3, 0.2), (-0.99, 0.05), (1.5, 1.0)])
def test_discretized_gaussian_is_a_distribution_over_the_256_levels(mean, scale):
  logp = likelihood.discretized_gaussian_log_likelihood(
      jnp.asarray(LEVELS, jnp.float32), jnp.float32(mean), jnp.log(jnp.float32(scale)))
  np.testing.assert_allclose(np.exp(np.asarray(logp, np.float64)).sum(), 1.0, rtol=1e-4)
  interior = LEVELS[100]
  want = stats.norm.cdf(interior + 1 / 255, mean, scale) - stats.norm.cdf(interior - 1 / 255, mean, scale)
  if want > 1e-6:
    np.testing.assert_allclose(np.exp(logp[100]), want, rtol=1e-4)


def test_normal_kl_hand_computation():
  # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2
  kl = likelihood.normal_kl(0.0, 0.0, 1.0, np.log(4.0))
  np.testing.assert_allclose(kl, np.log(2) + 0.25 - 0.5, rtol=1e-6)
  assert float(likelihood.normal_kl(0.3, -1.0, 0.3, -1.0)) == 0.0


@pytest.mark.parametrize('variance', ['fixedsmall', 'fixedlarge'])
def test_bound_of_a_point_mass_with_its_exact_denoiser(variance):
  """Data = one image c; the exact eps predictor recovers c from any x_t.

  Then every KL term is a pure variance mismatch (zero for 'fixedsmall'), the
  decoder's mean is exactly c, and the whole bound has a closed form.
  """
  schedule = linear_schedule(100, 1e-4, 0.05)
  c = jnp.asarray(np.array([-1.0, -0.2, 0.6 - 0.6 % (1 / 127.5), 1.0]).reshape(1, 2, 2, 1)
                  .repeat(2, axis=0), jnp.float32)  # [2, 2, 2, 1], levels incl. both ends

  def exact_eps(x_t, t):
    abar = schedule.alphas_cumprod[t][:, None, None, None]
    return (x_t - jnp.sqrt(abar) * c) / jnp.sqrt(1 - abar)

  terms, prior = jax.jit(lambda r: likelihood.vlb_terms(exact_eps, schedule, c, r, variance=variance,
                                                        clip_x0=False))(jax.random.PRNGKey(0))
  terms = np.asarray(terms, np.float64)
  d = 4
  pv = np.asarray(schedule.posterior_variance, np.float64)
  betas = np.asarray(schedule.betas, np.float64)
  logvar_q = np.log(pv[1:])
  logvar_p = logvar_q if variance == 'fixedsmall' else np.log(betas[1:])
  kl_want = d * 0.5 * (logvar_p - logvar_q + np.exp(logvar_q - logvar_p) - 1.0)  # [T-1]
  np.testing.assert_allclose(terms[1:, 0], kl_want, rtol=2e-3, atol=2e-4)
  # Decoder: N(c, pv[1]) over each pixel's bin; the end bins reach to +-inf.
  s, h = np.sqrt(pv[1]), 1 / 255
  p_end, p_mid = stats.norm.cdf(h / s), stats.norm.cdf(h / s) - stats.norm.cdf(-h / s)
  nll0_want = -(2 * np.log(p_end) + 2 * np.log(p_mid))
  np.testing.assert_allclose(terms[0], nll0_want, rtol=1e-4)
  abar_t = float(schedule.alphas_cumprod[-1])
  cn = np.asarray(c[0], np.float64).ravel()
  prior_want = 0.5 * np.sum(-1 - np.log(1 - abar_t) + (1 - abar_t) + abar_t * cn ** 2)
  np.testing.assert_allclose(prior, prior_want, rtol=1e-4)


@pytest.mark.slow  # CI time: ~40 s; the bound is checked above, the CLI path by the AR and VAE e2e tests
def test_bound_through_the_cli(mnist_env, tmp_path, capsys):
  import json, os
  from jaxgen import cli
  from jaxgen import config as config_lib
  from jaxgen.train import trainer
  from conftest import REPO
  workdir = str(tmp_path / 'run')
  config = config_lib.load_config(str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke',
                                  ['train.num_steps=5', 'train.sample_every=0'])
  trainer.train_and_evaluate(config, workdir)
  assert cli.main(['eval', '--workdir', workdir, '--metrics', 'bpd', '--num', '20', '--batch', '16']) == 0
  assert 'bits/dim on 20 images of the test split' in capsys.readouterr().out
  result = json.load(open(os.path.join(workdir, 'eval_step_0000005_bpd.json')))
  bpd = result['metrics']['bits/dim']
  nats = result['metrics']['NLL bound (nats)']
  np.testing.assert_allclose(bpd, nats / (784 * np.log(2)), rtol=1e-9)
  assert 0 < bpd < 100 and result['num_test'] == 20
