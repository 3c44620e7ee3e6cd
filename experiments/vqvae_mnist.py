"""VQ-VAE (van den Oord et al. 2017) on MNIST: a 7 x 7 grid of codes from a 128-entry codebook.

    jaxgen train --config experiments/vqvae_mnist.py --workdir runs/vqvae_mnist
    jaxgen eval --workdir runs/vqvae_mnist --metrics recon --num 10000

Codebook updated by exponential moving averages (decay 0.99, no gradients),
commitment weight 0.25, straight-through gradients to the encoder, a
discretized-logistic decoder. The logged `codebook_usage` and `perplexity`
show how much of the codebook is in use. Token models use it through
`run.model.encode` (code indices [B, 7, 7]) and `run.model.decode`.
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vae_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # vae_mnist, smoke or not
  config.model.update(kind='vq', network='conv', spatial=True, latent_dim=16, num_codes=128,
                      likelihood='logistic', pixel_window=0)
  config.train.update(batch_size=128, num_steps=2000, log_every=100, checkpoint_every=1000,
                      sample_every=1000)  # about 4 epochs
  if arg == 'smoke':
    config.model.update(latent_dim=4, num_codes=16)
    config.train.update(batch_size=8, num_steps=10, log_every=5, checkpoint_every=5,
                        sample_every=10)
  return config
