"""The GAN family: TTUR against optax, which player each update changes, end to end per experiment."""

import json
import os

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import optax
import pytest

from jaxgen import cli, config as config_lib, families
from jaxgen.errors import JaxgenError
from jaxgen.train import checkpoint, trainer
from conftest import REPO

MNIST_EXPERIMENTS = ('dcgan_mnist', 'wgan_gp_mnist', 'sngan_mnist', 'cgan_mnist', 'stylegan2_mnist')


def _smoke(name: str, overrides=()):
  return config_lib.load_config(str(REPO / 'experiments' / f'{name}.py') + ':smoke', list(overrides))


def _setup(name: str, overrides=()):
  config = _smoke(name, overrides)
  model = families.build(config, (28, 28, 1))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.uniform(-1, 1, (8, 28, 28, 1)), jnp.float32),
           'label': jnp.asarray(rng.integers(0, 10, (8,)), jnp.int32)}
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)  # compiled: eager init compiles op by op
  return config, model, params, batch


def _tree_equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(x, y), a, b)))


def test_ttur_each_player_uses_its_own_adam():
  # sngan_mnist: lr_d 4e-4, lr_g 1e-4. Adam's first update is -lr * g / (|g| + eps), so the
  # largest change of each player's weights is its own learning rate.
  config, model, params, batch = _setup('sngan_mnist')
  create_state, step = model.train_fns(ema_decay=0.999, skip_nonfinite=False)
  state = create_state(params, jax.random.PRNGKey(1))
  new, metrics = jax.jit(step)(state, batch)
  for player, lr in (('generator', config.gan.lr_g), ('discriminator', config.gan.lr_d)):
    delta = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))),
                         new.params[player]['params'], state.params[player]['params'])
    assert max(float(x) for x in jax.tree.leaves(delta)) == pytest.approx(lr, rel=1e-3)
  # And exactly optax's update for the discriminator's gradients (recomputed here).
  tx_d = optax.adam(config.gan.lr_d, b1=config.gan.b1_d, b2=config.gan.b2_d, eps=1e-8)
  d_vars, d_opt, _ = jax.jit(lambda *a: model.d_update(tx_d, *a))(
      state.params['generator'], state.params['discriminator'], state.opt_state['discriminator'],
      batch, jax.random.fold_in(jax.random.fold_in(state.rng, 0), 0), state.step)
  np.testing.assert_allclose(ravel_pytree(d_vars['params'])[0],
                             ravel_pytree(new.params['discriminator']['params'])[0],
                             rtol=1e-5, atol=1e-7)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # Each update moves its own player (both are pure: the other player's weights are inputs only).
  assert not _tree_equal(d_vars['params'], state.params['discriminator']['params'])
  tx_g = optax.adam(config.gan.lr_g)
  g_vars, _, _, _ = jax.jit(lambda *a: model.g_update(tx_g, *a))(
      state.params['generator'], d_vars, tx_g.init(state.params['generator']['params']), batch,
      jax.random.PRNGKey(3), state.step, state.params['pl_mean'])
  assert not _tree_equal(g_vars['params'], state.params['generator']['params'])


def test_bad_gan_settings_are_one_sentence():
  with pytest.raises(JaxgenError, match='gan.loss'):
    families.build(_smoke('dcgan_mnist', ['gan.loss=lsgan']), (28, 28, 1))
  with pytest.raises(JaxgenError, match="d_norm='none'"):
    families.build(_smoke('dcgan_mnist', ['model.spectral_norm=True']), (28, 28, 1))
  with pytest.raises(JaxgenError, match='label_smoothing'):
    families.build(_smoke('sngan_mnist', ['gan.label_smoothing=0.1']), (28, 28, 1))
  model = families.build(_smoke('dcgan_mnist'), (28, 28, 1))
  with pytest.raises(JaxgenError, match='truncation'):
    model.sample_options(truncation=0.5)
  with pytest.raises(JaxgenError, match='conditional'):
    model.sample_options(label=3)


