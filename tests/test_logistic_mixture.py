"""The PixelCNN++ discretized logistic mixture: its layout against hand computations, its
normalisation over all 256^C pixels (C = 1, and C = 3 for one edge-case parameter set), and
its sampler against the pmf.

Every check here is against a closed form or an exact sum. As in test_vae, the module runs with
`jax.threefry_partitionable(False)` (much quicker to compile on CPU); no test depends on which
random numbers it draws.
"""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from jaxgen.errors import JaxgenError
from jaxgen.nn import distributions
from jaxgen.nn.distributions import (discretized_logistic_mixture_log_prob,
                                     logistic_mixture_num_params,
                                     sample_discretized_logistic_mixture)
from conftest import optimised_jit

# The 256 levels -1 + 2k/255, correctly rounded to float32.
LEVELS = np.asarray(-1.0 + 2.0 * np.arange(256) / 255.0, np.float32)


@pytest.fixture(scope='module', autouse=True)
def _quick_prng_compiles():
  partitionable = getattr(jax, 'threefry_partitionable', None)
  with partitionable(False) if partitionable is not None else contextlib.nullcontext():
    yield


log_prob = jax.jit(discretized_logistic_mixture_log_prob, static_argnums=2)
sample = jax.jit(sample_discretized_logistic_mixture, static_argnums=(2, 3))


def pack(logits, means, log_scales, coeffs=None) -> np.ndarray:
  """The documented layout, written out: logits [..., M], means and log_scales [..., C, M]
  (channel-major), coeffs [..., P, M] (raw) -> params [..., M (1 + 2C + P)]."""
  logits, means, log_scales = (np.asarray(a, np.float32) for a in (logits, means, log_scales))
  lead = logits.shape[:-1]
  parts = [logits, means.reshape(*lead, -1), log_scales.reshape(*lead, -1)]
  if coeffs is not None:
    parts.append(np.asarray(coeffs, np.float32).reshape(*lead, -1))
  return np.concatenate(parts, axis=-1)


def logistic_cdf(t, mean, scale):
  return special.expit((t - mean) / scale)


def bin_prob(x, mean, scale) -> float:
  """The float64 probability of 8-bit level x under a discretized logistic (tails at the edges)."""
  upper = 1.0 if x > 0.999 else logistic_cdf(x + 1 / 255, mean, scale)
  lower = 0.0 if x < -0.999 else logistic_cdf(x - 1 / 255, mean, scale)
  return upper - lower


def test_num_params_and_refusals():
  assert logistic_mixture_num_params(1, 10) == 30
  assert logistic_mixture_num_params(3, 10) == 100  # PixelCNN++'s 10 * nr_mix
  assert logistic_mixture_num_params(4, 2) == 2 * (1 + 8 + 6)
  with pytest.raises(JaxgenError, match='num_mixtures >= 1') as e:
    logistic_mixture_num_params(3, 0)
  assert '\n' not in str(e.value) and str(e.value).endswith('.')
  with pytest.raises(JaxgenError, match=r'takes 20 parameters per pixel.*got a last axis of 19'):
    discretized_logistic_mixture_log_prob(jnp.zeros((2, 3)), jnp.zeros((2, 19)), 2)
  with pytest.raises(JaxgenError, match=r'takes 20 parameters'):
    sample_discretized_logistic_mixture(jax.random.PRNGKey(0), jnp.zeros((2, 21)), 3, 2)


