"""StyleGAN2 (Karras et al. 2020) at MNIST size.

    jaxgen train --config experiments/stylegan2_mnist.py --workdir runs/stylegan2_mnist
    jaxgen sample --workdir runs/stylegan2_mnist --num 64 --truncation 0.7 --out samples.png

A small StyleGAN2: mapping network z (128) -> w (128) with 4 layers, learned 4x4
constant, modulated convolutions with weight demodulation and noise injection
up to 32x32 (center-cropped to 28x28; the discriminator pads back with
background), skip generator, residual discriminator with minibatch standard
deviation. Non-saturating loss, lazy R1 (gamma 0.05 every 16 steps), lazy
path-length regularisation (weight 2 every 4 steps), style mixing with
probability 0.9, Adam lr 2e-3 and betas (0, 0.99) for both players, batch 32.
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcgan_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # smoke or not
  config.model.update(arch='stylegan2', z_dim=128, w_dim=128, ch_g=32, ch_d=32, mapping_layers=4,
                      d_norm='none')
  config.gan.update(loss='nonsaturating', r1_gamma=0.05, r1_every=16, pl_weight=2.0, pl_every=4,
                    style_mixing=0.9, lr_g=2e-3, lr_d=2e-3, b1_g=0.0, b2_g=0.99, b1_d=0.0, b2_d=0.99)
  config.train.batch_size = 32
  if arg == 'smoke':
    config.model.update(ch_g=8, ch_d=8, z_dim=16, w_dim=16, mapping_layers=2)
    config.gan.update(r1_every=2, pl_every=2)
    config.train.batch_size = 8
  return config
