"""Tests of the GAN generators and discriminators (jaxgen.gan.networks): shapes
and ranges on MNIST-like and CIFAR-like images, BatchNorm and spectral-norm
state, conditioning, and the StyleGAN2 truncation, style mixing and w_avg."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.gan import networks

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)
B = 4
NUM_UP = {MNIST: 2, CIFAR: 3}
KEY_IMPL = 'unsafe_rbg'


def _key(seed):
  # XLA's compilation of threefry for every new parameter shape dominated this file's CPU
  # time; the networks do not depend on the generator behind the key.
  return jax.random.key(seed, impl=KEY_IMPL)


def _jit(module, method='apply', **kwargs):
  """module.apply (or .init) jitted, keyword arguments bound: spectral norm's fori_loop
  recompiles on every eager call, and a compiled network runs faster than op by op."""
  return jax.jit(functools.partial(getattr(module, method), **kwargs))


def _z(seed, width=16, batch=B):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((batch, width)), jnp.float32)


def _x(seed, shape, batch=B):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)), jnp.float32)


def _labels(*values):
  return jnp.asarray(values, jnp.int32)


def _perturb(params, seed=0, scale=0.3):
  """Adds noise to every parameter, so zero-initialised ones (class gains, noise strengths) matter."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape).astype(np.float32), params)


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _num_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------- DCGAN generator


@pytest.mark.parametrize('shape', [MNIST, CIFAR])
@pytest.mark.parametrize('num_classes', [0, 3])
def test_dcgan_generator_shapes_range_and_batchnorm(shape, num_classes):
  g = networks.DCGANGenerator(shape, ch=8, num_up=NUM_UP[shape], num_classes=num_classes)
  labels = _labels(0, 1, 2, 0) if num_classes else None
  z = _z(0)
  variables = g.init(_key(0), z, labels, train=False)
  assert set(variables) == {'params', 'batch_stats'}
  out, updates = g.apply(variables, z, labels, train=True, mutable=['batch_stats'])
  assert out.shape == (B, *shape) and out.dtype == jnp.float32
  assert np.all(np.abs(out) <= 1.0) and np.all(np.isfinite(out))
  assert _changed(variables['batch_stats'], updates['batch_stats'])
  # Evaluation: running statistics, nothing mutable, deterministic.
  a = g.apply(variables, z, labels, train=False)
  b = g.apply(variables, z, labels, train=False)
  assert a.shape == (B, *shape) and np.all(np.abs(a) <= 1.0)
  np.testing.assert_array_equal(a, b)


def test_dcgan_conditional_batchnorm_uses_labels():
  g = networks.DCGANGenerator(MNIST, ch=8, num_up=2, num_classes=3)
  z = _z(1)
  variables = g.init(_key(0), z, _labels(0, 0, 0, 0), train=False)
  assert 'gamma' in variables['params']['bn_fc'] and 'beta' in variables['params']['bn_fc']
  variables = {**variables, 'params': _perturb(variables['params'])}
  a = g.apply(variables, z, _labels(0, 0, 0, 0), train=False)
  b = g.apply(variables, z, _labels(1, 2, 1, 2), train=False)
  assert np.all(np.abs(a - b).reshape(B, -1).max(axis=1) > 1e-4)  # every sample moves
  with pytest.raises(ValueError, match='labels'):
    g.apply(variables, z, None, train=False)


def test_dcgan_bad_image_shape_raises():
  with pytest.raises(ValueError, match='num_up'):
    networks.DCGANGenerator((30, 30, 1), num_up=2)
  with pytest.raises(ValueError, match='num_up'):
    networks.DCGANGenerator((28, 28, 1), num_up=3)  # 28 / 8 = 3.5
  assert networks.dcgan_base_size((28, 28, 1), 2) == (7, 7)
  assert networks.dcgan_base_size((32, 32, 3), 3) == (4, 4)


