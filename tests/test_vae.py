"""The VAE family: its likelihoods and KL against closed forms and Monte Carlo, the beta-VAE
loss with KL warm-up, reparameterised gradients, the IWAE bound on real MNIST, the
encode/decode contract of the Gaussian, KL and VQ autoencoders, a VQ train step and
`build`'s refusals.

On a 2-core CPU compiling, not running, is what these tiny models cost, so: the models are
shared between tests by module fixtures; each test compiles what it calls as one program,
with `quick_jit` (no LLVM optimisation: half the compile time); and the module runs with
`jax.threefry_partitionable(False)`, since the partitionable threefry takes ~2 s to compile
for each rank-4 shape (every conv kernel and image-shaped draw) against ~0.2 s. No test
depends on which random numbers it draws, only on how they are reused.
"""

import contextlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import special, stats

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen.errors import JaxgenError
from jaxgen.nn import distributions
from jaxgen.train.state import create_train_state, make_train_step
from jaxgen.vae import model as vae_model
from jaxgen.vae import vq
from conftest import REPO, optimised_jit

SMOKE = str(REPO / 'experiments' / 'vae_mnist.py') + ':smoke'
# The 256 levels -1 + 2k/255, correctly rounded to float32 (computing them in float32 arithmetic
# is a few ulps off, which moves mass between neighbouring bins of a narrow logistic).
LEVELS = np.asarray(-1.0 + 2.0 * np.arange(256) / 255.0, np.float32)


@pytest.fixture(scope='module', autouse=True)
def _quick_prng_compiles():
  partitionable = getattr(jax, 'threefry_partitionable', None)
  with partitionable(False) if partitionable is not None else contextlib.nullcontext():
    yield


def quick_jit(fun, **kwargs):
  """jax.jit, compiled without LLVM's optimisations: for programs that run once or twice."""
  return jax.jit(fun, compiler_options={'xla_backend_optimization_level': 0}, **kwargs)


def tiny_config(image_shape=(28, 28, 1), **model) -> ml_collections.ConfigDict:
  """A small conv VAE's config: `model` overrides fields of `model`, and beta etc. of `vae`."""
  objective = {k: model.pop(k) for k in ('beta', 'warmup_steps', 'commitment', 'codebook_decay')
               if k in model}
  cfg = dict(kind='gaussian', network='conv', hidden=(32,), ch=4, ch_mult=(1, 2), num_res_blocks=1,
             latent_dim=3, spatial=False, num_codes=8, dtype='float32',
             likelihood='bernoulli' if image_shape[-1] == 1 else 'logistic')
  cfg.update(model)
  return ml_collections.ConfigDict({'model': cfg, 'vae': objective})


def random_images(shape, seed=0) -> jax.Array:
  """Images on the 8-bit levels, uniformly at random."""
  return jnp.asarray(LEVELS[np.random.default_rng(seed).integers(0, 256, shape)])


def tiny_model(image_shape=(28, 28, 1), batch_size=2, seed=0, **model):
  """(model, params, images [B, H, W, C] in [-1, 1])."""
  vae = vae_model.build(tiny_config(image_shape, **model), image_shape)
  images = random_images((batch_size, *image_shape), seed + 1)
  params = quick_jit(vae.init)(jax.random.PRNGKey(seed), {'image': images})
  return vae, params, images


