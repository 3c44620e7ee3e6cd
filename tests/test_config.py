"""Config loading, overrides and the one-sentence errors for bad keys."""

import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen.errors import JaxgenError
from conftest import REPO

MNIST = str(REPO / 'experiments' / 'ddpm_mnist.py')
CIFAR = str(REPO / 'experiments' / 'ddpm_cifar10.py')


@pytest.mark.parametrize('path', [MNIST, CIFAR])
def test_every_experiment_has_a_smoke_argument(path):
  full = config_lib.load_config(path)
  smoke = config_lib.load_config(path + ':smoke')
  assert smoke.train.num_steps < full.train.num_steps
  assert smoke.model.ch <= full.model.ch


def test_overrides_are_parsed_by_the_type_of_the_default():
  config = config_lib.load_config(MNIST + ':smoke', [
      'train.num_steps=7', 'optim.lr=0.5', 'model.ch_mult=(1,2,4)', 'data.random_flip=true',
      'diffusion.schedule=cosine'])
  assert config.train.num_steps == 7
  assert config.optim.lr == 0.5
  assert tuple(config.model.ch_mult) == (1, 2, 4)
  assert config.data.random_flip is True
  assert config.diffusion.schedule == 'cosine'


@pytest.mark.parametrize('override, named', [
    ('model.chh=3', "'model.chh'"),
    ('trian.num_steps=3', "'trian.num_steps'"),
    ('train.num_steps.x=3', "'train.num_steps.x'"),
])
def test_unknown_override_key_is_named(override, named):
  with pytest.raises(JaxgenError, match=named):
    config_lib.load_config(MNIST, [override])


def test_wrong_type_is_named():
  with pytest.raises(JaxgenError, match="'train.num_steps' expects a int"):
    config_lib.load_config(MNIST, ['train.num_steps=many'])


def test_unknown_key_inside_a_config_file_is_named(tmp_path):
  from jaxgen.train import trainer
  bad = tmp_path / 'bad.py'
  bad.write_text(open(MNIST).read().replace("num_res_blocks=1,", "num_res_block=1,", 1))
  config = config_lib.load_config(str(bad))
  with pytest.raises(JaxgenError, match='model.num_res_block'):
    trainer.setup(config)


def test_missing_file_and_bad_argument():
  with pytest.raises(JaxgenError, match='does not exist'):
    config_lib.load_config('experiments/nope.py')
  with pytest.raises(JaxgenError, match="unknown config argument 'tiny'"):
    config_lib.load_config(MNIST + ':tiny')


def test_json_round_trip_keeps_tuples():
  config = config_lib.load_config(CIFAR)
  again = config_lib.from_json(config_lib.to_json(config))
  assert again.model.ch_mult == (1, 2, 2, 2)
  assert again.to_dict() == config_lib.from_json(config_lib.to_json(again)).to_dict()


def test_requested_labels_fixed_or_cycling():
  np.testing.assert_array_equal(config_lib.requested_labels(3, 4, 10), [3, 3, 3, 3])
  np.testing.assert_array_equal(config_lib.requested_labels(-1, 12, 10),
                                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