def test_dcgan_mnist_parameter_counts():
  # Pins the architecture: Dense 100 -> 7*7*256 (no bias), BN, ConvT 256->128 (no bias), BN,
  # ConvT 128->1 (+bias); D: conv 1->64 (+bias), conv 64->128, BN, Dense 6272 -> 1.
  x, z = _x(0, MNIST, 2), _z(0, 100, 2)
  g = networks.DCGANGenerator(MNIST, ch=64, num_up=2)
  d = networks.DCGANDiscriminator(MNIST, ch=64, num_down=2)
  g_params = jax.eval_shape(functools.partial(g.init, train=False), _key(0), z, None)['params']
  d_params = jax.eval_shape(functools.partial(d.init, train=False), _key(0), x, None)['params']
  assert _num_params(g_params) == 100 * 12544 + 2 * 256 + 16 * 256 * 128 + 2 * 128 + 16 * 128 + 1
  assert _num_params(d_params) == 16 * 64 + 64 + 16 * 64 * 128 + 2 * 128 + 6272 + 1


# ---------------------------------------------------------------- DCGAN discriminator


@pytest.mark.parametrize('shape,norm,sn,num_classes', [
    (MNIST, 'batch', False, 0), (CIFAR, 'batch', False, 3), (MNIST, 'layer', False, 3),
    (CIFAR, 'layer', False, 0), (MNIST, 'none', True, 3), (CIFAR, 'none', True, 0)])
def test_dcgan_discriminator_shapes(shape, norm, sn, num_classes):
  d = networks.DCGANDiscriminator(shape, ch=8, num_down=NUM_UP[shape], norm=norm, spectral_norm=sn,
                                  num_classes=num_classes)
  x = _x(0, shape)
  labels = _labels(0, 1, 2, 0) if num_classes else None
  variables = _jit(d, 'init', train=False)(_key(0), x, labels)
  mutable = [c for c in ('batch_stats', 'spectral') if c in variables]
  assert ('batch_stats' in variables) == (norm == 'batch') and ('spectral' in variables) == sn
  logits, _ = _jit(d, train=True, mutable=mutable)(variables, x, labels)
  assert logits.shape == (B,) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  logits = _jit(d, train=False)(variables, x, labels)
  assert logits.shape == (B,) and np.all(np.isfinite(logits))


def test_dcgan_spectral_norm_state():
  d = networks.DCGANDiscriminator(MNIST, ch=8, norm='none', spectral_norm=True, num_classes=3)
  x, labels = _x(2, MNIST), _labels(0, 1, 2, 1)
  variables = _jit(d, 'init', train=False)(_key(0), x, labels)
  # Every convolution, the dense layer and the projection embedding have a u vector.
  assert set(variables['spectral']) == {'conv0', 'conv1', 'fc', 'embed'}
  _, updates = _jit(d, train=True, mutable=['spectral'])(variables, x, labels)
  for name in ('conv0', 'conv1', 'embed'):  # fc's u [1] is the unit vector +-1 for good
    assert _changed(variables['spectral'][name], updates['spectral'][name]), name
  _, same = _jit(d, train=False, mutable=['spectral'])(variables, x, labels)
  assert not _changed(variables['spectral'], same['spectral'])
  _jit(d, train=False)(variables, x, labels)  # no mutable needed


def test_dcgan_discriminator_bad_options_raise():
  with pytest.raises(ValueError, match='spectral_norm'):
    networks.DCGANDiscriminator(MNIST, norm='batch', spectral_norm=True)
  with pytest.raises(ValueError, match='norm'):
    networks.DCGANDiscriminator(MNIST, norm='group')


@pytest.mark.parametrize('sn', [False, True])
def test_dcgan_projection_depends_on_labels(sn):
  d = networks.DCGANDiscriminator(MNIST, ch=8, norm='none' if sn else 'batch', spectral_norm=sn,
                                  num_classes=3)
  x = _x(3, MNIST)
  variables = _jit(d, 'init', train=False)(_key(0), x, _labels(0, 0, 0, 0))
  apply = _jit(d, train=False)
  a = apply(variables, x, _labels(0, 0, 0, 0))
  b = apply(variables, x, _labels(1, 2, 1, 2))
  assert np.all(np.abs(a - b) > 1e-6)


# ---------------------------------------------------------------- StyleGAN2


def test_stylegan2_sizes():
  assert networks.stylegan2_resolution(MNIST) == 32 and networks.stylegan2_resolution(CIFAR) == 32
  assert networks.stylegan2_resolution((5, 6, 1)) == 8 and networks.stylegan2_resolution((33, 20, 3)) == 64
  assert networks.num_ws(MNIST) == 11 and networks.num_ws((8, 8, 1)) == 5
  assert networks.StyleGAN2Generator(CIFAR).num_ws == 11


