"""Gated PixelCNN (van den Oord et al. 2016b) on dynamically binarized MNIST.

    jaxgen train --config experiments/gated_pixelcnn_mnist.py --workdir runs/gated_mnist
    jaxgen eval --workdir runs/gated_mnist --metrics bpd --num 10000 --batch 500
    jaxgen sample --workdir runs/gated_mnist --num 64 --out samples.png

Vertical and horizontal stacks (no blind spot), gated tanh x sigmoid units,
residual horizontal stack, one Bernoulli logit per pixel; exact NLL in nats.
The paper's binarized-MNIST figure to match is 81.30 nats. This default is
sized for the 2-core CPU machine (32 features, 8 gated layers, batch 32);
`--config.model.features=64 --config.model.num_layers=15 --config.model.head=256`
is the paper-sized network, for an accelerator. `--config.model.num_classes=10`
conditions on the digit (then `jaxgen sample --label 3`). Results:
benchmarks/results/pixelcnn_mnist.md. `:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pixelcnn_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # pixelcnn_mnist, smoke or not
  config.model.update(network='gated', num_layers=2 if arg == 'smoke' else 8)
  return config