def tree_dot(a, b) -> float:
  return sum(float(np.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def leaf_at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def in_range(images, low=-1.0, high=1.0) -> bool:
  images = np.asarray(images)
  return bool(np.isfinite(images).all() and images.min() >= low and images.max() <= high)


# ---------------------------------------------------------------- distributions


@pytest.mark.parametrize('mean, log_var', [(0.0, 0.0), (1.5, -1.0), (-0.7, 1.2), (3.0, -4.0)])
def test_gaussian_kl_standard_matches_monte_carlo(mean, log_var):
  n = 200_000
  sigma = math.exp(0.5 * log_var)
  z = mean + sigma * np.random.default_rng(0).standard_normal(n)
  log_ratio = stats.norm.logpdf(z, mean, sigma) - stats.norm.logpdf(z, 0.0, 1.0)  # log q - log p
  estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(n)
  kl = float(distributions.gaussian_kl_standard(jnp.float32(mean), jnp.float32(log_var)))
  assert abs(kl - estimate) < 5 * stderr + 1e-6, (kl, estimate, stderr)
  np.testing.assert_allclose(kl, 0.5 * (mean**2 + sigma**2 - 1 - log_var), rtol=1e-6, atol=1e-7)


def test_gaussian_kl_standard_is_zero_at_the_prior_and_elementwise():
  assert float(distributions.gaussian_kl_standard(jnp.zeros(()), jnp.zeros(()))) == 0.0
  kl = distributions.gaussian_kl_standard(jnp.ones((2, 3, 4)), jnp.full((2, 3, 4), -1.0))
  assert kl.shape == (2, 3, 4)
  np.testing.assert_allclose(kl, 0.5 * (1 + math.exp(-1.0) - 1 + 1), rtol=1e-6)


@pytest.mark.parametrize('log_scale', [-6.0, -4.0, -2.0, 0.0, 2.0])
def test_discretized_logistic_sums_to_one_over_the_256_levels(log_scale):
  # Means across and well beyond [-1, 1], on a fine grid so bins are hit at every offset.
  means = np.concatenate([np.linspace(-3.0, 3.0, 1201), [-10.0, -1.0, -0.999, 0.999, 1.0, 10.0]])
  logp = distributions.discretized_logistic_log_prob(jnp.asarray(LEVELS)[None, :],
                                                     jnp.asarray(means, jnp.float32)[:, None],
                                                     jnp.float32(log_scale))
  logp = np.asarray(logp, np.float64)  # [M, 256]
  assert np.isfinite(logp).all() and (logp <= 1e-6).all()
  total = np.exp(logp).sum(-1)
  worst = int(np.argmax(abs(total - 1.0)))
  assert abs(total[worst] - 1.0) < 1e-5, (means[worst], total[worst])


def test_discretized_logistic_at_the_narrowest_scale_the_model_allows():
  # log_scale = -7 (the VAE's floor): the density at a bin edge reaches 1 / (4s) ~ 274, so
  # rounding a bin edge x +- 1/255 to float32 (ulp ~ 6e-8) moves up to ~2e-5 between two bins.
  means = np.concatenate([np.linspace(-3.0, 3.0, 1201), [-10.0, 10.0]])
  logp = np.asarray(distributions.discretized_logistic_log_prob(
      jnp.asarray(LEVELS)[None, :], jnp.asarray(means, jnp.float32)[:, None], jnp.float32(-7.0)),
      np.float64)
  assert np.isfinite(logp).all()
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=2e-5)


def test_discretized_logistic_matches_the_logistic_cdf_and_is_finite_far_out():
  mean, log_scale = 0.1, -3.0
  scale = math.exp(log_scale)
  logp = np.asarray(distributions.discretized_logistic_log_prob(
      jnp.asarray(LEVELS), jnp.float32(mean), jnp.float32(log_scale)), np.float64)
  x = LEVELS.astype(np.float64)
  cdf = lambda t: stats.logistic.cdf(t, mean, scale)
  want = cdf(x + 1 / 255) - cdf(x - 1 / 255)
  want[0], want[-1] = cdf(x[0] + 1 / 255), 1.0 - cdf(x[-1] - 1 / 255)  # the edge bins: the tails
  # float32 differences of sigmoids near 1 are good to ~1e-7 absolute.
  np.testing.assert_allclose(np.exp(logp), want, rtol=1e-4, atol=3e-7)
  # Far-away means and tiny scales: finite values and finite gradients at every level.
  f = lambda m, s: distributions.discretized_logistic_log_prob(jnp.asarray(LEVELS), m, s).sum()
  m, s = (a.reshape(-1) for a in jnp.meshgrid(jnp.array([-50.0, -3.0, -1.0, 0.0, 1.0, 3.0, 50.0]),
                                              jnp.array([-7.0, -6.0, 0.0, 3.0])))
  value, grads = jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1))))(m, s)
  assert np.isfinite(np.asarray(value)).all()
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_bernoulli_log_prob_against_scipy_and_stable_for_large_logits():
  logits = np.array([-5.0, -1.0, -0.1, 0.0, 0.3, 2.0, 7.0])
  for x in (0.0, 1.0):
    got = distributions.bernoulli_log_prob(jnp.full(logits.shape, x, jnp.float32),
                                           jnp.asarray(logits, jnp.float32))
    want = stats.bernoulli.logpmf(x, special.expit(logits))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  big = np.array([-1000.0, -100.0, -30.0, 30.0, 100.0, 1000.0], np.float32)
  for x in (0.0, 1.0):
    got = np.asarray(distributions.bernoulli_log_prob(jnp.full(big.shape, x), jnp.asarray(big)),
                     np.float64)
    # log sigmoid(l) = -log(1 + e^-l); for x = 0 the sign of l flips.
    want = -np.logaddexp(0.0, -big.astype(np.float64) if x else big.astype(np.float64))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)  # e^-1000 flushes to zero
  grad = jax.grad(lambda l: distributions.bernoulli_log_prob(jnp.ones_like(l), l).sum())(
      jnp.asarray(big))
  np.testing.assert_allclose(grad, special.expit(-big.astype(np.float64)), atol=1e-7)  # 1 - sigmoid


def test_gaussian_log_prob_against_scipy():
  rng = np.random.default_rng(0)
  x, mean = rng.standard_normal(50), rng.standard_normal(50)
  log_var = rng.uniform(-8.0, 4.0, 50)
  got = distributions.gaussian_log_prob(*(jnp.asarray(a, jnp.float32) for a in (x, mean, log_var)))
  want = stats.norm.logpdf(x, mean, np.exp(0.5 * log_var))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(distributions.gaussian_log_prob(0.0, 0.0, 0.0),
                             -0.5 * math.log(2 * math.pi), rtol=1e-7)