def _sg2(shape=MNIST, num_classes=0):
  g = networks.StyleGAN2Generator(shape, z_dim=16, w_dim=16, ch=8, mapping_layers=2,
                                  num_classes=num_classes)
  labels = _labels(0, 1, 2, 0) if num_classes else None
  variables = g.init(_key(0), _z(0), labels, train=False)
  return g, variables, labels


@pytest.mark.parametrize('shape', [MNIST, CIFAR])
@pytest.mark.parametrize('num_classes', [0, 3])
def test_stylegan2_generator_shapes(shape, num_classes):
  g, variables, labels = _sg2(shape, num_classes)
  assert set(variables) == {'params', 'batch_stats'}
  assert variables['batch_stats']['w_avg'].shape == (16,)
  out = g.apply(variables, _z(1), labels, train=False, rngs={'noise': _key(1)})
  assert out.shape == (B, *shape) and out.dtype == jnp.float32 and np.all(np.isfinite(out))
  w = g.apply(variables, _z(1), labels, method='mapping')
  assert w.shape == (B, 16) and w.dtype == jnp.float32
  if num_classes:
    w2 = g.apply(variables, _z(1), _labels(1, 2, 0, 1), method='mapping')
    assert np.all(np.abs(w - w2).max(axis=1) > 1e-6)


def test_stylegan2_w_avg_update():
  g, variables, _ = _sg2()
  z = _z(2)
  _, updates = g.apply(variables, z, None, train=True, mutable=['batch_stats'],
                       rngs={'noise': _key(0)})
  w = g.apply(variables, z, None, method='mapping')
  np.testing.assert_allclose(updates['batch_stats']['w_avg'], 0.005 * np.mean(w, axis=0), rtol=1e-5,
                             atol=1e-7)


def test_stylegan2_truncation_psi0_collapses():
  g, variables, _ = _sg2()
  # A nonzero w_avg, so that psi = 0 picks a nontrivial w.
  variables = {'params': _perturb(variables['params']),
               'batch_stats': {'w_avg': jnp.linspace(-1.0, 1.0, 16)}}
  a = g.apply(variables, _z(3), None, train=False, psi=0.0)
  b = g.apply(variables, _z(4), None, train=False, psi=0.0)
  np.testing.assert_allclose(a[1:], np.broadcast_to(a[:1], a[1:].shape), atol=1e-6)
  np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(g.apply(variables, _z(4), None, train=False, psi=jnp.float32(0.0)), a,
                             atol=1e-6)  # psi as an array (traced under jit)
  with pytest.raises(ValueError, match='w_avg'):
    g.apply({'params': variables['params']}, _z(3), None, train=False, psi=0.5)
  c = g.apply(variables, _z(3), None, train=False, psi=0.7)
  assert np.abs(c - a).max() > 1e-4


def test_stylegan2_style_mixing():
  g, variables, _ = _sg2()
  variables = {**variables, 'params': _perturb(variables['params'])}
  z1, z2 = _z(5), _z(6)
  plain1 = g.apply(variables, z1, None, train=False)
  plain2 = g.apply(variables, z2, None, train=False)
  none_mixed = g.apply(variables, z1, None, train=False, mix_z=z2, mix_cutoff=g.num_ws)
  all_mixed = g.apply(variables, z1, None, train=False, mix_z=z2, mix_cutoff=0)
  half = g.apply(variables, z1, None, train=False, mix_z=z2, mix_cutoff=4)
  np.testing.assert_array_equal(none_mixed, plain1)
  np.testing.assert_array_equal(all_mixed, plain2)
  assert np.abs(half - plain1).max() > 1e-4 and np.abs(half - plain2).max() > 1e-4
  # The same through synthesis with hand-built ws.
  w1 = g.apply(variables, z1, None, method='mapping')
  w2 = g.apply(variables, z2, None, method='mapping')
  ws = jnp.concatenate([jnp.repeat(w1[:, None], 4, 1), jnp.repeat(w2[:, None], g.num_ws - 4, 1)], 1)
  np.testing.assert_allclose(g.apply(variables, ws, train=False, method='synthesis'), half, atol=1e-6)