def test_one_component_one_channel_is_the_discretized_logistic():
  means = np.array([-1.3, -1.0, -0.2, 0.0, 0.45, 0.999, 2.0], np.float32)
  log_scales = np.array([-7.0, -5.0, -3.0, -1.0, 0.0, 1.0, 2.5], np.float32)
  m, s = np.meshgrid(means, log_scales)
  m, s = m.reshape(-1), s.reshape(-1)  # [N]
  params = pack(np.full((m.size, 1), 0.7), m[:, None, None], s[:, None, None])  # [N, 3]
  x = jnp.asarray(LEVELS)[:, None, None]  # [256, 1, C=1]
  # Log-scales below -7 are clamped to -7.
  clamped = pack([[0.0]], [[[0.3]]], [[[-12.0]]])  # [1, 3]

  @jax.jit
  def run(params, m, s, clamped):
    return (discretized_logistic_mixture_log_prob(x, params, 1),
            distributions.discretized_logistic_log_prob(x[..., 0], m, s),
            discretized_logistic_mixture_log_prob(x, clamped, 1),
            distributions.discretized_logistic_log_prob(x[..., 0], 0.3, -7.0))

  got, want, got_clamped, want_clamped = run(params, m, s, clamped)
  assert got.shape == (256, m.size)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got_clamped, want_clamped, rtol=1e-6, atol=1e-6)


def test_two_components_one_channel_by_hand():
  logits, means, log_scales = [0.3, -0.5], [0.1, -0.6], [-2.0, -3.0]
  params = jnp.asarray(pack(logits, [means], [log_scales]))  # [5]
  w = np.exp(logits) / np.exp(logits).sum()
  for k in (0, 1, 120, 150, 254, 255):  # both edges, their neighbours and two inner levels
    x = float(LEVELS[k])
    want = sum(w[i] * bin_prob(x, means[i], math.exp(log_scales[i])) for i in range(2))
    got = float(log_prob(jnp.asarray([x]), params, 2))
    # float32 differences of sigmoids near 1 are good to ~1e-7 absolute (as in test_vae).
    np.testing.assert_allclose(math.exp(got), want, rtol=1e-4, atol=3e-7, err_msg=f'level {k}')


def test_three_channels_two_components_by_hand_with_the_coupling():
  # Each number named by its place in the layout: channel-major means and scales, coefficients
  # in the order (g, r), (b, r), (b, g), each over the 2 components.
  logits = [-0.4, 0.9]
  mu = {'r': [0.2, -0.3], 'g': [-0.1, 0.5], 'b': [0.05, 0.35]}
  log_s = {'r': [-2.5, -1.5], 'g': [-3.0, -2.0], 'b': [-2.2, -4.0]}
  raw = {'gr': [0.8, -1.1], 'br': [0.3, 0.6], 'bg': [-0.5, 1.7]}
  params = np.array(logits + mu['r'] + mu['g'] + mu['b'] + log_s['r'] + log_s['g'] + log_s['b']
                    + raw['gr'] + raw['br'] + raw['bg'], np.float32)
  assert params.size == logistic_mixture_num_params(3, 2)
  np.testing.assert_array_equal(params, pack(logits, [mu['r'], mu['g'], mu['b']],
                                             [log_s['r'], log_s['g'], log_s['b']],
                                             [raw['gr'], raw['br'], raw['bg']]))
  w = np.exp(logits) / np.exp(logits).sum()
  # Two pixels where both components carry 30-70% of the mass, one where the first dominates,
  # two on the edge levels. Every bin of a component that matters is above the 1e-5 below which
  # the density-at-the-centre fallback (not computed here) takes over.
  pixels = np.asarray(LEVELS[[[141, 124, 178], [126, 132, 166], [140, 120, 150], [0, 255, 223],
                              [255, 185, 255]]])
  got = np.asarray(log_prob(jnp.asarray(pixels), jnp.asarray(params), 2))
  for pixel, value in zip(pixels.astype(np.float64), got):
    r, g, b = pixel
    p = 0.0
    for k in range(2):
      mean_g = mu['g'][k] + math.tanh(raw['gr'][k]) * r
      mean_b = mu['b'][k] + math.tanh(raw['br'][k]) * r + math.tanh(raw['bg'][k]) * g
      p += w[k] * (bin_prob(r, mu['r'][k], math.exp(log_s['r'][k]))
                   * bin_prob(g, mean_g, math.exp(log_s['g'][k]))
                   * bin_prob(b, mean_b, math.exp(log_s['b'][k])))
    np.testing.assert_allclose(value, math.log(p), rtol=0, atol=3e-4, err_msg=str(pixel))


