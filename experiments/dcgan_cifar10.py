"""DCGAN on CIFAR-10, the paper's architecture at 32x32 (Radford et al. 2016).

    jaxgen train --config experiments/dcgan_cifar10.py --workdir runs/dcgan_cifar10
    jaxgen eval --workdir runs/dcgan_cifar10 --metrics fid,is --num 50000

G: z (100) -> 4x4x512 -> three 4x4 stride-2 transposed convolutions with
BatchNorm and ReLU (256, 128, then 3 channels and tanh); D: three 4x4 stride-2
convolutions (64, 128, 256; LeakyReLU 0.2, BatchNorm after the first) ->
dense. Adam lr 2e-4, beta1 0.5, batch 128, 100k generator steps.
`:smoke` keeps the data and shrinks the rest to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcgan_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # smoke or not
  config.data = dict(name='cifar10', random_flip=True)
  config.model.update(ch_g=64, ch_d=64, num_up=3, num_down=3)
  config.train.update(batch_size=128, num_steps=100_000, checkpoint_every=5000, sample_every=5000,
                      log_every=500, eval_features='inception')
  if arg == 'smoke':
    config.train.batch_size = 8
  return config