# ---------------------------------------------------------------- the loss


def smoke_mlp(*overrides):
  """The smoke config with a small MLP and a Gaussian likelihood, for 8x8 grayscale images."""
  return config_lib.load_config(SMOKE, ['model.network=mlp', 'model.hidden=(16,)', 'model.pixel_window=0',
                                        'model.likelihood=gaussian', *overrides])


@pytest.fixture(scope='module')
def small_params():
  """Parameters and a batch shared by every objective of the `smoke_mlp` network."""
  vae = vae_model.build(smoke_mlp(), (8, 8, 1))
  images = random_images((4, 8, 8, 1), 1)
  return quick_jit(vae.init)(jax.random.PRNGKey(0), {'image': images}), images


@pytest.mark.parametrize('beta, warmup', [(0.5, 10), (4.0, 6), (2.0, 0)])
def test_loss_is_recon_plus_warmed_up_beta_times_kl(small_params, beta, warmup):
  params, images = small_params
  vae = vae_model.build(smoke_mlp(f'vae.beta={beta}', f'vae.warmup_steps={warmup}'), (8, 8, 1))
  rng = jax.random.PRNGKey(7)
  w = warmup or 10
  steps = (0, w // 2, w, 2 * w)

  @quick_jit
  def losses(params):
    with_step = [vae.loss(params, {'image': images, 'step': jnp.int32(s)}, rng) for s in steps]
    return with_step, vae.loss(params, {'image': images}, rng)  # the latter without a step

  with_step, (loss_no_step, _) = losses(params)
  for step, (loss, m) in zip(steps, with_step):
    beta_t = beta * min(1.0, step / warmup) if warmup else beta
    np.testing.assert_allclose(m['beta'], beta_t, rtol=1e-6)
    np.testing.assert_allclose(loss, m['recon'] + beta_t * m['kl'], rtol=1e-6)
    assert float(m['loss']) == float(loss)
    np.testing.assert_allclose(m['nelbo'], m['recon'] + m['kl'], rtol=1e-6)
    assert float(m['kl']) > 0
    # The same rng: recon and kl do not depend on the step.
    first = with_step[0][1]
    np.testing.assert_allclose([m['recon'], m['kl']], [first['recon'], first['kl']], rtol=1e-6)
  if warmup:  # no KL at all at step 0
    np.testing.assert_allclose(with_step[0][0], with_step[0][1]['recon'], rtol=1e-6)
  np.testing.assert_allclose(loss_no_step, with_step[0][0], rtol=1e-6)  # no step: step 0


def test_train_step_hands_the_step_to_the_warm_up(small_params):
  params, images = small_params
  vae = vae_model.build(smoke_mlp('vae.beta=3.0', 'vae.warmup_steps=8'), (8, 8, 1))
  optimizer = optax.adam(1e-3)
  step = quick_jit(make_train_step(vae.loss, optimizer, ema_decay=0.9))
  state = create_train_state(params, optimizer, jax.random.PRNGKey(2))
  for s, want in ((0, 0.0), (2, 0.75), (8, 3.0), (20, 3.0)):
    _, metrics = step(state.replace(step=jnp.int32(s)), {'image': images})
    np.testing.assert_allclose(metrics['beta'], want, rtol=1e-6)
    np.testing.assert_allclose(metrics['loss'], metrics['recon'] + want * metrics['kl'], rtol=1e-6)


def test_beta_at():
  cfg = vae_model.ObjectiveConfig(beta=2.0, warmup_steps=4)
  got = [float(vae_model.beta_at(cfg, jnp.int32(s))) for s in (0, 1, 2, 4, 100)]
  assert got == [0.0, 0.5, 1.0, 2.0, 2.0]
  assert float(vae_model.beta_at(vae_model.ObjectiveConfig(beta=0.25), jnp.int32(0))) == 0.25


# ---------------------------------------------------------------- reparameterised gradients


@pytest.mark.parametrize('likelihood, beta', [('gaussian', 0.0), ('logistic', 1.0)])
def test_encoder_gradient_flows_through_the_sample_and_matches_finite_differences(likelihood, beta):
  """With beta = 0 the loss reaches the encoder only through z = mean + exp(log_var / 2) eps.

  In float64, but the networks hand back float32 (their outputs are cast), so the loss carries
  ~1e-7 relative noise: a step of 0.02 along a unit direction keeps that noise and the O(h^2)
  truncation both well under the tolerance.
  """
  with jax.enable_x64(True):
    image_shape = (6, 6, 1)
    config = tiny_config(image_shape, network='mlp', hidden=(16,), latent_dim=3,
                         likelihood=likelihood, beta=beta, dtype='float64')
    vae = vae_model.build(config, image_shape)
    images = np.asarray(random_images((4, *image_shape), 1), np.float64)
    params = quick_jit(vae.init)(jax.random.PRNGKey(0), {'image': images})
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    rng = jax.random.PRNGKey(3)  # fixes eps (and everything else)

    def loss_of_encoder(encoder):
      return vae.loss({**params, 'encoder': encoder}, {'image': images}, rng)[0]

    rng_dir = np.random.default_rng(4)
    direction = jax.tree.map(lambda p: rng_dir.standard_normal(p.shape), params['encoder'])
    direction = jax.tree.map(lambda d: d / math.sqrt(tree_dot(direction, direction)), direction)
    h = 0.02

    @quick_jit
    def grad_and_steps(encoder):
      along = lambda t: loss_of_encoder(jax.tree.map(lambda p, d: p + t * d, encoder, direction))
      return jax.grad(loss_of_encoder)(encoder), along(h), along(-h)

    grad, plus, minus = grad_and_steps(params['encoder'])
    # The log-variance half of the last layer reaches the loss only through the sample's spread
    # (and the KL): with beta = 0 its gradient is nonzero only if the sample carries it.
    kernel = np.asarray(grad['Dense_1']['kernel'])  # [hidden, 2Z]: means, then log-variances
    assert kernel.shape == (16, 6)
    assert np.abs(kernel[:, 3:]).max() > 1e-4 and np.abs(kernel[:, :3]).max() > 1e-4
    analytic = tree_dot(grad, direction)
    assert abs(analytic) > 1e-2
    np.testing.assert_allclose(analytic, (float(plus) - float(minus)) / (2 * h), rtol=2e-3)


# ---------------------------------------------------------------- ELBO and the IWAE bound


@pytest.fixture(scope='module')
def trained_mlp(mnist_env):
  """A tiny MLP VAE trained for 300 full-batch steps on the first 256 MNIST test images.

  Returns (model, params, images, negative ELBO at the first step, at the last).
  """
  data_config = ml_collections.ConfigDict({'name': 'mnist', 'random_flip': False})
  images = jnp.asarray(next(data_lib.eval_batches(data_config, batch_size=256))['image'])
  config = tiny_config(network='mlp', hidden=(64,), latent_dim=8, likelihood='bernoulli')
  vae = vae_model.build(config, (28, 28, 1))
  params = quick_jit(vae.init)(jax.random.PRNGKey(0), {'image': images})
  optimizer = optax.adam(3e-3)
  step = make_train_step(vae.loss, optimizer, ema_decay=0.0)

  # The 300 steps as one compiled loop, optimised.
  @optimised_jit
  def train(state, batch):
    return jax.lax.scan(lambda state, _: step(state, batch), state, length=300)

  state, metrics = train(create_train_state(params, optimizer, jax.random.PRNGKey(1)),
                         {'image': images})
  nelbo = np.asarray(metrics['nelbo'])  # [300]
  return vae, state.params, images, float(nelbo[0]), float(nelbo[-1])


def test_training_lowers_the_negative_elbo(trained_mlp):
  _, _, _, first, last = trained_mlp
  assert np.isfinite(last) and last < first - 100, (first, last)  # ~600 -> ~130 nats


def test_iwae_bound_tightens_with_k_and_k1_is_the_elbo(trained_mlp):
  vae, params, images, _, _ = trained_mlp
  rng = jax.random.PRNGKey(11)  # the same for every K

  @quick_jit
  def evaluate(params, images):
    batch = {'image': images}
    bounds = {k: vae.nll(params, batch, rng, num_samples=k) for k in (1, 10, 100)}
    # By hand: the targets and keys nll uses, its one sample for K = 1, its weights for K = 100.
    rng_bin, rng_z = jax.random.split(rng)
    x = vae._targets(images, rng_bin)  # pylint: disable=protected-access
    mean, log_var = vae._posterior(params, images)  # pylint: disable=protected-access
    std = jnp.exp(0.5 * log_var)
    z = mean + std * jax.random.normal(jax.random.split(rng_z, 1)[0], mean.shape)
    log_px = vae._log_likelihood(vae._decode_raw(params, z), x)  # pylint: disable=protected-access
    log_w = vae.log_weights(params, images, x, rng_z, 100)
    return bounds, (z, mean, std, log_px), log_w, vae.loss(params, batch, rng)[1]

  bounds, sample, log_w, metrics = evaluate(params, images)
  bounds = {k: np.asarray(b, np.float64) for k, b in bounds.items()}
  assert all(b.shape == (256,) and np.isfinite(b).all() for b in bounds.values())
  means = {k: b.mean() for k, b in bounds.items()}
  assert means[1] >= means[10] - 1e-3 and means[10] >= means[100] - 1e-3, means
  assert means[1] - means[100] > 0.5, means  # a real gap, not rounding

  # K = 100 is -log mean_k w_k of the log-weights [K, B], never above their mean (Jensen).
  log_w = np.asarray(log_w, np.float64)
  assert log_w.shape == (100, 256) and np.isfinite(log_w).all()
  np.testing.assert_allclose(bounds[100], -(special.logsumexp(log_w, 0) - math.log(100)), rtol=1e-6)
  assert (bounds[100] <= -log_w.mean(0) + 1e-4).all()

  # K = 1 is the single-sample negative ELBO -[log p(x|z) + log p(z) - log q(z|x)].
  z, mean, std, log_px = (np.asarray(a, np.float64) for a in sample)
  log_pz = stats.norm.logpdf(z).sum(-1)
  log_qz = stats.norm.logpdf(z, mean, std).sum(-1)
  np.testing.assert_allclose(bounds[1], -(log_px + log_pz - log_qz), rtol=1e-5, atol=1e-3)

  # Its expectation is the loss's nelbo (with the analytic KL), for the same binarized images;
  # both are single-sample estimates, so the difference of the means has a standard error of
  # about sqrt(2 sum_b var_b(log w)) / B.
  stderr = math.sqrt(2 * log_w.var(0).sum()) / log_w.shape[1]
  assert abs(means[1] - float(metrics['nelbo'])) < 5 * stderr, (means[1], metrics['nelbo'], stderr)

  with pytest.raises(JaxgenError, match='at least 1'):
    vae.nll(params, {'image': images}, rng, num_samples=0)


# ---------------------------------------------------------------- encode / decode


@pytest.fixture(scope='module')
def mlp2():
  """An MLP VAE with a 2-d latent on 28x28 grayscale images."""
  return tiny_model((28, 28, 1), batch_size=3, network='mlp', latent_dim=2)


@pytest.fixture(scope='module')
def vqvae():
  """A VQ-VAE: 28x28 -> a 7x7 grid of 16 codes of dimension 4."""
  return tiny_model((28, 28, 1), batch_size=4, kind='vq', ch_mult=(1, 2, 2), spatial=True,
                    latent_dim=4, num_codes=16, likelihood='logistic', codebook_decay=0.8,
                    num_res_blocks=0)


def encode_decode(vae, params, images):
  """The public encode/decode functions on `images`, compiled as one program."""

  @quick_jit
  def run(params, images):
    z = vae.encode(params, images)
    out = {'z': z, 'decoded': vae.decode(params, z),
           'reconstructed': vae.reconstruct(params, images),
           'samples': vae.sample(params, jax.random.PRNGKey(4), 2)}
    if vae.config.kind != 'vq':
      out['z_sample'] = vae.encode(params, images, jax.random.PRNGKey(9))
      out['loss'] = vae.loss(params, {'image': images}, jax.random.PRNGKey(0))
    return out

  return run(params, images)


def check_gaussian_latent(vae, params, images, latent_shape):
  b = images.shape[0]
  assert vae.latent_shape == latent_shape
  out = encode_decode(vae, params, images)
  assert out['z'].shape == (b, *latent_shape) and out['z'].dtype == jnp.float32
  assert out['z_sample'].shape == (b, *latent_shape) and not np.allclose(out['z'], out['z_sample'])
  assert out['decoded'].shape == images.shape and in_range(out['decoded'])
  np.testing.assert_allclose(out['reconstructed'], out['decoded'], atol=1e-6)
  assert out['samples'].shape == (2, *images.shape[1:]) and in_range(out['samples'])
  loss, metrics = out['loss']
  assert np.isfinite(float(loss)) and float(metrics['kl']) > 0
  np.testing.assert_allclose(metrics['nelbo'], metrics['recon'] + metrics['kl'], rtol=1e-5)


def test_mlp_vector_latent_encode_decode(mlp2):
  check_gaussian_latent(*mlp2, (2,))


def test_conv_vector_latent_encode_decode_with_odd_sizes():
  # 15 -> 8 -> 4 on the way down, and exactly 15 again on the way up.
  vae, params, images = tiny_model((15, 15, 3), batch_size=2, ch_mult=(1, 2, 2), latent_dim=5,
                                   num_res_blocks=0)
  assert vae.config.likelihood == 'logistic'
  check_gaussian_latent(vae, params, images, (5,))


def test_kl_autoencoder_has_a_latent_grid():
  vae, params, images = tiny_model((28, 28, 1), batch_size=2, ch_mult=(1, 2, 2), spatial=True,
                                   latent_dim=4, likelihood='logistic', num_res_blocks=0)
  check_gaussian_latent(vae, params, images, (7, 7, 4))


def test_vq_encode_gives_code_indices_and_decode_takes_them(vqvae):
  vae, params, images = vqvae
  assert set(params) == {'encoder', 'decoder', 'codebook'}
  assert vae.latent_shape == (7, 7, 4)
  out = encode_decode(vae, params, images)
  codes = out['z']
  assert codes.shape == (4, 7, 7) and codes.dtype == jnp.int32
  assert int(codes.min()) >= 0 and int(codes.max()) < 16
  assert out['decoded'].shape == (4, 28, 28, 1) and in_range(out['decoded'])
  np.testing.assert_allclose(out['reconstructed'], out['decoded'], atol=1e-6)
  assert out['samples'].shape == (2, 28, 28, 1) and in_range(out['samples'])
  with pytest.raises(JaxgenError, match='discrete latents'):
    vae.interpolate(params, images[0], images[1], 3)
  with pytest.raises(JaxgenError, match='no likelihood'):
    vae.nll(params, {'image': images}, jax.random.PRNGKey(0))
  with pytest.raises(JaxgenError, match='2-d Gaussian latent'):
    vae.manifold(params, 3)


def test_interpolate_ends_at_the_two_reconstructions(mlp2):
  vae, params, images = mlp2

  @quick_jit
  def run(params, a, b):
    za, zb = vae.encode(params, jnp.stack([a, b]))
    middles = jnp.stack([(za + zb) / 2, vae_model.slerp(za, zb, jnp.array([0.5]))[0]])
    return ({m: vae.interpolate(params, a, b, 5, method=m) for m in ('linear', 'spherical')},
            vae.decode(params, jnp.stack([za, zb])), vae.decode(params, middles))

  paths, ends, middles = run(params, images[0], images[1])
  for i, (method, path) in enumerate(paths.items()):
    assert path.shape == (5, 28, 28, 1) and in_range(path)
    np.testing.assert_allclose(path[0], ends[0], atol=1e-5, err_msg=method)
    np.testing.assert_allclose(path[-1], ends[1], atol=1e-5, err_msg=method)
    # The middle of the path is the decoded middle latent, and neither end.
    np.testing.assert_allclose(path[2], middles[i], atol=1e-5, err_msg=method)
    assert np.abs(np.asarray(path[2] - ends[0])).max() > 1e-3
    assert np.abs(np.asarray(path[2] - ends[1])).max() > 1e-3


def test_slerp_keeps_the_norm_and_is_linear_for_parallel_vectors():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((2, 6))
  b *= np.linalg.norm(a) / np.linalg.norm(b)
  t = np.linspace(0.0, 1.0, 9)
  path = np.asarray(vae_model.slerp(jnp.asarray(a), jnp.asarray(b), jnp.asarray(t)), np.float64)
  assert path.shape == (9, 6)
  np.testing.assert_allclose(np.linalg.norm(path, axis=-1), np.linalg.norm(a), rtol=1e-5)
  np.testing.assert_allclose(path[0], a, atol=1e-5)
  np.testing.assert_allclose(path[-1], b, atol=1e-5)
  # Equal angular steps: the angle to a grows linearly in t.
  cos = path @ a / (np.linalg.norm(path, axis=-1) * np.linalg.norm(a))
  omega = np.arccos(np.clip(a @ b / np.linalg.norm(a) ** 2, -1, 1))
  np.testing.assert_allclose(np.arccos(np.clip(cos, -1, 1)), t * omega, atol=1e-3)
  # Parallel (and anti-parallel) endpoints: exactly the straight line.
  for c in (2.5 * a, -a):
    line = np.asarray(vae_model.slerp(jnp.asarray(a), jnp.asarray(c), jnp.asarray(t)))
    np.testing.assert_allclose(line, (1 - t[:, None]) * a + t[:, None] * c, atol=1e-5)
  # A latent grid [h, w, Z] interpolates as one vector: [T, h, w, Z].
  grid = vae_model.slerp(jnp.asarray(a.reshape(1, 2, 3)), jnp.asarray(b.reshape(1, 2, 3)),
                         jnp.asarray(t))
  np.testing.assert_allclose(np.asarray(grid).reshape(9, 6), path, atol=1e-5)


def test_manifold_of_a_2d_latent_and_the_error_for_3d(mlp2):
  vae, params, _ = mlp2
  n = 4
  q = stats.norm.ppf(np.linspace(0.05, 0.95, n))
  # Row-major, x rising to the right and y falling downwards (as on a plot).
  corners = jnp.asarray([[q[0], q[-1]], [q[-1], q[-1]], [q[0], q[0]], [q[-1], q[0]]], jnp.float32)
  grid, want = quick_jit(lambda p: (vae.manifold(p, n), vae.decode(p, corners)))(params)
  assert grid.shape == (n * n, 28, 28, 1) and in_range(grid)
  np.testing.assert_allclose(grid[np.array([0, n - 1, n * (n - 1), n * n - 1])], want, atol=1e-4)
  vae3 = vae_model.build(tiny_config(network='mlp', latent_dim=3), (28, 28, 1))
  with pytest.raises(JaxgenError, match=r'needs a 2-d Gaussian latent.*\(3,\).*latent_dim=2') as e:
    vae3.manifold(None, n)  # refused before the parameters are looked at
  assert '\n' not in str(e.value) and str(e.value).endswith('.')


# ---------------------------------------------------------------- VQ train step


def test_vq_train_step_replaces_the_codebook_by_its_ema_update(vqvae):
  vae, params, images = vqvae
  decay = vae.objective.codebook_decay
  assert decay == 0.8
  optimizer = optax.adam(1e-3)
  state = create_train_state(params, optimizer, jax.random.PRNGKey(0))
  train_step = make_train_step(vae.loss, optimizer, ema_decay=0.9)

  @quick_jit
  def step_and_by_hand(state, images):
    params = state.params
    encoder = vae._encoder()  # pylint: disable=protected-access
    z_e = encoder.apply({'params': params['encoder']}, images)
    indices = vq.nearest_codes(params['codebook']['codebook'], z_e)
    want = vq.ema_update(params['codebook'], z_e, indices, decay)
    return train_step(state, {'image': images}), (z_e, indices, vae.encode(params, images), want)

  (new, metrics), (z_e, indices, codes, want) = step_and_by_hand(state, images)
  assert z_e.shape == (4, 7, 7, 4)
  np.testing.assert_array_equal(indices, codes)
  assert set(new.params['codebook']) == {'codebook', 'cluster_size', 'embed_sum'}
  for key in want:
    np.testing.assert_allclose(new.params['codebook'][key], want[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  np.testing.assert_allclose(new.params['codebook']['cluster_size'].sum(),
                             decay * 16 + (1 - decay) * indices.size, rtol=1e-6)
  assert not np.allclose(new.params['codebook']['codebook'], params['codebook']['codebook'])
  # The parameters' EMA follows the new codebook too: 0.9 old + 0.1 new.
  old_codes, new_codes = params['codebook']['codebook'], new.params['codebook']['codebook']
  np.testing.assert_allclose(new.ema_params['codebook']['codebook'],
                             0.9 * old_codes + 0.1 * new_codes, rtol=1e-5, atol=1e-6)
  # Adam moved every encoder and decoder parameter: all have a gradient, there being no residual
  # block (whose zero-initialised second conv would hold back its first on step one).
  for part in ('encoder', 'decoder'):
    for path, old in jax.tree_util.tree_leaves_with_path(params[part]):
      moved = not np.array_equal(old, leaf_at(new.params[part], path))
      assert moved, (part, jax.tree_util.keystr(path))
  assert int(new.step) == 1

  counts = np.bincount(np.asarray(indices).reshape(-1), minlength=16)
  p = counts / counts.sum()
  np.testing.assert_allclose(metrics['codebook_usage'], (counts > 0).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics['perplexity'], np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))),
                             rtol=1e-5)
  assert 0 < float(metrics['codebook_usage']) <= 1 and 1 <= float(metrics['perplexity']) <= 16
  # The commitment |z_e - sg(e)|^2, summed over an image's latent like recon over its pixels.
  z_q = np.asarray(params['codebook']['codebook'])[np.asarray(indices)]  # [B, h, w, Z]
  commitment = np.square(np.asarray(z_e, np.float64) - z_q).sum((1, 2, 3)).mean()
  np.testing.assert_allclose(metrics['commitment'], commitment, rtol=1e-5)
  np.testing.assert_allclose(metrics['loss'], metrics['recon'] + 0.25 * metrics['commitment'],
                             rtol=1e-6)


