"""SNGAN (Miyato et al. 2018) on MNIST: hinge loss, spectral norm, TTUR.

    jaxgen train --config experiments/sngan_mnist.py --workdir runs/sngan_mnist

The dcgan_mnist generator; the discriminator without BatchNorm and with every
weight spectrally normalised (one power iteration per step, its vector kept in
the train state); the hinge loss; the two time-scale update rule (Heusel et
al. 2017): D learns at 4e-4 and G at 1e-4, Adam betas (0.0, 0.9).
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcgan_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # smoke or not
  config.model.update(d_norm='none', spectral_norm=True)
  config.gan.update(loss='hinge', lr_g=1e-4, lr_d=4e-4, b1_g=0.0, b2_g=0.9, b1_d=0.0, b2_d=0.9)
  return config
