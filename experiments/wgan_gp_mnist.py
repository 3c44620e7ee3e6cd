"""WGAN-GP (Gulrajani et al. 2017) on MNIST.

    jaxgen train --config experiments/wgan_gp_mnist.py --workdir runs/wgan_gp_mnist

The dcgan_mnist networks with the critic's BatchNorm replaced by LayerNorm (the
penalty is per sample, so no batch statistics in the critic), the Wasserstein
loss with a gradient penalty (lambda 10) on interpolates, five critic updates
per generator update, Adam lr 1e-4, betas (0.0, 0.9), as in the paper.
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcgan_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # smoke or not
  config.model.d_norm = 'layer'
  config.gan.update(loss='wgan-gp', gp_weight=10.0, n_critic=5, lr_g=1e-4, lr_d=1e-4, b1_g=0.0, b2_g=0.9,
                    b1_d=0.0, b2_d=0.9)
  if arg == 'smoke':
    config.gan.n_critic = 2
  return config