# ---------------------------------------------------------------- the pixel head (VLAE decoder)


@pytest.fixture(scope='module')
def headed():
  """A tiny MLP VAE with a 5 x 5 pixel head on 8x8 images: (model, params, cond [3, 8, 8, 2])."""
  vae = vae_model.build(tiny_config((8, 8, 1), network='mlp', hidden=(16,), pixel_window=5,
                                    pixel_features=8, pixel_layers=1, pixel_cond=2), (8, 8, 1))
  params = quick_jit(vae.init)(jax.random.PRNGKey(0), {'image': random_images((2, 8, 8, 1))})
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 3))
  return vae, params, quick_jit(vae._decode_raw)(params, z)


def head_logits(vae, params, cond, x):
  return vae._head().apply({'params': params['pixel_head']}, cond, x)  # [B, H, W, 1]


def test_pixel_head_logit_depends_only_on_earlier_pixels_in_its_window(headed):
  vae, params, cond = headed
  x = jax.random.bernoulli(jax.random.PRNGKey(2), 0.5, (3, 8, 8, 1)).astype(jnp.float32)
  base = np.asarray(head_logits(vae, params, cond, x))[:, :, :, 0]
  for i, j in [(0, 0), (3, 4), (7, 7), (5, 0)]:
    flipped = x.at[:, i, j].set(1.0 - x[:, i, j])
    changed = np.abs(np.asarray(head_logits(vae, params, cond, flipped))[:, :, :, 0] - base).max(0) > 0
    rows, cols = np.nonzero(changed)
    # Exactly the pixels after (i, j) in raster order whose 5 x 5 window holds (i, j).
    expected = {(r, c) for r in range(8) for c in range(8)
                if (r, c) > (i, j) and 0 <= r - i <= 2 and abs(c - j) <= 2}
    assert set(zip(rows.tolist(), cols.tolist())) == expected


