"""The MNIST domain feature network: a short training run, save/load round trip, bad input."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import data as data_lib
from jaxgen.errors import JaxgenError
from jaxgen.eval import domain

TRAIN_CMD = 'jaxgen eval train-features --dataset mnist'


@pytest.fixture(scope='module')
def trained(mnist_env, tmp_path_factory):
  """An 80-step run (batch 64, ~0.95 test accuracy) through the public entry point, shared.

  Returns (out_dir, info, params), the params being the in-memory ones that were saved.
  """
  out_dir = str(tmp_path_factory.mktemp('features') / 'mnist')
  saved = {}
  real_save = domain.save_domain_extractor

  def capturing_save(directory, params, info):
    saved['params'] = params
    real_save(directory, params, info)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(domain, 'save_domain_extractor', capturing_save)
    info = domain.train_domain_classifier('mnist', out_dir=out_dir, num_steps=80, batch_size=64,
                                          seed=0, progress=False)
  return out_dir, info, saved['params']


@pytest.fixture(scope='module')
def test_images(mnist_env):
  """The first 64 test images: float32 [64, 28, 28, 1] in [-1, 1] and labels int32 [64]."""
  config = ml_collections.ConfigDict(dict(name='mnist', random_flip=False))
  batch = next(data_lib.eval_batches(config, batch_size=64, process_index=0, process_count=1))
  return batch['image'], batch['label']


def test_short_run_beats_chance_and_writes_checkpoint(trained):
  out_dir, info, _ = trained
  assert info['test_accuracy'] > 0.9  # chance is 0.1
  assert info['num_test_examples'] == 10000  # padding of the last eval batch masked out
  assert info['num_steps'] == 80 and info['feature_dim'] == 256 and info['dataset'] == 'mnist'
  assert os.path.isdir(os.path.join(out_dir, 'params'))
  with open(os.path.join(out_dir, 'info.json')) as f:
    assert json.load(f) == info


def test_load_round_trips_logits_and_shapes(trained, test_images):
  out_dir, info, params = trained
  fn, loaded_info = domain.load_domain_extractor('mnist', out_dir)
  assert loaded_info == info
  images, labels = test_images
  features, logits = fn(images)
  assert features.shape == (64, 256) and logits.shape == (64, 10)
  assert features.dtype == jnp.float32 and logits.dtype == jnp.float32
  assert float(jnp.min(features)) >= 0.0  # post-ReLU
  assert np.mean(np.argmax(logits, -1) == labels) > 0.85
  # Same outputs as the in-memory parameters that were saved.
  want_features, want_logits = jax.jit(domain.features_and_logits)(params, images)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(features, want_features, rtol=1e-5, atol=1e-5)


def test_missing_network_names_the_command(tmp_path, monkeypatch):
  with pytest.raises(JaxgenError, match=TRAIN_CMD):
    domain.load_domain_extractor('mnist', str(tmp_path / 'nothing'))
  monkeypatch.setenv('JAXGEN_CACHE_DIR', str(tmp_path / 'cache'))
  assert domain.default_features_dir('mnist') == str(tmp_path / 'cache' / 'features' / 'mnist')
  with pytest.raises(JaxgenError, match=TRAIN_CMD) as e:
    domain.load_domain_extractor()
  assert str(tmp_path / 'cache' / 'features' / 'mnist') in str(e.value)
  monkeypatch.delenv('JAXGEN_CACHE_DIR')
  assert domain.default_features_dir() == os.path.expanduser('~/.cache/jaxgen/features/mnist')


def test_bad_input_raises_before_writing(tmp_path):
  out_dir = tmp_path / 'out'
  with pytest.raises(JaxgenError, match='cifar10'):
    domain.load_domain_extractor('cifar10', str(tmp_path))
  with pytest.raises(JaxgenError, match='svhn'):
    domain.train_domain_classifier('svhn', out_dir=str(out_dir))
  with pytest.raises(JaxgenError, match='multiple of the device count 8'):
    domain.train_domain_classifier('mnist', out_dir=str(out_dir), batch_size=100)
  assert not out_dir.exists()


def test_extractor_rejects_wrong_images(trained):
  fn, _ = domain.load_domain_extractor('mnist', trained[0])  # a fresh load: nothing cached
  with pytest.raises(JaxgenError, match='127.5'):
    fn(np.zeros((2, 28, 28, 1), np.uint8))
  with pytest.raises(JaxgenError):
    fn(np.zeros((2, 32, 32, 3), np.float32))


def test_module_shapes():
  model = domain.DomainCNN()
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((3, 28, 28, 1)))
  features, logits = jax.eval_shape(domain.features_and_logits, variables,
                                    jnp.zeros((3, 28, 28, 1)))
  assert features.shape == (3, domain.FEATURE_DIM) and logits.shape == (3, 10)
