"""The autoregressive family through its contract: cached and naive samplers draw the same
images for the same key, exact likelihoods (a uniform model is 8 bits/dim), options and
config errors, and end to end on MNIST for every experiment (smoke)."""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import cli, config as config_lib, families
from jaxgen.autoregressive import model as ar_model
from jaxgen.errors import JaxgenError
from jaxgen.eval import metrics as metrics_lib
from jaxgen.train import checkpoint, trainer
from conftest import REPO


def _config(**model) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'autoregressive'
  config.model = dict(features=12, num_layers=2, kernel=3, kernel_rest=3, head=8, num_heads=2,
                      num_resnets=1, num_mixtures=2)
  config.model.update(model)
  config.sample = dict(sampler='cached', temperature=1.0, label=-1)
  return config


@functools.partial(jax.jit, static_argnums=0)
def _random_params(model, rng):
  """Parameters with every leaf non-zero, so that samples depend on everything."""
  params = model.init(rng, {'image': jnp.zeros((1, *model.image_shape)),
                            'label': jnp.zeros((1,), jnp.int32)})
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(tree, [a + 0.5 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


# Each network once (conditional or RGB where that adds a path); palettes only change the
# tokens (test_palette.py), not the sampler.
CASES = [
    ('pixelcnn', 'binary', (6, 5, 1), 3),
    ('gated', 'categorical', (4, 3, 3), 0),
    ('transformer', 'binary', (6, 5, 1), 3),
]


@pytest.mark.parametrize('network,pixels,shape,classes', CASES)
def test_cached_sampling_equals_naive(network, pixels, shape, classes):
  model = families.build(_config(network=network, pixels=pixels, num_classes=classes,
                                 palette_levels=4), shape)
  params = _random_params(model, jax.random.PRNGKey(1))
  rng = jax.random.PRNGKey(2)
  labels = jnp.array([0, 1, 2, 0]) if classes else None
  sample = jax.jit(lambda p, r, y, sampler: model.sample(p, r, 4, sampler=sampler, labels=y),
                   static_argnums=3)
  cached = np.asarray(sample(params, rng, labels, 'cached'))
  naive = np.asarray(sample(params, rng, labels, 'naive'))
  assert cached.shape == (4, *shape)
  np.testing.assert_array_equal(cached, naive)
  assert len(np.unique(cached)) > 1  # a real draw, not a constant image
  assert not np.array_equal(cached, np.asarray(sample(params, jax.random.PRNGKey(3), labels, 'cached')))
  if classes:  # the label reaches the samples
    assert not np.array_equal(cached, np.asarray(sample(params, rng, (labels + 1) % 3, 'cached')))
  levels = {'binary': 2, 'palette': 4, 'categorical': 256}[pixels]
  np.testing.assert_allclose(np.unique(np.round((cached + 1) / 2 * (levels - 1), 4)) % 1, 0, atol=1e-4)


@pytest.mark.parametrize('network,pixels,shape', [('gated', 'categorical', (4, 3, 3)),
                                                  ('transformer', 'categorical', (3, 3, 3))])
def test_uniform_model_is_8_bits_per_dim(network, pixels, shape):
  """All-zero parameters give all-zero logits: every 8-bit value has probability 1/256."""
  model = families.build(_config(network=network, pixels=pixels), shape)
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(0), (3, *shape), minval=-1, maxval=1),
           'label': jnp.zeros((3,), jnp.int32)}
  params = jax.tree.map(jnp.zeros_like, model.init(jax.random.PRNGKey(0), batch))
  nll = np.asarray(model.nll(params, batch, jax.random.PRNGKey(1)))
  np.testing.assert_allclose(nll, math.prod(shape) * math.log(256), rtol=1e-6)
  np.testing.assert_allclose(metrics_lib.bits_per_dim(float(nll[0]), math.prod(shape)), 8.0, rtol=1e-6)