def test_pixel_head_at_one_pixel_matches_the_whole_image(headed):
  vae, params, cond = headed
  x = jax.random.bernoulli(jax.random.PRNGKey(3), 0.5, (3, 8, 8, 1)).astype(jnp.float32)
  whole = np.asarray(head_logits(vae, params, cond, x))
  head = vae._head()
  cache = vae_model.masked_conv.pad_cache(x, head.pad)
  at = quick_jit(lambda c, i, j: head.apply({'params': params['pixel_head']}, c, cache, i, j,
                                            method='at'))
  for i in range(8):
    for j in range(8):
      np.testing.assert_allclose(at(cond[:, i, j], i, j), whole[:, i, j], atol=1e-5)


def test_drawn_pixels_equal_a_loop_over_the_whole_image_head(headed):
  """The cached sampler against the plainest reference: for each pixel in raster order, run the
  head on the whole image drawn so far and draw that pixel with key fold_in(rng, n)."""
  vae, params, cond = headed
  rng = jax.random.PRNGKey(4)
  drawn = np.asarray(quick_jit(vae._draw_pixels)(params, cond, rng))
  logits_of = quick_jit(lambda x: head_logits(vae, params, cond, x))
  x = jnp.zeros((3, 8, 8, 1))
  for n in range(64):
    i, j = divmod(n, 8)
    p = jax.nn.sigmoid(logits_of(x)[:, i, j])
    x = x.at[:, i, j].set(jax.random.bernoulli(jax.random.fold_in(rng, n), p).astype(jnp.float32))
  np.testing.assert_array_equal(drawn, np.asarray(x))
  assert set(np.unique(drawn)) <= {0.0, 1.0}


