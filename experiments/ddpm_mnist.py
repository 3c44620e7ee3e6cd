"""DDPM on MNIST: a small UNet that draws recognisable digits after 3,000 steps (18-40 CPU minutes).

    jaxgen train --config experiments/ddpm_mnist.py --workdir runs/ddpm_mnist
    jaxgen sample --workdir runs/ddpm_mnist --num 64 --out samples.png --sampler ddim --steps 100

Hardware and result: see the README ("Results"), measured on the 2-core CPU
machine this project is developed on. `:smoke` shrinks everything to a run of
a few seconds (tests and CI use it).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'diffusion'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  # 28x28 -> 14x14 -> 7x7; attention at 7x7 and in the middle.
  config.model = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,),
                      dropout=0.0, num_classes=0, dtype='float32',
                      # speed and memory only (the same function): see jaxgen.diffusion.unet.UNetConfig
                      attention='auto', split_skip=True, remat=False)
  # prediction: 'eps' | 'x0' | 'v'; label_dropout > 0 (with model.num_classes) enables guidance.
  config.diffusion = dict(schedule='linear', num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          prediction='eps', label_dropout=0.0)
  # Stochastic DDIM (eta=1): at this training budget eta=0 leaves speckled backgrounds.
  config.sample = dict(sampler='ddim', steps=100, eta=1.0, variance='fixedlarge', clip_x0=True,
                       label=-1, guidance=1.0)
  # The noise-conditional classifier of `jaxgen train-classifier` (classifier guidance).
  config.classifier = dict(width=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                           lr=1e-3, weight_decay=0.05, steps=1000, batch=64)
  config.optim = dict(lr=2e-3, warmup_steps=200, decay_steps=0, end_lr_frac=0.0,
                      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0)
  # 2-core CPU VMs: ~0.35 s per step (2026-11-23's), ~0.73 s (an AVX2-only one, 2026-11-27, with
  # jaxgen.xla_flags; benchmarks/results/cpu_convolutions.md).
  config.train = dict(batch_size=32, num_steps=3000, ema_decay=0.998, log_every=50,
                      checkpoint_every=500, keep_checkpoints=3, sample_every=1000, num_grid=64,
                      # Evaluation during training (eval_every=0: off); see `jaxgen eval --help`.
                      eval_every=0, eval_num=1000, eval_metrics='fid', eval_features='mnist',
                      keep_best='',
                      # Devices sharing each parameter (FSDP axis; 1: data parallel), and what a
                      # NaN/inf loss or gradient does: 'stop' the run or 'skip' the step.
                      fsdp=1, nonfinite='stop')

  if arg == 'smoke':
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(14,))
    config.diffusion.num_timesteps = 100
    config.sample.update(steps=10)
    config.classifier.update(ch_mult=(1,), steps=20, batch=8)
    config.optim.warmup_steps = 10
    config.train.update(batch_size=8, num_steps=20, log_every=5, checkpoint_every=10,
                        sample_every=20, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
