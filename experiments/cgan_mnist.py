"""Class-conditional GAN on MNIST: conditional BatchNorm in G, projection D.

    jaxgen train --config experiments/cgan_mnist.py --workdir runs/cgan_mnist
    jaxgen sample --workdir runs/cgan_mnist --num 64 --label 7 --out sevens.png

The sngan_mnist recipe (hinge loss, spectral norm, TTUR) made conditional on
the digit: G's BatchNorm scales and shifts are embeddings of the label (de
Vries et al. 2017), D adds the projection of its features on a label embedding
(Miyato & Koyama 2018). Fake labels are drawn uniformly.
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sngan_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # smoke or not
  config.model.num_classes = 10
  return config
