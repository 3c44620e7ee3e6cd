"""beta-VAE (Higgins et al. 2017) on dynamically binarized MNIST, with a KL warm-up.

    jaxgen train --config experiments/beta_vae_mnist.py --workdir runs/beta_vae_mnist
    jaxgen sample --workdir runs/beta_vae_mnist --show interpolations --num 4 --out interp.png

The vae_mnist network with beta = 4 (a more factorised, less detailed code) and
beta rising linearly from 0 over the first 1,000 steps (Bowman et al. 2016's
warm-up, which keeps the decoder from ignoring the latent early on).
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vae_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # vae_mnist, smoke or not
  config.vae.update(beta=4.0, warmup_steps=1000)
  config.model.pixel_window = 0  # pixels independent given z (a pixel head weakens the code)
  if arg == 'smoke':
    config.vae.warmup_steps = 5
  return config
