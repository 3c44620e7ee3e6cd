"""ImageGPT-style causal transformer (Chen et al. 2020) on MNIST pixels.

    jaxgen train --config experiments/imagegpt_mnist.py --workdir runs/igpt_mnist
    jaxgen eval --workdir runs/igpt_mnist --metrics bpd --num 10000 --batch 500
    jaxgen sample --workdir runs/igpt_mnist --num 64 --out samples.png   # KV-cached decoding

A pre-LayerNorm decoder-only transformer over the 784 pixels in raster order,
each pixel a token: its nearest of 8 evenly spaced gray levels (the grayscale
palette; ImageGPT used 512 k-means colours, which RGB data gets with
`jaxgen palette --dataset cifar10 --out palette.npy` and
`--config.model.palette_file=palette.npy`). The NLL is of the quantised image.
`--config.model.pixels=binary` models dynamically binarized MNIST instead (the
PixelCNN column); `--config.model.pixels=tokens --config.model.tokenizer=runs/vqvae_mnist`
models a VQ-VAE's codes through its public encode/decode. Sized for the 2-core
CPU machine (width 64, 4 blocks). `:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pixelcnn_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # pixelcnn_mnist, smoke or not
  config.model.update(network='transformer', pixels='palette', palette_levels=8, features=64,
                      num_layers=4, num_heads=4)
  config.optim.update(warmup_steps=200, b2=0.95, grad_clip=1.0)
  if arg == 'smoke':
    config.model.update(features=16, num_layers=1, num_heads=2)
    config.optim.warmup_steps = 2
  return config
