"""End to end on MNIST for every VAE-family experiment (smoke configs): train, checkpoint,
resume, sample, figures, evaluate."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxgen import cli, config as config_lib
from jaxgen.train import checkpoint, trainer
from conftest import REPO

EXPERIMENTS = ('vae_mnist', 'beta_vae_mnist', 'kl_autoencoder_mnist', 'vqvae_mnist')


# vae_mnist and vqvae_mnist run in CI; the other two are the same path with other settings (slow).
@pytest.mark.parametrize('name', [n if n in ('vae_mnist', 'vqvae_mnist') else pytest.param(n, marks=pytest.mark.slow)
                                  for n in EXPERIMENTS])
def test_train_resume_sample_evaluate(mnist_env, tmp_path, capsys, name):
  spec = str(REPO / 'experiments' / f'{name}.py') + ':smoke'
  workdir = str(tmp_path / name)
  trainer.train_and_evaluate(config_lib.load_config(spec), workdir)
  assert checkpoint.latest_step(workdir) == 10
  state = trainer.train_and_evaluate(config_lib.load_config(spec, ['train.num_steps=12']), workdir)
  assert 'Resuming from step 10' in capsys.readouterr().out
  assert int(state.step) == 12 and checkpoint.latest_step(workdir) == 12
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert all(np.isfinite(l['loss']) for l in lines)

  out = tmp_path / 'samples.npz'
  assert cli.main(['sample', '--workdir', workdir, '--num', '8', '--out', str(out)]) == 0
  images = np.load(out)['images']
  assert images.shape == (8, 28, 28, 1) and images.dtype == np.uint8

  png = tmp_path / 'recon.png'
  assert cli.main(['sample', '--workdir', workdir, '--show', 'reconstructions', '--num', '8',
                   '--out', str(png)]) == 0
  assert Image.open(png).size == (2 + 8 * 30, 2 + 2 * 30)  # a row of originals, a row of reconstructions

  metrics = 'recon' if name.endswith(('autoencoder_mnist', 'vqvae_mnist')) else 'bpd,recon'
  capsys.readouterr()
  assert cli.main(['eval', '--workdir', workdir, '--metrics', metrics, '--num', '16',
                   '--batch', '8'] + (['--iwae-samples', '4'] if 'bpd' in metrics else [])) == 0
  name = metrics.replace(',', '-') + ('-iwae4' if 'bpd' in metrics else '')
  result = json.load(open(os.path.join(workdir, f'eval_step_0000012_{name}.json')))
  assert result['num_test'] == 16
  assert 0 < result['metrics']['reconstruction MSE'] < 1 and result['metrics']['PSNR (dB)'] > 0
  if 'bpd' in metrics:
    assert result['num_samples'] == 4
    assert 0 < result['metrics']['bits/dim'] < 2  # binarized pixels: at most ~1 bit each when untrained


def test_vq_has_no_likelihood_and_vae_no_sampler_flags(mnist_env, tmp_path, capsys):
  workdir = str(tmp_path / 'vq')
  trainer.train_and_evaluate(
      config_lib.load_config(str(REPO / 'experiments' / 'vqvae_mnist.py') + ':smoke'), workdir)
  capsys.readouterr()
  assert cli.main(['eval', '--workdir', workdir, '--metrics', 'bpd', '--num', '8']) == 2
  assert 'a VQ-VAE has no likelihood' in capsys.readouterr().err
  assert cli.main(['sample', '--workdir', workdir, '--num', '4', '--out', str(tmp_path / 'x.npz'),
                   '--steps', '5']) == 2
  assert "no sampling option 'steps'" in capsys.readouterr().err
  assert cli.main(['sample', '--workdir', workdir, '--num', '4', '--out', str(tmp_path / 'm.png'),
                   '--show', 'interpolations']) == 2
  assert 'discrete latents' in capsys.readouterr().err
  assert not (tmp_path / 'x.npz').exists() and not (tmp_path / 'm.png').exists()
