"""DDPM on CIFAR-10, the paper's setup exactly (Ho et al. 2020).

    jaxgen train --config experiments/ddpm_cifar10.py --workdir runs/ddpm_cifar10
    jaxgen info --config experiments/ddpm_cifar10.py   # 35,746,307 parameters

35.7M-parameter UNet (ch 128, multipliers 1,2,2,2, two residual blocks per
resolution, attention at 16x16, dropout 0.1), 1000-step linear schedule
1e-4..0.02, Adam lr 2e-4 with 5000 warm-up steps, batch 128, gradient clipping
at 1, EMA 0.9999, random horizontal flips, 800k steps. The paper reports FID
3.17 and IS 9.46 (TPU v3-8, about 10.6 hours per 100k steps). `:smoke` keeps
the data and shrinks the model and the run to seconds on a CPU.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'diffusion'
  config.seed = 0
  config.data = dict(name='cifar10', random_flip=True)
  config.model = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                      dropout=0.1, num_classes=0, dtype='float32',
                      # speed and memory only (the same function): see jaxgen.diffusion.unet.UNetConfig
                      attention='auto', split_skip=True, remat=False)
  # prediction: 'eps' | 'x0' | 'v'; label_dropout > 0 (with model.num_classes) enables guidance.
  config.diffusion = dict(schedule='linear', num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          prediction='eps', label_dropout=0.0)
  config.sample = dict(sampler='ddpm', steps=0, eta=0.0, variance='fixedlarge', clip_x0=True,
                       label=-1, guidance=1.0)
  config.optim = dict(lr=2e-4, warmup_steps=5000, decay_steps=0, end_lr_frac=0.0,
                      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0)
  config.train = dict(batch_size=128, num_steps=800_000, ema_decay=0.9999, log_every=100,
                      checkpoint_every=10_000, keep_checkpoints=3, sample_every=50_000, num_grid=64,
                      # Evaluation during training (eval_every=0: off); see `jaxgen eval --help`.
                      eval_every=0, eval_num=1000, eval_metrics='fid', eval_features='inception',
                      keep_best='',
                      # Devices sharing each parameter (FSDP axis; 1: data parallel), and what a
                      # NaN/inf loss or gradient does: 'stop' the run or 'skip' the step.
                      fsdp=1, nonfinite='stop')

  if arg == 'smoke':
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, dropout=0.0)
    config.diffusion.num_timesteps = 100
    config.sample.update(sampler='ddim', steps=10)
    config.optim.warmup_steps = 10
    config.train.update(batch_size=8, num_steps=20, log_every=5, checkpoint_every=10,
                        sample_every=20, num_grid=4, ema_decay=0.999)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