def test_binary_likelihood_by_hand():
  """With zero parameters each binarized pixel has probability 1/2: NLL = H W log 2; and the
  loss's bpd metric is the NLL over H W C log 2."""
  model = families.build(_config(network='gated', pixels='binary'), (6, 5, 1))
  batch = {'image': jnp.zeros((2, 6, 5, 1)), 'label': jnp.zeros((2,), jnp.int32)}
  params = jax.tree.map(jnp.zeros_like, model.init(jax.random.PRNGKey(0), batch))
  np.testing.assert_allclose(model.nll(params, batch, jax.random.PRNGKey(0)), 30 * math.log(2), rtol=1e-6)
  loss, metrics = model.loss(params, batch, jax.random.PRNGKey(0))
  np.testing.assert_allclose(metrics['bpd'], 1.0, rtol=1e-6)


def test_sample_options_and_config_errors():
  model = families.build(_config(network='gated', pixels='binary'), (6, 5, 1))
  assert model.sample_options(sampler='naive', temperature=0.5)['sampler'] == 'naive'
  with pytest.raises(JaxgenError, match='cached or naive'):
    model.sample_options(sampler='ddim')
  with pytest.raises(JaxgenError, match='class-conditional'):
    model.sample_options(label=1)
  with pytest.raises(JaxgenError, match="no sampling option 'steps'"):
    model.sample_options(steps=5)
  with pytest.raises(JaxgenError, match='temperature'):
    model.sample_options(temperature=0.0)
  pp = families.build(_config(network='pixelcnnpp', pixels='logistic_mixture'), (8, 8, 3))
  with pytest.raises(JaxgenError, match='--sampler naive'):
    pp.sample_options()
  with pytest.raises(JaxgenError, match='does not go with'):
    families.build(_config(network='pixelcnn', pixels='logistic_mixture'), (6, 5, 1))
  with pytest.raises(JaxgenError, match='grayscale'):
    families.build(_config(network='gated', pixels='binary'), (4, 4, 3))
  with pytest.raises(JaxgenError, match='multiples of 4'):
    families.build(_config(network='pixelcnnpp', pixels='logistic_mixture'), (6, 5, 1))
  with pytest.raises(JaxgenError, match='jaxgen palette'):
    families.build(_config(network='transformer', pixels='palette'), (4, 4, 3))
  with pytest.raises(JaxgenError, match='cannot be read'):
    families.build(_config(network='transformer', pixels='palette', palette_file='/nonexistent.npy'),
                   (4, 4, 3))
  with pytest.raises(JaxgenError, match='model.tokenizer'):
    families.build(_config(network='transformer', pixels='tokens'), (4, 4, 1))


def test_rgb_palette_from_a_file(tmp_path):
  colors = np.array([[-1, -1, -1], [1, 0, 0], [0, 1, 0], [1, 1, 1]], np.float32)
  path = tmp_path / 'palette.npy'
  np.save(path, colors)
  model = families.build(_config(network='transformer', pixels='palette', palette_file=str(path)),
                         (3, 3, 3))
  assert model.seq_shape == (9, 4)
  # Pixels go to their nearest colour and tokens come back as the colours (no network needed).
  images = jnp.asarray(colors[[0, 1, 2, 3, 3, 2, 1, 0, 1]].reshape(1, 3, 3, 3)) * 0.9
  tokens = model._targets(images, jax.random.PRNGKey(0))  # pylint: disable=protected-access
  np.testing.assert_array_equal(tokens, [[0, 1, 2, 3, 3, 2, 1, 0, 1]])
  np.testing.assert_array_equal(model._to_image(tokens), colors[np.asarray(tokens[0])].reshape(1, 3, 3, 3))  # pylint: disable=protected-access


EXPERIMENTS = ('pixelcnn_mnist', 'gated_pixelcnn_mnist', 'pixelcnnpp_cifar10', 'imagegpt_mnist')


