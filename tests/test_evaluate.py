"""The evaluation layer on real MNIST with the domain features, and its CLI."""

import json
import os

import numpy as np
import pytest

from jaxgen import cli
from jaxgen.errors import JaxgenError
from jaxgen.eval import evaluate


@pytest.fixture(scope='module')
def features_env(mnist_features):
  """JAXGEN_CACHE_DIR set to the session's cache (a briefly trained MNIST feature network and
  the mnist:train reference statistics: conftest.mnist_features)."""
  saved = os.environ.get('JAXGEN_CACHE_DIR')
  os.environ['JAXGEN_CACHE_DIR'] = mnist_features
  yield mnist_features
  if saved is None:
    os.environ.pop('JAXGEN_CACHE_DIR')
  else:
    os.environ['JAXGEN_CACHE_DIR'] = saved


@pytest.fixture(scope='module')
def test_split(features_env):
  """MNIST test images uint8 [10000, 28, 28, 1] and labels, through the project's pipeline."""
  from jaxgen import data as data_lib
  import ml_collections
  config = ml_collections.ConfigDict(dict(name='mnist', random_flip=False))
  images, labels = [], []
  for b in data_lib.eval_batches(config, batch_size=1000, split='test'):
    images.append(np.round((b['image'][b['mask']] + 1) * 127.5).astype(np.uint8))
    labels.append(b['label'][b['mask']])
  return np.concatenate(images), np.concatenate(labels)


def save(path, images):
  np.savez(path, images=images)
  return str(path)


def noised(images, sigma, seed=0):
  x = images.astype(np.float32) / 255 + np.random.default_rng(seed).normal(0, sigma, images.shape)
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def blurred(images, passes):
  x = images.astype(np.float32)
  for _ in range(passes):  # 3x3 box blur
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
    x = sum(p[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)) / 9
  return np.round(x).astype(np.uint8)


@pytest.mark.slow  # CI time: ~110 s; real-data FID is still exercised by
# test_dropping_half_the_classes_keeps_precision_and_loses_recall
def test_fid_small_for_real_data_and_grows_with_damage(test_split, tmp_path):
  images, _ = test_split
  runs = {'clean': images}
  runs.update({f'noise{s}': noised(images, s) for s in (0.1, 0.2, 0.4)})
  runs.update({f'blur{p}': blurred(images, p) for p in (1, 2, 4)})
  res = {k: evaluate.evaluate_npz(save(tmp_path / f'{k}.npz', v), 'mnist:train',
                                  metrics=('fid', 'kid'), features='mnist')['metrics']
         for k, v in runs.items()}
  fid = {k: r['FID (MNIST features)'] for k, r in res.items()}
  kid = {k: r['KID (MNIST features)'] for k, r in res.items()}
  assert fid['clean'] < 0.05 * fid['noise0.4'], fid
  for series in (['clean', 'noise0.1', 'noise0.2', 'noise0.4'], ['clean', 'blur1', 'blur2', 'blur4']):
    assert [fid[k] for k in series] == sorted(fid[k] for k in series), (series, fid)
    assert [kid[k] for k in series] == sorted(kid[k] for k in series), (series, kid)
  assert abs(kid['clean']) < 0.05 * kid['noise0.4']
  # The reference statistics were computed once and cached.
  assert os.listdir(os.path.join(os.environ['JAXGEN_CACHE_DIR'], 'reference'))
  assert json.load(open(tmp_path / 'clean.eval.json'))['num_real'] == 60000


def test_dropping_half_the_classes_keeps_precision_and_loses_recall(test_split, tmp_path):
  images, labels = test_split
  full = evaluate.evaluate_npz(save(tmp_path / 'full.npz', images[:5000]), 'mnist:train',
                               metrics=('pr',), features='mnist')['metrics']
  half = evaluate.evaluate_npz(save(tmp_path / 'half.npz', images[labels < 5][:5000]), 'mnist:train',
                               metrics=('pr',), features='mnist')['metrics']
  p, r = 'precision (MNIST features)', 'recall (MNIST features)'
  assert half[p] > 0.9 * full[p] and full[p] > 0.6
  assert half[r] < 0.75 * full[r]


def test_inception_score_analogue_on_real_digits(test_split, tmp_path):
  images, labels = test_split
  res = evaluate.evaluate_npz(save(tmp_path / 'x.npz', images[:2000]), '', metrics=('is',),
                              features='mnist', write=False)['metrics']
  assert 7.0 < res['IS (MNIST features)'] <= 10.0  # ten balanced, confidently classified classes
  ones = images[labels == 1][:500]
  res1 = evaluate.evaluate_npz(save(tmp_path / 'ones.npz', ones), '', metrics=('is',),
                               features='mnist', write=False)['metrics']
  assert res1['IS (MNIST features)'] < 1.5  # one class only


