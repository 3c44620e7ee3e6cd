"""Class-conditional DDPM on MNIST with classifier-free guidance (Ho & Salimans 2022).

    jaxgen train --config experiments/ddpm_cfg_mnist.py --workdir runs/ddpm_cfg_mnist
    jaxgen sample --workdir runs/ddpm_cfg_mnist --num 100 --out guided.png --guidance 3
    jaxgen sample --workdir runs/ddpm_cfg_mnist --num 16 --out sevens.png --label 7 --sampler dpmpp2m_sde --steps 20
    jaxgen eval --workdir runs/ddpm_cfg_mnist --metrics fid,accuracy --num 1000 --guidance 5

The UNet and schedule of experiments/ddpm_mnist.py with a label embedding for
the ten digits plus the null class; 10% of the training labels are replaced by
the null class, so the one network predicts both the conditional and the
unconditional noise and `--guidance W` mixes them (W = 1: conditional, 0:
unconditional). The trade-off curve (domain-classifier accuracy and FID at
W = 0, 1, 3, 5) and FID against steps for DDPM, DDIM, Heun and DPM-Solver++
are in benchmarks/results/diffusion_quality_mnist.md (`python -m benchmarks.diffusion_quality`).
The deterministic samplers (DPM-Solver++, Heun, DDIM with eta 0) improve most
once the learning rate decays: resuming to 5,000 steps with a cosine decay,

    jaxgen train --config experiments/ddpm_cfg_mnist.py --workdir runs/ddpm_cfg_mnist \
        --config.train.num_steps=5000 --config.optim.decay_steps=5000

took DPM-Solver++ at 20 steps from FID 63.1 at step 3,000 to 14.2 at step
5,000 (500 samples each; DDIM with eta 1 at 20 steps: 6.1; the same results file).
A second cosine cycle to step 9,000 (`--config.train.num_steps=9000
--config.optim.decay_steps=9000 --config.optim.lr=1e-3`) brought it to 11.9
against DDPM-1000's 7.8 (300 samples; 1.53x, from 1.87x at step 5,000).
The SDE form of the solver (`--sampler dpmpp2m_sde`) at 20 steps scored 6.7 and
6.4 against DDPM-1000's 7.8 and 8.0 there (two seeds).
`:smoke` shrinks it to seconds.
"""

import os

import ml_collections

from jaxgen import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ddpm_mnist.py')
  config = config_lib.load_config(base + (f':{arg}' if arg else ''))  # ddpm_mnist, smoke or not
  config.model.num_classes = 10
  config.diffusion.label_dropout = 0.1
  config.sample.guidance = 3.0
  return config