def test_pixel_head_loss_scores_the_targets_through_the_head(headed):
  vae, params, _ = headed
  images = random_images((2, 8, 8, 1), 5)
  rng = jax.random.PRNGKey(6)
  _, metrics = quick_jit(vae.loss)(params, {'image': images}, rng)
  rng_bin, rng_z = jax.random.split(rng)
  x = vae._targets(images, rng_bin)
  mean, log_var = vae._posterior(params, images)
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(rng_z, mean.shape)
  logits = np.asarray(head_logits(vae, params, vae._decode_raw(params, z), x), np.float64)
  recon = -(np.asarray(x) * logits - np.logaddexp(0.0, logits)).sum((1, 2, 3)).mean()
  np.testing.assert_allclose(metrics['recon'], recon, rtol=1e-5)
  samples = quick_jit(lambda p, k: vae.sample(p, k, 2))(params, jax.random.PRNGKey(7))
  assert samples.shape == (2, 8, 8, 1) and set(np.unique(np.asarray(samples))) <= {-1.0, 1.0}


# ---------------------------------------------------------------- build


@pytest.mark.parametrize('overrides, image_shape, match', [
    (dict(kind='diffusion'), (28, 28, 1), r"model.kind='diffusion' must be gaussian or vq"),
    (dict(network='transformer'), (28, 28, 1), r"model.network='transformer' must be mlp or conv"),
    (dict(likelihood='poisson'), (28, 28, 1), r"model.likelihood='poisson' must be one of"),
    (dict(kind='vq', network='mlp'), (28, 28, 1), r'VQ-VAE quantises a latent grid'),
    (dict(kind='vq', spatial=False), (28, 28, 1), r'VQ-VAE quantises a latent grid'),
    (dict(likelihood='bernoulli'), (32, 32, 3), r'bernoulli likelihood is for binarized grayscale'),
    (dict(pixel_window=4), (28, 28, 1), r'model.pixel_window=4 must be an odd window size'),
    (dict(pixel_window=5, likelihood='logistic'), (28, 28, 1), r'pixel head .* needs model.likelihood=bernoulli'),
])
def test_build_rejects_bad_configs_in_one_sentence(overrides, image_shape, match):
  with pytest.raises(JaxgenError, match=match) as e:
    vae_model.build(tiny_config(image_shape, **overrides), image_shape)
  message = str(e.value)
  assert '\n' not in message and message.endswith('.')


def test_build_names_an_unknown_key_and_accepts_the_smoke_config():
  config = tiny_config()
  config.model.widht = 3
  with pytest.raises(JaxgenError, match='unknown config key model.widht'):
    vae_model.build(config, (28, 28, 1))
  vae = vae_model.build(config_lib.load_config(SMOKE), (28, 28, 1))
  assert vae.config.latent_dim == 4 and vae.latent_shape == (4,)
  assert vae_model.build(tiny_config((32, 32, 3)), (32, 32, 3)).config.likelihood == 'logistic'
