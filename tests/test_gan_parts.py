"""Tests of the GAN building blocks: losses and penalties (jaxgen.gan.losses),
spectral normalisation (jaxgen.gan.spectral_norm) and the StyleGAN2 layers
(jaxgen.gan.stylegan2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.gan import losses, spectral_norm, stylegan2

REAL = np.array([2.0, -1.0], np.float32)
FAKE = np.array([0.5, -3.0], np.float32)


def _random(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


# ---------------------------------------------------------------- losses


def _expected_d(kind, r, f, ls=0.0):
  r, f = np.asarray(r, np.float64), np.asarray(f, np.float64)
  if kind in ('minimax', 'nonsaturating'):
    t = 1.0 - ls
    real = -(t * np.log(_sigmoid(r)) + (1.0 - t) * np.log(1.0 - _sigmoid(r)))
    return real.mean() + (-np.log(1.0 - _sigmoid(f))).mean()
  if kind == 'hinge':
    return np.maximum(0.0, 1.0 - r).mean() + np.maximum(0.0, 1.0 + f).mean()
  return f.mean() - r.mean()


def _expected_g(kind, f):
  f = np.asarray(f, np.float64)
  if kind == 'minimax':
    return np.log(1.0 - _sigmoid(f)).mean()
  if kind == 'nonsaturating':
    return (-np.log(_sigmoid(f))).mean()
  return -f.mean()


@pytest.mark.parametrize('kind', losses.KINDS)
def test_losses_match_hand_computation(kind):
  d = losses.d_loss(kind, jnp.asarray(REAL), jnp.asarray(FAKE))
  g = losses.g_loss(kind, jnp.asarray(FAKE))
  assert d.shape == () and d.dtype == jnp.float32 and g.shape == () and g.dtype == jnp.float32
  np.testing.assert_allclose(d, _expected_d(kind, REAL, FAKE), rtol=1e-6)
  np.testing.assert_allclose(g, _expected_g(kind, FAKE), rtol=1e-6)
  # [B, 1] logits give the same numbers.
  np.testing.assert_allclose(losses.d_loss(kind, REAL[:, None], FAKE[:, None]), d, rtol=1e-7)
  np.testing.assert_allclose(losses.g_loss(kind, FAKE[:, None]), g, rtol=1e-7)


def test_losses_hand_numbers():
  # A few values written out, independent of the helpers above.
  sp = lambda x: np.log1p(np.exp(x))  # noqa: E731
  np.testing.assert_allclose(losses.d_loss('hinge', REAL, FAKE), (0 + 2) / 2 + (1.5 + 0) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.d_loss('wgan', REAL, FAKE), -1.25 - 0.5, rtol=1e-6)
  np.testing.assert_allclose(losses.g_loss('wgan-gp', FAKE), 1.25, rtol=1e-6)
  np.testing.assert_allclose(losses.d_loss('minimax', REAL, FAKE),
                             (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.g_loss('minimax', FAKE), -(sp(0.5) + sp(-3)) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses.g_loss('nonsaturating', FAKE), (sp(-0.5) + sp(3)) / 2, rtol=1e-6)


@pytest.mark.parametrize('kind', ['minimax', 'nonsaturating'])
@pytest.mark.parametrize('ls', [0.1, 0.25])
def test_label_smoothing(kind, ls):
  smoothed = losses.d_loss(kind, REAL, FAKE, label_smoothing=ls)
  np.testing.assert_allclose(smoothed, _expected_d(kind, REAL, FAKE, ls), rtol=1e-6)
  # t sp(-r) + (1 - t) sp(r) - sp(-r) = ls * (sp(r) - sp(-r)) = ls * r.
  plain = losses.d_loss(kind, REAL, FAKE)
  np.testing.assert_allclose(smoothed - plain, ls * REAL.mean(), rtol=1e-5)


@pytest.mark.parametrize('kind', ['hinge', 'wgan', 'wgan-gp'])
def test_label_smoothing_refused_for_other_kinds(kind):
  with pytest.raises(ValueError, match='sigmoid cross-entropy'):
    losses.d_loss(kind, REAL, FAKE, label_smoothing=0.1)


def test_unknown_kind_and_bad_shapes():
  with pytest.raises(ValueError, match="known kinds are 'minimax'.*'wgan-gp'"):
    losses.d_loss('lsgan', REAL, FAKE)
  with pytest.raises(ValueError, match='known kinds'):
    losses.g_loss('lsgan', FAKE)
  with pytest.raises(ValueError, match=r'\[B\] or \[B, 1\]'):
    losses.d_loss('hinge', np.zeros((2, 2), np.float32), FAKE)
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.d_loss('minimax', REAL, FAKE, label_smoothing=1.0)


@pytest.mark.parametrize('kind', losses.KINDS)
def test_losses_stable_for_large_logits(kind):
  big = jnp.array([1e4, -1e4, 80.0, -80.0], jnp.float32)
  d = losses.d_loss(kind, big, -big)
  g, grad = jax.value_and_grad(lambda f: losses.g_loss(kind, f))(big)
  assert np.isfinite(d) and np.isfinite(g) and np.all(np.isfinite(grad))


# ---------------------------------------------------------------- penalties

B, H, W, C, J = 3, 2, 2, 2, 4
A_MAT = _random(10, (J, H * W * C), 0.5)


def _tanh_d_jax(x):
  return jnp.sum(jnp.tanh(x.reshape(x.shape[0], -1) @ A_MAT.T), axis=-1)  # [B]


def _tanh_d_np(x_one):
  return np.sum(np.tanh(A_MAT.astype(np.float64) @ x_one.reshape(-1)))


def _fd_grad(x_one, h=1e-5):
  """Central-difference gradient of the numpy d at one sample, float64."""
  flat = x_one.reshape(-1).astype(np.float64)
  grad = np.zeros_like(flat)
  for i in range(flat.size):
    e = np.zeros_like(flat)
    e[i] = h
    grad[i] = (_tanh_d_np(flat + e) - _tanh_d_np(flat - e)) / (2 * h)
  return grad


def test_gradient_penalty_matches_finite_differences():
  real, fake = _random(0, (B, H, W, C)), _random(1, (B, H, W, C))
  rng = jax.random.PRNGKey(3)
  gp = losses.gradient_penalty(_tanh_d_jax, jnp.asarray(real), jnp.asarray(fake), rng)
  eps = np.asarray(jax.random.uniform(rng, (B, 1, 1, 1), jnp.float32), np.float64)
  x = eps * real + (1.0 - eps) * fake  # [B, H, W, C] float64
  norms = np.array([np.linalg.norm(_fd_grad(x[i])) for i in range(B)])
  assert not np.allclose(norms, 1.0, atol=0.1)  # a non-trivial penalty
  np.testing.assert_allclose(gp, np.mean((norms - 1.0) ** 2), rtol=1e-4)


def test_gradient_penalty_zero_for_unit_gradient():
  a = _random(4, (H * W * C,))
  a /= np.linalg.norm(a)
  linear = lambda x: x.reshape(x.shape[0], -1) @ a  # noqa: E731
  real, fake = jnp.asarray(_random(5, (B, H, W, C))), jnp.asarray(_random(6, (B, H, W, C)))
  gp = losses.gradient_penalty(linear, real, fake, jax.random.PRNGKey(0))
  np.testing.assert_allclose(gp, 0.0, atol=1e-6)
  # |grad| = 3 everywhere: (3 - 1)^2 = 4.
  gp3 = losses.gradient_penalty(lambda x: 3.0 * linear(x), real, fake, jax.random.PRNGKey(0))
  np.testing.assert_allclose(gp3, 4.0, rtol=1e-5)


def test_gradient_penalty_parameter_gradient_finite_at_zero_input_gradient():
  real, fake = jnp.asarray(_random(5, (B, H, W, C))), jnp.asarray(_random(6, (B, H, W, C)))

  def penalty(scale):
    return losses.gradient_penalty(lambda x: scale * jnp.sum(x, axis=(1, 2, 3)), real, fake,
                                   jax.random.PRNGKey(0))

  value, grad = jax.value_and_grad(penalty)(0.0)
  np.testing.assert_allclose(value, 1.0, rtol=1e-6)
  assert np.isfinite(grad)


def test_r1_penalty_linear_and_nonlinear():
  a = _random(7, (H * W * C,))
  linear = lambda x: (x.reshape(x.shape[0], -1) @ a)[:, None]  # noqa: E731  [B, 1] scores
  real = _random(8, (B, H, W, C))
  np.testing.assert_allclose(losses.r1_penalty(linear, jnp.asarray(real)),
                             np.sum(a.astype(np.float64) ** 2), rtol=1e-5)
  expected = np.mean([np.sum(_fd_grad(real[i]) ** 2) for i in range(B)])
  np.testing.assert_allclose(losses.r1_penalty(_tanh_d_jax, jnp.asarray(real)), expected, rtol=1e-4)


def test_clip_weights():
  params = {'a': jnp.array([-2.0, -0.005, 0.3]), 'b': {'c': jnp.array([[0.02, -0.02]])}}
  clipped = losses.clip_weights(params, 0.01)
  np.testing.assert_allclose(clipped['a'], [-0.01, -0.005, 0.01])
  np.testing.assert_allclose(clipped['b']['c'], [[0.01, -0.01]])


# ---------------------------------------------------------------- spectral norm


def _top_singular_value(m):
  return np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)[0]


@pytest.mark.parametrize('shape', [(6, 5), (3, 3, 4, 8)], ids=['dense', 'conv'])
def test_spectral_normalize_converges(shape):
  kernel = _random(20, shape)
  matrix = kernel.reshape(-1, shape[-1])  # [M, N]
  u0 = jnp.asarray(_random(21, (shape[-1],)))
  w_sn, u_new, sigma = spectral_norm.spectral_normalize(jnp.asarray(matrix), u0, 500)
  assert w_sn.shape == matrix.shape and u_new.shape == (shape[-1],)
  np.testing.assert_allclose(np.linalg.norm(u_new), 1.0, rtol=1e-5)
  np.testing.assert_allclose(sigma, _top_singular_value(matrix), rtol=1e-3)
  np.testing.assert_allclose(_top_singular_value(w_sn), 1.0, atol=1e-3)
  # No iteration: u is only normalised, and sigma = |W u| / |u|.
  _, u_same, sigma0 = spectral_norm.spectral_normalize(jnp.asarray(matrix), u0, 0)
  np.testing.assert_allclose(u_same, u0 / np.linalg.norm(u0), rtol=1e-6)
  np.testing.assert_allclose(sigma0, np.linalg.norm(matrix @ u0) / np.linalg.norm(u0), rtol=1e-5)


def test_sn_dense_state_and_normalised_kernel():
  layer = spectral_norm.SNDense(5, use_bias=False, n_steps=1)
  x = jnp.eye(6, dtype=jnp.float32)  # rows of x @ K are the rows of K
  variables = layer.init(jax.random.PRNGKey(0), x, update_stats=False)
  assert set(variables) == {'params', 'spectral'}
  u0 = variables['spectral']['u']
  assert u0.shape == (5,)

  _, frozen = layer.apply(variables, x, update_stats=False, mutable=['spectral'])
  np.testing.assert_array_equal(frozen['spectral']['u'], u0)

  @jax.jit
  def step(spectral, _):
    _, updates = layer.apply({'params': variables['params'], 'spectral': spectral}, x,
                             update_stats=True, mutable=['spectral'])
    return updates['spectral'], None

  spectral, _ = jax.lax.scan(step, variables['spectral'], None, length=300)
  assert not np.allclose(spectral['u'], u0)
  kernel_sn = layer.apply({'params': variables['params'], 'spectral': spectral}, x, update_stats=False)
  np.testing.assert_allclose(_top_singular_value(kernel_sn), 1.0, atol=1e-3)
  np.testing.assert_allclose(kernel_sn * _top_singular_value(variables['params']['kernel']),
                             variables['params']['kernel'], rtol=1e-3, atol=1e-5)


def test_sn_conv_normalised_kernel_and_gradients():
  k, c_in, feats = 3, 2, 4
  layer = spectral_norm.SNConv(feats, kernel_size=(k, k), padding='VALID', use_bias=False, n_steps=300)
  # One-hot k x k images: the 1x1 VALID outputs are the rows of the kernel matrix [k*k*C_in, F].
  basis = jnp.eye(k * k * c_in, dtype=jnp.float32).reshape(-1, k, k, c_in)
  variables = layer.init(jax.random.PRNGKey(1), basis, update_stats=False)
  out, updates = layer.apply(variables, basis, update_stats=True, mutable=['spectral'])
  assert out.shape == (k * k * c_in, 1, 1, feats)
  assert not np.allclose(updates['spectral']['u'], variables['spectral']['u'])
  np.testing.assert_allclose(_top_singular_value(out.reshape(-1, feats)), 1.0, atol=1e-3)

  same = spectral_norm.SNConv(feats, strides=(2, 2))
  x = jnp.asarray(_random(2, (2, 8, 8, 3)))
  vs = same.init(jax.random.PRNGKey(2), x, update_stats=False)
  grads = jax.grad(lambda p: jnp.sum(same.apply({'params': p, 'spectral': vs['spectral']}, x,
                                                update_stats=False) ** 2))(vs['params'])
  assert same.apply(vs, x, update_stats=False).shape == (2, 4, 4, feats)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------- StyleGAN2 layers


def _modulated_conv_loop(x, weight, styles, demodulate, eps=1e-8):
  outs = []
  for b in range(x.shape[0]):
    w = weight * styles[b][None, None, :, None]  # [k, k, I, O]
    if demodulate:
      w = w / jnp.sqrt(jnp.sum(w ** 2, axis=(0, 1, 2), keepdims=True) + eps)
    outs.append(jax.lax.conv_general_dilated(x[b:b + 1], w, (1, 1), 'SAME',
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  return jnp.concatenate(outs, axis=0)


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('demodulate', [True, False])
@pytest.mark.parametrize('k', [1, 3])
def test_modulated_conv_matches_per_sample_loop(demodulate, k, fused):
  # fused: one grouped convolution with per-sample weights; not fused: modulated activations.
  x = jnp.asarray(_random(30, (3, 5, 6, 4)))
  weight = jnp.asarray(_random(31, (k, k, 4, 6)))
  styles = jnp.asarray(_random(32, (3, 4)))
  got = stylegan2.modulated_conv(x, weight, styles, demodulate=demodulate, fused=fused)
  assert got.shape == (3, 5, 6, 6)
  np.testing.assert_allclose(got, _modulated_conv_loop(x, weight, styles, demodulate),
                             atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('k', [1, 3])
def test_modulated_conv_upsample_is_the_conv_of_the_upsampled_input(k, fused):
  from jaxgen.nn.blocks import upsample_nearest_2x
  x = jnp.asarray(_random(33, (3, 5, 6, 4)))
  weight = jnp.asarray(_random(34, (k, k, 4, 6)))
  styles = jnp.asarray(_random(35, (3, 4)))
  got = stylegan2.modulated_conv(x, weight, styles, fused=fused, upsample=True)
  assert got.shape == (3, 10, 12, 6)
  np.testing.assert_allclose(got, _modulated_conv_loop(upsample_nearest_2x(x), weight, styles, True),
                             atol=1e-5, rtol=1e-5)
  # Unfused with a 3x3 kernel, a GPU gets the transposed convolution (nn.blocks.upsample_conv).
  lowered = jax.jit(lambda x: stylegan2.modulated_conv(x, weight, styles, fused=fused, upsample=True)
                    ).trace(x).lower(lowering_platforms=('cuda',)).as_text()
  assert ('lhs_dilate = [2, 2]' in lowered) == (k == 3 and not fused)


def test_demodulation_unit_variance_and_style_scale_invariance():
  x = jnp.asarray(_random(40, (4, 32, 32, 32)))
  weight = jnp.asarray(_random(41, (3, 3, 32, 16)))
  styles = jnp.asarray(_random(42, (4, 32)))
  y = stylegan2.modulated_conv(x, weight, styles)
  interior = np.asarray(y)[:, 1:-1, 1:-1, :]  # SAME padding lowers the border's variance
  assert abs(interior.var() - 1.0) < 0.1
  assert abs(np.asarray(y).var() - 1.0) < 0.1
  raw = stylegan2.modulated_conv(x, weight, styles, demodulate=False)
  assert np.asarray(raw).var() > 10.0  # demodulation is what brings it to 1
  scale = jnp.array([0.5, 2.0, 3.0, 10.0])[:, None]
  np.testing.assert_allclose(stylegan2.modulated_conv(x, weight, styles * scale), y,
                             atol=1e-4, rtol=1e-4)


def test_mapping_network():
  net = stylegan2.MappingNetwork(w_dim=16, num_layers=3)
  z = jnp.asarray(_random(50, (5, 8)))
  params = net.init(jax.random.PRNGKey(0), z)
  w = net.apply(params, z)
  assert w.shape == (5, 16) and w.dtype == jnp.float32 and np.all(np.isfinite(w))
  assert set(params['params']) == {'fc0', 'fc1', 'fc2'}
  # The pixel norm makes the output independent of z's scale.
  np.testing.assert_allclose(net.apply(params, 3.0 * z), w, rtol=1e-5, atol=1e-6)
  # Equalised lr: stored weights ~ N(0, 1/0.01^2), effective ~ N(0, 1/fan_in).
  assert 50.0 < float(jnp.std(params['params']['fc1']['kernel'])) < 200.0


def test_truncate():
  w = jnp.asarray(_random(60, (3, 8)))
  w_avg = jnp.asarray(_random(61, (8,)))
  np.testing.assert_array_equal(stylegan2.truncate(w, w_avg, 0.0), jnp.broadcast_to(w_avg, w.shape))
  np.testing.assert_array_equal(stylegan2.truncate(w, w_avg, 1.0), w)
  np.testing.assert_allclose(stylegan2.truncate(w, w_avg, 0.5), (w + w_avg) / 2, rtol=1e-6)


@pytest.mark.parametrize('upsample', [False, True])
def test_modulated_conv_module(upsample):
  layer = stylegan2.ModulatedConv(6, upsample=upsample)
  x = jnp.asarray(_random(70, (2, 4, 4, 3)))
  w = jnp.asarray(_random(71, (2, 16)))
  params = layer.init(jax.random.PRNGKey(0), x, w)
  np.testing.assert_array_equal(params['params']['affine']['bias'], 1.0)
  y = layer.apply(params, x, w)
  side = 8 if upsample else 4
  assert y.shape == (2, side, side, 6) and np.all(np.isfinite(y))


def test_noise_injection():
  layer = stylegan2.NoiseInjection()
  x = jnp.asarray(_random(80, (2, 4, 4, 3)))
  params = layer.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x)
  np.testing.assert_array_equal(params['params']['strength'], 0.0)
  np.testing.assert_array_equal(layer.apply(params, x, rngs={'noise': jax.random.PRNGKey(2)}), x)
  noise = jnp.asarray(_random(81, (2, 4, 4, 1)))
  strength = jnp.array([0.5, -1.0, 2.0])
  got = layer.apply({'params': {'strength': strength}}, x, noise)
  np.testing.assert_allclose(got, x + strength * noise, rtol=1e-6)
  drawn = layer.apply({'params': {'strength': strength}}, x, rngs={'noise': jax.random.PRNGKey(2)})
  assert not np.allclose(drawn, x)