# dcgan_mnist runs in CI; the others repeat its path with other networks and losses (slow).
@pytest.mark.parametrize('name', [n if n == 'dcgan_mnist' else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MNIST_EXPERIMENTS])
def test_train_resume_sample(mnist_env, tmp_path, capsys, name):
  workdir = str(tmp_path / name)
  trainer.train_and_evaluate(_smoke(name), workdir)
  assert checkpoint.latest_step(workdir) == 6
  if name == 'dcgan_mnist':  # resuming is the trainer's, the same for every GAN: checked once
    state = trainer.train_and_evaluate(_smoke(name, ['train.num_steps=8']), workdir)
    assert 'Resuming from step 6' in capsys.readouterr().out
    assert int(state.step) == 8 and checkpoint.latest_step(workdir) == 8
  lines = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert all(np.isfinite(line['loss']) for line in lines)
  assert {'d_loss', 'g_loss'} <= set(lines[-1])

  out = tmp_path / 'samples.npz'
  extra = (['--label', '7'] if name == 'cgan_mnist' else
           ['--truncation', '0.5'] if name.startswith('stylegan2') else [])
  assert cli.main(['sample', '--workdir', workdir, '--num', '6', '--out', str(out), *extra]) == 0
  images = np.load(out)['images']
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  if name == 'dcgan_mnist':
    png = tmp_path / 'interp.png'
    assert cli.main(['sample', '--workdir', workdir, '--show', 'interpolations', '--num', '2',
                     '--out', str(png)]) == 0
    from PIL import Image  # pylint: disable=g-import-not-at-top
    assert Image.open(png).size == (2 + 10 * 30, 2 + 2 * 30)  # 2 rows of 10 steps


def test_sampling_flags_are_checked(mnist_env, tmp_path, capsys):
  workdir = str(tmp_path / 'dcgan')
  trainer.train_and_evaluate(_smoke('dcgan_mnist', ['train.num_steps=1']), workdir)
  capsys.readouterr()
  out = tmp_path / 'x.npz'
  assert cli.main(['sample', '--workdir', workdir, '--num', '4', '--out', str(out), '--steps', '5']) == 2
  assert "no sampling option 'steps'" in capsys.readouterr().err
  assert cli.main(['sample', '--workdir', workdir, '--num', '4', '--out', str(out), '--label', '2']) == 2
  assert 'conditional' in capsys.readouterr().err
  assert not out.exists()


@pytest.mark.parametrize('name', ['dcgan_cifar10', 'stylegan2_cifar10'])
def test_cifar10_configs_build(name):
  config = config_lib.load_config(str(REPO / 'experiments' / f'{name}.py'))
  model = families.build(config, (32, 32, 3))
  batch = {'image': jnp.zeros((2, 32, 32, 3)), 'label': jnp.zeros((2,), jnp.int32)}
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
  assert sum(x.size for x in jax.tree.leaves(shapes['generator']['params'])) > 1e6
  images = jax.eval_shape(lambda p, r: model.sample(p, r, 3), shapes, jax.random.PRNGKey(2))
  assert images.shape == (3, 32, 32, 3)


@pytest.mark.slow
def test_dcgan_cifar10_smoke_step():
  # The MNIST experiments cover the step end to end; this checks the 3-level CIFAR-10 networks.
  smoke = families.build(
      config_lib.load_config(str(REPO / 'experiments' / 'dcgan_cifar10.py') + ':smoke'), (32, 32, 3))
  batch = {'image': jnp.zeros((2, 32, 32, 3)), 'label': jnp.zeros((2,), jnp.int32)}
  create_state, step = smoke.train_fns(ema_decay=0.99, skip_nonfinite=False)
  new, metrics = jax.jit(step)(create_state(smoke.init(jax.random.PRNGKey(0), batch),
                                            jax.random.PRNGKey(1)), batch)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  images = smoke.sample(new.ema_params, jax.random.PRNGKey(2), 3)
  assert images.shape == (3, 32, 32, 3) and float(jnp.max(jnp.abs(images))) <= 1.0
