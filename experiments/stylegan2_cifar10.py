"""StyleGAN2 on CIFAR-10 at the scale of StyleGAN2-ADA's CIFAR-10 setup (Karras et al. 2020).

    jaxgen train --config experiments/stylegan2_cifar10.py --workdir runs/stylegan2_cifar10

256 channels at every resolution from 4x4 to 32x32, a 2-layer mapping network
(z, w 256), no path-length regularisation and no style mixing (as in the
CIFAR-10 configuration of that paper), lazy R1 with gamma 0.01 every 16
steps, Adam lr 2.5e-3 and betas (0, 0.99), batch 64, EMA 0.999, 200k steps.
`:smoke` keeps the data and shrinks the rest to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'stylegan2_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # smoke or not
  config.data = dict(name='cifar10', random_flip=True)
  config.model.update(z_dim=256, w_dim=256, ch_g=256, ch_d=256, mapping_layers=2)
  config.gan.update(r1_gamma=0.01, r1_every=16, pl_weight=0.0, style_mixing=0.0, lr_g=2.5e-3,
                    lr_d=2.5e-3)
  config.train.update(batch_size=64, num_steps=200_000, checkpoint_every=5000, sample_every=5000,
                      log_every=500, eval_features='inception')
  if arg == 'smoke':
    config.model.update(z_dim=16, w_dim=16, ch_g=8, ch_d=8)
    config.train.batch_size = 8
  return config