def test_stylegan2_noise_rng():
  g, variables, _ = _sg2()
  variables = {**variables, 'params': _perturb(variables['params'])}  # nonzero noise strengths
  z = _z(7)
  key = _key(3)
  a = g.apply(variables, z, None, train=False, rngs={'noise': key})
  b = g.apply(variables, z, None, train=False, rngs={'noise': key})
  c = g.apply(variables, z, None, train=False, rngs={'noise': _key(4)})
  quiet = g.apply(variables, z, None, train=False)  # no rng: zero noise, deterministic
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-5 and np.abs(a - quiet).max() > 1e-5


def test_stylegan2_synthesis_gradient():
  g, variables, _ = _sg2()
  params = {'params': variables['params']}  # synthesis needs no batch_stats
  ws = jax.random.normal(_key(5), (2, g.num_ws, 16))

  def f(ws):
    return jnp.sum(g.apply(params, ws, train=True, method='synthesis') ** 2)

  grad = jax.jit(jax.grad(f))(ws)
  assert grad.shape == ws.shape and np.all(np.isfinite(grad))
  assert np.all(np.abs(grad).sum(axis=(0, 2)) > 0)  # every style reaches the image


@pytest.mark.parametrize('shape', [MNIST, CIFAR])
@pytest.mark.parametrize('num_classes', [0, 3])
def test_stylegan2_discriminator(shape, num_classes):
  d = networks.StyleGAN2Discriminator(shape, ch=8, num_classes=num_classes)
  x = _x(8, shape)
  labels = _labels(0, 1, 2, 0) if num_classes else None
  variables = d.init(_key(0), x, labels, train=False)
  assert set(variables) == {'params'}
  assert 'block32' in variables['params'] and 'block8' in variables['params']  # 28 padded to 32
  logits = d.apply(variables, x, labels, train=True)
  assert logits.shape == (B,) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  assert d.apply(variables, x[:3], labels[:3] if num_classes else None, train=False).shape == (3,)
  if num_classes:
    other = d.apply(variables, x, _labels(1, 2, 0, 1), train=True)
    assert np.all(np.abs(logits - other) > 1e-6)


def test_minibatch_stddev_matches_numpy():
  assert [networks.mbstd_group_size(b, 4) for b in (1, 2, 3, 4, 6, 7, 8)] == [1, 2, 3, 4, 3, 1, 4]
  x = np.random.default_rng(9).standard_normal((6, 2, 2, 3)).astype(np.float32)
  out = np.asarray(networks.minibatch_stddev(jnp.asarray(x), 3))
  assert out.shape == (6, 2, 2, 4)
  np.testing.assert_array_equal(out[..., :3], x)
  groups = x.reshape(3, 2, 2, 2, 3)  # samples b and b + 2, b + 4 together
  stat = np.sqrt(groups.var(axis=0) + 1e-8).mean(axis=(1, 2, 3))  # [2]
  for b in range(6):
    np.testing.assert_allclose(out[b, ..., 3], stat[b % 2], rtol=1e-5)


def test_equalized_conv_scaling():
  conv = networks.EqualizedConv(5, 3)
  x = _x(10, (6, 6, 4), 2)
  variables = conv.init(_key(0), x)
  kernel = variables['params']['kernel']
  expected = jax.lax.conv_general_dilated(x, kernel / np.sqrt(3 * 3 * 4), (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('kind', ['dcgan', 'stylegan2'])
def test_bfloat16_compute_float32_outputs(kind):
  shape = (8, 8, 1)  # tiny: only the dtypes are under test
  if kind == 'dcgan':
    g = networks.DCGANGenerator(shape, ch=4, num_up=1, dtype=jnp.bfloat16)
    d = networks.DCGANDiscriminator(shape, ch=4, num_down=1, norm='none', spectral_norm=True,
                                    dtype=jnp.bfloat16)
  else:
    g = networks.StyleGAN2Generator(shape, w_dim=8, ch=4, mapping_layers=1, dtype=jnp.bfloat16)
    d = networks.StyleGAN2Discriminator(shape, ch=4, dtype=jnp.bfloat16)
  z, x = _z(11, 8, 2), _x(11, shape, 2)
  gv = _jit(g, 'init', train=False)(_key(0), z, None)
  dv = _jit(d, 'init', train=False)(_key(0), x, None)
  images = _jit(g, train=False)(gv, z, None)
  logits = _jit(d, train=False)(dv, images, None)
  assert images.shape == (2, *shape) and images.dtype == jnp.float32 and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves((gv['params'], dv['params'])))
  assert np.all(np.isfinite(images)) and np.all(np.isfinite(logits))
