"""KL autoencoder on MNIST: the first stage of latent diffusion (Rombach et al. 2022), small.

    jaxgen train --config experiments/kl_autoencoder_mnist.py --workdir runs/kl_ae_mnist
    jaxgen eval --workdir runs/kl_ae_mnist --metrics recon --num 10000

A conv encoder to a 7 x 7 x 4 latent grid (a factor 4 down-sampling, 196
numbers per 784-pixel image), a discretized-logistic decoder over the 256
levels, and a small KL weight (beta = 1e-3) that keeps the latent near N(0, I)
without forcing out detail. Latent models use it through
`run.model.encode(run.params, images)` and `run.model.decode(run.params, latents)`.
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vae_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # vae_mnist, smoke or not
  config.model.update(network='conv', spatial=True, latent_dim=4, likelihood='logistic',
                      pixel_window=0)
  config.vae.beta = 1e-3
  config.train.update(batch_size=128, num_steps=2000, log_every=100, checkpoint_every=1000,
                      sample_every=1000)  # about 4 epochs
  if arg == 'smoke':
    config.model.latent_dim = 2
    config.train.update(batch_size=8, num_steps=10, log_every=5, checkpoint_every=5,
                        sample_every=10)
  return config