def test_one_channel_mixtures_sum_to_one_over_the_256_levels():
  rng = np.random.default_rng(0)
  m = 3
  # Random mixtures, and the edge cases in every component: means at, near and beyond -1 and 1,
  # tiny scales (at and below the -7 floor) and wide ones.
  edge_means = [-5.0, -1.5, -1.0, -0.999, -1 + 1 / 255, 0.0, 1 - 1 / 255, 0.999, 1.0, 1.5, 5.0]
  edge_scales = [-9.0, -7.0, -6.0, -4.0, 0.0, 2.0]
  mean_grid, scale_grid = np.meshgrid(edge_means, edge_scales)
  n_edge = mean_grid.size
  means = np.concatenate([np.repeat(mean_grid.reshape(-1, 1), m, 1)
                          + [[0.0, 1 / 255, -0.5 / 255]], rng.uniform(-2, 2, (64, m))])
  log_scales = np.concatenate([np.repeat(scale_grid.reshape(-1, 1), m, 1),
                               rng.uniform(-7.5, 1.0, (64, m))])
  logits = rng.normal(0.0, 2.0, (n_edge + 64, m))
  params = jnp.asarray(pack(logits, means[:, None], log_scales[:, None]))  # [N, 3M]
  x = jnp.asarray(LEVELS)[:, None, None]  # [256, 1, 1]

  logp, grads = jax.jit(lambda p: (discretized_logistic_mixture_log_prob(x, p, m),
                                   jax.grad(lambda q: discretized_logistic_mixture_log_prob(
                                       x, q, m).sum())(p)))(params)
  logp = np.asarray(logp, np.float64)  # [256, N]
  assert logp.shape == (256, n_edge + 64)
  assert np.isfinite(logp).all() and (logp <= 1e-6).all()
  assert np.isfinite(np.asarray(grads)).all()
  # A convex combination of discretized logistics, each of which sums to 1 up to float32 bin
  # edges (2e-5 at the narrowest scale, see test_vae).
  np.testing.assert_allclose(np.exp(logp).sum(0), 1.0, atol=2e-5)


@optimised_jit
def sum_over_b(params: jax.Array, r_levels: jax.Array) -> jax.Array:
  """sum_b P(r, g, b) [R, 256] for the given r levels [R] and all 256 g, from the log-prob of
  every pixel (r, g, b): one r level at a time, summed over b in float32."""
  levels = jnp.asarray(LEVELS)
  gb = jnp.stack(jnp.meshgrid(levels, levels, indexing='ij'), -1)  # [256 g, 256 b, 2]

  def for_r(r):
    pixels = jnp.concatenate([jnp.full((256, 256, 1), r), gb], -1)  # [256, 256, 3]
    return jnp.exp(discretized_logistic_mixture_log_prob(pixels, params, 2)).sum(-1)  # [256]

  return jax.lax.map(for_r, r_levels)