# The gated network runs in CI; the others repeat its path with another network (slow).
@pytest.mark.parametrize('name', [n if n == 'gated_pixelcnn_mnist' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in EXPERIMENTS])
def test_train_resume_sample_evaluate(mnist_env, tmp_path, capsys, name):
  spec = str(REPO / 'experiments' / f'{name}.py') + ':smoke'
  workdir = str(tmp_path / name)
  trainer.train_and_evaluate(config_lib.load_config(spec), workdir)
  assert checkpoint.latest_step(workdir) == 6
  if name == 'gated_pixelcnn_mnist':  # resume once for the family
    state = trainer.train_and_evaluate(config_lib.load_config(spec, ['train.num_steps=8']), workdir)
    assert 'Resuming from step 6' in capsys.readouterr().out
    assert int(state.step) == 8
  step = checkpoint.latest_step(workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert all(np.isfinite(l['nll']) and l['bpd'] > 0 for l in lines)

  out = tmp_path / 'samples.npz'
  sampler = ['--sampler', 'naive'] if name == 'pixelcnnpp_cifar10' else []
  assert cli.main(['sample', '--workdir', workdir, '--num', '8', '--out', str(out)] + sampler) == 0
  images = np.load(out)['images']
  assert images.shape == (8, 28, 28, 1) and images.dtype == np.uint8

  capsys.readouterr()
  assert cli.main(['eval', '--workdir', workdir, '--metrics', 'bpd', '--num', '16', '--batch', '8']) == 0
  result = json.load(open(os.path.join(workdir, f'eval_step_{step:07d}_bpd.json')))
  assert result['num_test'] == 16
  assert 0 < result['metrics']['bits/dim'] < 9
  assert result['metrics']['NLL bound (nats)'] == pytest.approx(
      result['metrics']['bits/dim'] * 784 * math.log(2), rel=1e-6)


@pytest.mark.slow  # CI time: a VQ-VAE run and a transformer compile (~30 s)
def test_transformer_over_vq_vae_tokens(mnist_env, tmp_path):
  """pixels='tokens': the transformer models a VQ-VAE's codes through its public encode/decode."""
  vq_dir = str(tmp_path / 'vq')
  trainer.train_and_evaluate(config_lib.load_config(
      str(REPO / 'experiments' / 'vqvae_mnist.py') + ':smoke',
      ['train.num_steps=1', 'train.sample_every=0']), vq_dir)
  config = config_lib.load_config(str(REPO / 'experiments' / 'imagegpt_mnist.py') + ':smoke',
                                  ['model.pixels=tokens', f'model.tokenizer={vq_dir}'])
  model = families.build(config, (28, 28, 1))
  assert model.seq_shape == (196, 16)  # 14 x 14 codes (the smoke VQ-VAE halves once), 16 entries
  batch = {'image': jnp.zeros((2, 28, 28, 1)), 'label': jnp.zeros((2,), jnp.int32)}
  params = model.init(jax.random.PRNGKey(0), batch)
  loss, metrics = model.loss(params, batch, jax.random.PRNGKey(1))
  np.testing.assert_allclose(loss, 196 * math.log(16), rtol=0.2)  # near-uniform at init
  images = model.sample(params, jax.random.PRNGKey(2), 2)
  assert images.shape == (2, 28, 28, 1) and np.isfinite(np.asarray(images)).all()
  with pytest.raises(JaxgenError, match='no image likelihood'):
    model.nll(params, batch, jax.random.PRNGKey(0))


@pytest.mark.slow  # CI time: PixelCNN++ inside a scan compiles for ~40 s; the mixture
# sampler itself is checked in test_logistic_mixture.py
def test_pixelcnnpp_samples_lie_on_the_8bit_grid():
  """PixelCNN++'s sampler (naive, pixel by pixel, all channels at once): 8-bit values, one key
  one image."""
  model = families.build(_config(network='pixelcnnpp', pixels='logistic_mixture', features=4),
                         (4, 4, 3))
  params = _random_params(model, jax.random.PRNGKey(1))
  sample = jax.jit(lambda p, r: model.sample(p, r, 2, sampler='naive'))
  a = np.asarray(sample(params, jax.random.PRNGKey(2)))
  assert a.shape == (2, 4, 4, 3)
  np.testing.assert_allclose((a + 1) * 127.5, np.round((a + 1) * 127.5), atol=1e-4)
  np.testing.assert_array_equal(a, np.asarray(sample(params, jax.random.PRNGKey(2))))
  assert len(np.unique(a)) > 1  # not a constant image (random weights push many values to the edges)
