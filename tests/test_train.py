"""End to end on the shared MNIST files: train, checkpoint, sample, resume, bad input."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxgen import cli, config as config_lib
from jaxgen.errors import JaxgenError
from jaxgen.train import checkpoint, trainer
from conftest import REPO

SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'


def smoke_config(*overrides):
  return config_lib.load_config(SMOKE, list(overrides))


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def trained(mnist_env, tmp_path_factory):
  """One smoke run of 20 steps, shared by the tests that only read it."""
  workdir = str(tmp_path_factory.mktemp('run') / 'ddpm')
  state = trainer.train_and_evaluate(smoke_config(), workdir)
  return workdir, state


def test_train_writes_checkpoints_metrics_and_grids(trained):
  workdir, state = trained
  assert int(state.step) == 20
  assert checkpoint.latest_step(workdir) == 20
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [5, 10, 15, 20]
  assert all(np.isfinite(l['loss']) and l['loss'] > 0 for l in lines)
  grid = Image.open(os.path.join(workdir, 'samples', 'step_0000020.png'))
  assert grid.size == (2 + 2 * 30, 2 + 2 * 30)  # 4 images of 28x28 with 2-px padding
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  saved = config_lib.from_json(open(os.path.join(workdir, 'config.json')).read())
  assert saved.train.num_steps == 20


def test_cli_sample_npz_and_png(trained, tmp_path):
  workdir, _ = trained
  out = tmp_path / 'samples.npz'
  assert cli.main(['sample', '--workdir', workdir, '--num', '10', '--out', str(out),
                   '--batch', '8', '--steps', '5']) == 0
  data = np.load(out)
  images = data['images']
  assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
  assert 'labels' not in data  # an unconditional model draws no asked-for classes
  png = tmp_path / 'grid.png'  # the sampler compiled above (batch 8): a PNG costs no compile
  assert cli.main(['sample', '--workdir', workdir, '--num', '4', '--out', str(png),
                   '--steps', '5']) == 0
  assert Image.open(png).size == (62, 62)


def test_load_run_samples_from_ema_params_reproducibly(trained):
  import jaxgen
  workdir, state = trained
  run = jaxgen.load_run(workdir)
  assert run.step == 20
  assert leaves_equal(run.params, state.ema_params)
  a = run.generate(8, seed=3, batch=8, steps=5)
  b = run.generate(8, seed=3, batch=8, steps=5)
  c = run.generate(8, seed=4, batch=8, steps=5)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  x = run.sample(jax.random.PRNGKey(0), 8, sampler='ddim', steps=5)
  assert x.shape == (8, 28, 28, 1) and float(abs(x).max()) <= 1.0


def test_resume_is_bit_for_bit(mnist_env, trained, tmp_path, capsys):
  """A run stopped after its step-10 checkpoint (the shared run's, without the later one) ends
  where the uninterrupted run did."""
  source, uninterrupted = trained
  workdir = str(tmp_path / 'resumed')
  shutil.copytree(source, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '20'))
  capsys.readouterr()
  resumed = trainer.train_and_evaluate(smoke_config('train.sample_every=0'), workdir)  # no grid
  assert 'Resuming from step 10' in capsys.readouterr().out
  assert int(resumed.step) == 20
  for field in ('params', 'ema_params', 'opt_state'):
    assert leaves_equal(getattr(resumed, field), getattr(uninterrupted, field)), field


def test_resume_refuses_another_model(mnist_env, trained):
  workdir, _ = trained
  with pytest.raises(JaxgenError, match='another model'):
    trainer.train_and_evaluate(smoke_config('model.ch=64'), workdir)


def test_execution_keys_do_not_make_another_model():
  """Kernel, layout and remat choices compute the same function with the same parameters: a run
  may switch them on resume, and a config saved before they existed still matches."""
  saved = smoke_config().to_dict()
  for key in checkpoint.EXECUTION_KEYS['model']:
    del saved['model'][key]  # a checkpoint written before these keys existed
  saved = ml_collections.ConfigDict(saved)
  checkpoint.check_same_model(saved, smoke_config('model.remat=True', 'model.attention=xla',
                                                  'model.split_skip=False'), 'w')
  with pytest.raises(JaxgenError, match=r'config\.model differs'):
    checkpoint.check_same_model(saved, smoke_config('model.ch_mult=(1, 2, 2)'), 'w')


@pytest.mark.slow  # CI time: its own optimizer compile, ~80 s; test_injected_nan_stops_naming_the_step covers the stop
def test_nan_loss_stops_with_the_step_and_keeps_checkpoints(mnist_env, tmp_path):
  workdir = str(tmp_path / 'nan')
  config = smoke_config('optim.lr=1e30', 'optim.grad_clip=0.0', 'optim.warmup_steps=0',
                        'train.log_every=1')
  with pytest.raises(JaxgenError, match=r'(nan|inf) at step \d+; training stopped'):
    trainer.train_and_evaluate(config, workdir)
  assert checkpoint.latest_step(workdir) is None  # no checkpoint of a broken state


def run_cli(args, capsys):
  code = cli.main(args)
  err = capsys.readouterr().err.strip()
  return code, err


def test_bad_input_is_one_sentence_and_writes_nothing(mnist_env, tmp_path, capsys, monkeypatch):
  workdir = tmp_path / 'never'
  code, err = run_cli(['train', '--config', SMOKE, '--workdir', str(workdir),
                       '--config.model.widht=3'], capsys)
  assert code == 2 and "unknown config key 'model.widht'" in err
  assert err.count('\n') == 0 and not workdir.exists()

  code, err = run_cli(['sample', '--workdir', str(workdir), '--num', '4',
                       '--out', str(tmp_path / 'x.npz')], capsys)
  assert code == 2 and 'no checkpoint' in err
  assert not workdir.exists() and not (tmp_path / 'x.npz').exists()

  code, err = run_cli(['sample', '--workdir', str(workdir), '--num', '4',
                       '--out', str(tmp_path / 'x.jpg')], capsys)
  assert code == 2 and '.npz or .png' in err


def test_missing_dataset_names_the_manual_dir(tmp_path, capsys, monkeypatch):
  from jaxgen.data import builders
  monkeypatch.setenv('JAXGEN_MANUAL_DIR', str(tmp_path / 'empty_manual'))
  monkeypatch.setenv('JAXGEN_DATA_DIR', str(tmp_path / 'empty_data'))
  monkeypatch.setattr(builders, 'can_download', lambda *a, **k: False)
  workdir = tmp_path / 'never'
  code, err = run_cli(['train', '--config', SMOKE, '--workdir', str(workdir)], capsys)
  assert code == 2 and 'JAXGEN_MANUAL_DIR' in err and 'train-images-idx3-ubyte.gz' in err
  assert err.count('\n') == 0
  assert not workdir.exists() and not (tmp_path / 'empty_data').exists()


def test_info_prints_the_paper_parameter_count(capsys):
  assert cli.main(['info', '--config', str(REPO / 'experiments' / 'ddpm_cifar10.py')]) == 0
  out = capsys.readouterr().out
  assert 'parameters: 35,746,307 (35.75M)' in out
  assert 'GFLOP per image' in out


def truncate_largest_file(step_dir) -> str:
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names]
  path = max(files, key=os.path.getsize)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  return path


def test_damaged_checkpoint_is_skipped_for_the_previous_one_and_kept(mnist_env, trained, tmp_path,
                                                                     capfd):
  import jaxgen
  source, _ = trained
  workdir = str(tmp_path / 'damaged')
  shutil.copytree(source, workdir)
  truncate_largest_file(os.path.join(workdir, 'checkpoints', '20', 'state'))
  capfd.readouterr()

  # Sampling reads the newest good checkpoint and moves nothing.
  assert jaxgen.load_run(workdir).step == 10
  err = capfd.readouterr().err
  assert 'jaxgen: warning: checkpoint 20 in' in err and 'skipping it for an earlier one' in err
  assert 'Event loop is closed' not in err
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '20'))

  # Training resumes from step 10 with checkpoint 10's state and keeps the damaged files aside.
  # One step is enough: test_resume_is_bit_for_bit shows that a resumed run ends where an
  # uninterrupted one does.
  resumed = trainer.train_and_evaluate(smoke_config('train.num_steps=11'), workdir)
  captured = capfd.readouterr()
  assert 'Resuming from step 10' in captured.out
  assert 'moved the damaged checkpoint 20' in captured.err
  assert os.listdir(os.path.join(workdir, 'damaged_checkpoints', '20', 'state'))
  assert int(resumed.step) == 11 and checkpoint.latest_step(workdir) == 11


def test_all_checkpoints_damaged_is_one_sentence(mnist_env, trained, tmp_path):
  source, _ = trained
  workdir = str(tmp_path / 'ruined')
  shutil.copytree(source, workdir)
  for step in ('10', '20'):
    truncate_largest_file(os.path.join(workdir, 'checkpoints', step, 'state'))
  with pytest.raises(JaxgenError, match=r'no checkpoint in .* can be read \(steps 20, 10 are damaged\)'):
    trainer.train_and_evaluate(smoke_config(), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']  # nothing moved


def nan_at_step(monkeypatch, bad_step: int) -> None:
  """Makes the training batch of `bad_step` contain a NaN image."""
  original = trainer.data_lib.train_batches

  def batches(*args, **kwargs):
    for step, batch in enumerate(original(*args, **kwargs)):
      if step == bad_step:
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch

  monkeypatch.setattr(trainer.data_lib, 'train_batches', batches)


def test_injected_nan_stops_naming_the_step(mnist_env, tmp_path, monkeypatch):
  nan_at_step(monkeypatch, 7)
  workdir = str(tmp_path / 'nan_stop')
  config = smoke_config('train.checkpoint_every=4', 'train.sample_every=0')
  with pytest.raises(JaxgenError, match=r'loss became nan at step 7; training stopped and the last '
                                        r'checkpoint \(step 4\)'):
    trainer.train_and_evaluate(config, workdir)
  assert checkpoint.latest_step(workdir) == 4


@pytest.mark.slow  # CI time: ~33 s; the stopping path is checked in CI
def test_injected_nan_is_skipped_and_counted(mnist_env, trained, tmp_path, monkeypatch, capsys):
  nan_at_step(monkeypatch, 7)
  workdir = str(tmp_path / 'nan_skip')
  state = trainer.train_and_evaluate(smoke_config('train.nonfinite=skip', 'train.sample_every=0'),
                                     workdir)
  assert int(state.step) == 20 and int(state.skipped) == 1
  assert 'loss was not finite at step 7; the step was skipped (1 so far)' in capsys.readouterr().err
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [l['skipped_steps'] for l in lines] == [0, 1, 1, 1]
  assert all(np.isfinite(l['loss']) for l in lines)  # the mean leaves the skipped step out
  _, clean = trained
  assert not leaves_equal(state.params, clean.params)


def test_skipped_step_changes_nothing_but_the_step():
  import optax
  from jaxgen.train.state import create_train_state, make_train_step
  loss_fn = lambda p, b, r: (jnp.sum((p['w'] - b['x']) ** 2), {'loss': jnp.sum((p['w'] - b['x']) ** 2)})
  optimizer = optax.adam(0.1)
  step = jax.jit(make_train_step(loss_fn, optimizer, ema_decay=0.5, skip_nonfinite=True))
  state = create_train_state({'w': jnp.ones(3)}, optimizer, jax.random.PRNGKey(0))
  bad, metrics = step(state, {'x': jnp.array([0.0, jnp.nan, 0.0])})
  assert int(bad.step) == 1 and int(bad.skipped) == 1 and int(metrics['skipped']) == 1
  for field in ('params', 'ema_params', 'opt_state', 'rng'):
    assert leaves_equal(getattr(bad, field), getattr(state, field)), field
  good, metrics = step(bad, {'x': jnp.zeros(3)})
  assert int(good.step) == 2 and int(good.skipped) == 1 and int(metrics['skipped']) == 0
  np.testing.assert_allclose(good.params['w'], 0.9 * np.ones(3), rtol=1e-5)  # Adam's first step: lr


def test_learning_rate_schedule_warms_up_then_holds_or_follows_the_cosine():
  from jaxgen.train.state import OptimConfig, learning_rate_schedule
  constant = learning_rate_schedule(OptimConfig(lr=1e-3, warmup_steps=10))
  np.testing.assert_allclose([constant(0), constant(5), constant(10), constant(10**6)],
                             [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  assert learning_rate_schedule(OptimConfig(lr=1e-3, warmup_steps=0)) == 1e-3
  cosine = learning_rate_schedule(OptimConfig(lr=1e-3, warmup_steps=10, decay_steps=110,
                                              end_lr_frac=0.1))
  # After the warm-up: end + (lr - end) * (1 + cos(pi * t / 100)) / 2, t the steps since it ended.
  expected = lambda t: 1e-4 + 9e-4 * (1 + np.cos(np.pi * t / 100)) / 2
  np.testing.assert_allclose([cosine(5), cosine(10), cosine(35), cosine(60), cosine(110), cosine(500)],
                             [5e-4, 1e-3, expected(25), expected(50), 1e-4, 1e-4], rtol=1e-5)
  with pytest.raises(JaxgenError, match='optim.decay_steps=10 must exceed optim.warmup_steps=10'):
    learning_rate_schedule(OptimConfig(lr=1e-3, warmup_steps=10, decay_steps=10))


def test_fused_global_norm_and_clipping_match_optax():
  import optax
  from jaxgen.train.state import clip_by_global_norm, global_norm
  tree = {'a': jax.random.normal(jax.random.PRNGKey(0), (7, 5)),
          'b': {'c': jax.random.normal(jax.random.PRNGKey(1), (13,)), 'd': jnp.float32(3.0)}}
  np.testing.assert_allclose(global_norm(tree, fused=True), optax.tree.norm(tree), rtol=1e-6)
  assert global_norm(tree) == optax.tree.norm(tree)
  norm = float(optax.tree.norm(tree))
  for max_norm in (norm / 3, 2 * norm):  # clipped, and left alone
    ours, theirs = clip_by_global_norm(max_norm, fused=True), optax.clip_by_global_norm(max_norm)
    assert jax.tree.structure(ours.init(tree)) == jax.tree.structure(theirs.init(tree))
    got, _ = jax.jit(ours.update)(tree, ours.init(tree))
    want, _ = theirs.update(tree, theirs.init(tree))
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(x, y, rtol=1e-6)