def test_accuracy_against_the_asked_for_labels(test_split, tmp_path):
  images, labels = test_split
  path = str(tmp_path / 'labelled.npz')
  wrong = (labels[:1000] + 1) % 10
  np.savez(path, images=images[:1000], labels=labels[:1000])
  right = evaluate.evaluate_npz(path, '', metrics=('accuracy',), features='mnist', write=False)
  np.savez(path, images=images[:1000], labels=wrong)
  shifted = evaluate.evaluate_npz(path, '', metrics=('accuracy',), features='mnist', write=False)
  acc = 'accuracy (MNIST features)'
  assert right['metrics'][acc] > 0.9 and shifted['metrics'][acc] < 0.05
  with pytest.raises(JaxgenError, match='"labels" array'):
    evaluate.evaluate_npz(save(tmp_path / 'x.npz', images[:10]), '', metrics=('accuracy',),
                          features='mnist', write=False)
  assert evaluate.compute(('accuracy',), evaluate.FeatureSet(None, np.zeros((3, 2)), np.eye(3)), None,
                          evaluate.Extractor('x', '', None, None),
                          labels=np.array([0, 1, 0]))['accuracy'] == pytest.approx(2 / 3)


@pytest.mark.parametrize('content, message', [
    (dict(pictures=np.zeros((4, 28, 28, 1), np.uint8)), 'no key "images"'),
    (dict(images=np.zeros((4, 28, 28), np.uint8)), 'NHWC'),
    (dict(images=np.zeros((4, 28, 28, 1), np.float32)), 'uint8'),
])
def test_bad_sample_files_are_one_sentence(content, message, tmp_path, capsys):
  path = tmp_path / 'bad.npz'
  np.savez(path, **content)
  assert cli.main(['eval', '--fake', str(path), '--real', 'mnist:test', '--features', 'mnist']) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and err.count('\n') == 0
  assert not (tmp_path / 'bad.eval.json').exists()


def test_fewer_images_than_asked(tmp_path):
  path = save(tmp_path / 'few.npz', np.zeros((3, 28, 28, 1), np.uint8))
  with pytest.raises(JaxgenError, match='holds 3 images, fewer than the 10'):
    evaluate.evaluate_npz(path, 'mnist:test', num=10, features='mnist')


def test_unknown_metric_and_missing_feature_network(tmp_path, monkeypatch, capsys):
  with pytest.raises(JaxgenError, match="unknown metric 'fidd'"):
    evaluate.parse_metrics('fid,fidd')
  monkeypatch.setenv('JAXGEN_CACHE_DIR', str(tmp_path / 'empty'))
  path = save(tmp_path / 'x.npz', np.zeros((4, 28, 28, 1), np.uint8))
  assert cli.main(['eval', '--fake', path, '--real', 'mnist:test', '--features', 'mnist']) == 2
  assert 'jaxgen eval train-features --dataset mnist' in capsys.readouterr().err


def test_evaluation_during_training_keeps_the_best_checkpoint_and_cli_eval(features_env, tmp_path,
                                                                           capsys):
  from jaxgen import config as config_lib
  from jaxgen.train import checkpoint, trainer
  from conftest import REPO
  workdir = str(tmp_path / 'run')
  # The smoke UNet without its 14x14 level and attention (as test_classifier_guidance's CLI run,
  # whose compiled step the session's compilation cache then holds): what is tested is the loop.
  config = config_lib.load_config(str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke', [
      'model.ch_mult=(1,)', 'model.attn_resolutions=()', 'train.num_steps=4',
      'train.checkpoint_every=4', 'train.log_every=2', 'train.sample_every=0',
      'train.eval_every=2', 'train.eval_num=24', 'train.eval_metrics=fid,is',
      'train.keep_best=fid'])
  trainer.train_and_evaluate(config, workdir)
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [l for l in lines if 'eval/FID (MNIST features)' in l]
  assert [l['step'] for l in evals] == [2, 4]
  assert all('eval/IS (MNIST features)' in l for l in evals)
  best = json.load(open(os.path.join(workdir, 'best', 'best.json')))
  fids = {l['step']: l['eval/FID (MNIST features)'] for l in evals}
  assert best['value'] == min(fids.values()) and fids[best['step']] == best['value']
  assert checkpoint.latest_step(workdir) == 4
  with checkpoint.open_manager(workdir, read_only=True, subdir='best') as mngr:
    assert mngr.all_steps() == [best['step']]

  # `jaxgen eval` of the run: every sample metric, against its dataset's train split.
  capsys.readouterr()
  assert cli.main(['eval', '--workdir', workdir, '--metrics', 'fid,kid,is,pr', '--num', '64',
                   '--batch', '32', '--steps', '3']) == 0
  out = capsys.readouterr().out
  assert 'FID (MNIST features)' in out and '64 samples vs 60000 of mnist:train' in out
  result = json.load(open(os.path.join(workdir, 'eval_step_0000004_fid-kid-is-pr.json')))
  assert result['num_fake'] == 64 and result['features'] == 'mnist'
  assert set(result['metrics']) >= {'FID (MNIST features)', 'KID (MNIST features)',
                                    'IS (MNIST features)', 'precision (MNIST features)'}


def test_keep_best_must_be_evaluated(features_env, tmp_path):
  from jaxgen import config as config_lib
  from jaxgen.train import trainer
  from conftest import REPO
  config = config_lib.load_config(str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke', [
      'train.eval_every=5', 'train.eval_metrics=fid', 'train.keep_best=recall'])
  with pytest.raises(JaxgenError, match='keep_best'):
    trainer.train_and_evaluate(config, str(tmp_path / 'never'))
  assert not (tmp_path / 'never').exists()
