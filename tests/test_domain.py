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
def trained(mnist_features):
  """(directory, info) of the session's 80-step network, trained by `jaxgen eval train-features`."""
  out_dir = os.path.join(mnist_features, 'features', 'mnist')
  with open(os.path.join(out_dir, 'info.json')) as f:
    return out_dir, json.load(f)


@pytest.fixture(scope='module')
def test_images(mnist_env):
  """The first 64 test images: float32 [64, 28, 28, 1] in [-1, 1] and labels int32 [64]."""
  config = ml_collections.ConfigDict(dict(name='mnist', random_flip=False))
  batch = next(data_lib.eval_batches(config, batch_size=64, process_index=0, process_count=1))
  return batch['image'], batch['label']


def test_short_run_beats_chance_and_writes_checkpoint(trained):
  out_dir, info = trained
  assert info['test_accuracy'] > 0.9  # chance is 0.1
  assert info['num_test_examples'] == 10000  # padding of the last eval batch masked out
  assert info['num_steps'] == 80 and info['feature_dim'] == 256 and info['dataset'] == 'mnist'
  assert os.path.isdir(os.path.join(out_dir, 'params'))


def test_trained_network_classifies_test_digits(trained, test_images):
  out_dir, info = trained
  fn, loaded_info = domain.load_domain_extractor('mnist', out_dir)
  assert loaded_info == info
  images, labels = test_images
  features, logits = fn(images)
  assert features.shape == (64, 256) and logits.shape == (64, 10)
  assert features.dtype == jnp.float32 and logits.dtype == jnp.float32
  assert float(jnp.min(features)) >= 0.0  # post-ReLU
  assert np.mean(np.argmax(logits, -1) == labels) > 0.85


def test_save_load_round_trips_the_parameters(tmp_path, test_images):
  model = domain.make_model('mnist')
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  info = dict(dataset='mnist', feature_dim=model.feature_dim, num_steps=0, test_accuracy=0.1)
  out_dir = str(tmp_path / 'mnist')
  domain.save_domain_extractor(out_dir, jax.device_get(params), info)
  fn, loaded_info = domain.load_domain_extractor('mnist', out_dir)
  assert loaded_info == info
  images, _ = test_images
  features, logits = fn(images)
  want_features, want_logits = jax.jit(domain.features_and_logits)(params, images)
  np.testing.assert_array_equal(logits, want_logits)
  np.testing.assert_array_equal(features, want_features)
  # Saving again replaces the network.
  domain.save_domain_extractor(out_dir, jax.device_get(params), {**info, 'num_steps': 1})
  assert domain.load_domain_extractor('mnist', out_dir)[1]['num_steps'] == 1


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