@optimised_jit
def two_and_one_channel_pmfs(params2: jax.Array, params1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """P(r, g) [256, 256] of a C = 2 mixture and P(r) [256] of a C = 1 mixture."""
  rg = jnp.stack(jnp.meshgrid(LEVELS, LEVELS, indexing='ij'), -1)  # [256, 256, 2]
  return (jnp.exp(discretized_logistic_mixture_log_prob(rg, params2, 2)),
          jnp.exp(discretized_logistic_mixture_log_prob(jnp.asarray(LEVELS)[:, None], params1, 2)))


@pytest.mark.parametrize('case', ['edges', 'moderate'])
def test_three_channel_joint_sums_to_one(case):
  """What is summed: exp(log_prob) of C = 3 pixels (r, g, b), over b for each (r, g), and
  checked against the C = 2 mixture of (r, g) made of the same numbers (the b parts of the
  layout dropped): summing out the last channel must leave the earlier channels' mixture.
  'edges': every (r, g), so all 256^3 pixels, and their total is 1. 'moderate': 8 random r
  levels (4 x 256^2 pixels), whose sums over (g, b) must be the C = 1 mixture of r."""
  rng = np.random.default_rng(1)
  if case == 'edges':
    # Means beyond [-1, 1], tiny and clamped scales, saturated coefficients (tanh = +-1),
    # which push the coupled means of g and b to +-2 and beyond.
    logits, means = np.array([2.0, -1.0]), np.array([[0.995, -1.2], [1.0, 0.9], [-1.0, 1.5]])
    log_scales = np.array([[-7.0, -9.0], [-6.5, -3.0], [-8.0, 0.5]])
    coeffs = np.array([[20.0, -20.0], [15.0, 3.0], [20.0, -0.2]])
    r_index = np.arange(256)
  else:
    logits, means = rng.normal(0, 1, 2), rng.uniform(-0.8, 0.8, (3, 2))
    log_scales, coeffs = rng.uniform(-4, -1, (3, 2)), rng.normal(0, 1, (3, 2))
    r_index = rng.choice(256, 4, replace=False)
  rg = np.asarray(sum_over_b(jnp.asarray(pack(logits, means, log_scales, coeffs)),
                             jnp.asarray(LEVELS[r_index])), np.float64)  # [R, 256]
  want_rg, want_r = (np.asarray(a, np.float64) for a in two_and_one_channel_pmfs(
      jnp.asarray(pack(logits, means[:2], log_scales[:2], coeffs[:1])),
      jnp.asarray(pack(logits, means[:1], log_scales[:1]))))
  # Each component's discretized logistics each sum to 1 up to 2e-5 (float32 bin edges).
  np.testing.assert_allclose(rg, want_rg[r_index], rtol=3e-5, atol=1e-8)
  np.testing.assert_allclose(rg.sum(1), want_r[r_index], rtol=5e-5, atol=1e-8)
  if case == 'edges':
    assert abs(rg.sum() - 1.0) < 6e-5, rg.sum()


def level_index(x) -> np.ndarray:
  """k of values on the levels -1 + 2k/255, checking that they are the correctly rounded levels."""
  x = np.asarray(x)
  k = np.rint((x.astype(np.float64) + 1.0) * 127.5).astype(np.int64)
  assert x.dtype == np.float32 and k.min() >= 0 and k.max() <= 255
  np.testing.assert_array_equal(x, LEVELS[k])
  return k


def test_sampler_is_on_the_grid_deterministic_and_matches_the_pmf():
  n, m = 200_000, 3
  # Spread over a few dozen levels, one component partly beyond -1 (mass on the edge level).
  params = jnp.asarray(pack([0.5, -0.3, 0.1], [[0.2, -0.95, 0.6]], [[-3.0, -3.5, -4.5]]))
  batch = jnp.broadcast_to(params, (n, params.size))
  draws = sample(jax.random.PRNGKey(0), batch, 1, m)
  assert draws.shape == (n, 1)
  np.testing.assert_array_equal(draws, sample(jax.random.PRNGKey(0), batch, 1, m))
  assert not np.array_equal(draws, sample(jax.random.PRNGKey(1), batch, 1, m))

  counts = np.bincount(level_index(draws[:, 0]), minlength=256)
  pmf = np.exp(np.asarray(log_prob(jnp.asarray(LEVELS)[:, None], params, m), np.float64))
  assert counts[0] > 1000  # the edge level's tail is drawn too
  tv = 0.5 * np.abs(counts / n - pmf).sum()
  # Sampling noise alone gives E[TV] ~ 0.5 sum_k sqrt(2 p_k / (pi n)) ~ 0.006 here.
  assert tv < 0.02, tv


def test_sampler_matches_a_coupled_two_channel_joint():
  """C = 2: the empirical joint of (r, g) against exp(log_prob) on all 256^2 pixels, with
  coupling strong enough that g's mean is set by r (so the sampler must couple to the drawn r
  exactly as the log-prob does), compared on blocks of 4 x 4 levels."""
  n, m = 400_000, 2
  params = jnp.asarray(pack([0.2, -0.2], [[-0.3, 0.4], [0.1, -0.2]], [[-3.0, -3.5], [-4.0, -3.0]],
                            [[1.2, -0.9]]))
  grid = jnp.stack(jnp.meshgrid(LEVELS, LEVELS, indexing='ij'), -1)  # [256, 256, 2]
  draws, logp = jax.jit(lambda key, p: (
      sample_discretized_logistic_mixture(key, jnp.broadcast_to(p, (n, p.size)), 2, m),
      discretized_logistic_mixture_log_prob(grid, p, m)))(jax.random.PRNGKey(3), params)
  k = level_index(draws)
  counts = np.bincount(k[:, 0] // 4 * 64 + k[:, 1] // 4, minlength=64 * 64)
  pmf = np.exp(np.asarray(logp, np.float64)).reshape(64, 4, 64, 4).sum((1, 3)).reshape(-1)
  assert abs(pmf.sum() - 1) < 1e-4
  tv = 0.5 * np.abs(counts / n - pmf).sum()
  # Sampling noise alone: E[TV] ~ 0.5 sum_cells sqrt(2 p / (pi n)) ~ 0.006 here.
  assert tv < 0.02, tv
  # The coupling itself: g's mean given r is mu_g + tanh(coeff) r per component, so r and g
  # covary as the pmf says: E[r g] within 5 standard errors.
  r, g = (np.asarray(LEVELS, np.float64)[k[:, i]] for i in (0, 1))
  p_rg = np.exp(np.asarray(logp, np.float64))
  levels = LEVELS.astype(np.float64)
  want = np.einsum('ij,i,j->', p_rg, levels, levels)
  assert abs((r * g).mean() - want) < 5 * (r * g).std() / math.sqrt(n), ((r * g).mean(), want)


def test_channel_coupling_makes_g_follow_r_and_b_follow_g():
  n = 4096
  rng = np.random.default_rng(2)
  mean_r = rng.uniform(-0.9, 0.9, n)
  zeros = np.zeros(n)
  for sign in (1.0, -1.0):
    # M = 1; r spread over [-0.9, 0.9]; g and b centred on 0 with tiny scales; coefficients
    # (g, r) = sign * 20, (b, r) = 0, (b, g) = 20 (tanh: sign * 1 and 1).
    params = pack(np.zeros((n, 1)), np.stack([mean_r, zeros, zeros], -1)[..., None],
                  np.stack([zeros - 3.0, zeros - 7.0, zeros - 7.0], -1)[..., None],
                  np.stack([zeros + 20.0 * sign, zeros, zeros + 20.0], -1)[..., None])
    draws = sample(jax.random.PRNGKey(5), jnp.asarray(params), 3, 1)
    k = level_index(draws)  # [n, 3]
    r, g, b = k[:, 0], k[:, 1], k[:, 2]
    assert np.std(r) > 30  # r itself varies widely
    # g = sign * r + logistic noise of scale e^-7 (0.12 of a level step): the same level as r
    # (mirrored, 255 - k, for sign -1) but where the noise passes half a step, P = 2.7%.
    want_g = r if sign > 0 else 255 - r
    assert np.abs(g - want_g).max() <= 2 and (g == want_g).mean() > 0.95, sign
    assert np.abs(b - g).max() <= 2 and (b == g).mean() > 0.95, sign
    assert np.corrcoef(g, r)[0, 1] * sign > 0.999
