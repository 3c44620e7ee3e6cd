"""PixelCNN++ (Salimans et al. 2017) on CIFAR-10: the paper's configuration.

    jaxgen train --config experiments/pixelcnnpp_cifar10.py --workdir runs/pixelcnnpp_cifar10
    jaxgen eval --workdir runs/pixelcnnpp_cifar10 --metrics bpd --num 10000 --batch 64
    jaxgen sample --workdir runs/pixelcnnpp_cifar10 --num 16 --out samples.png

The paper's network: 160 filters, 5 gated resnets per resolution (3
resolutions, down and up with shortcut connections), a mixture of 10
discretized logistics per pixel with linearly coupled channels, dropout 0.5;
Adam lr 1e-3, batch 128 (16 on each of 8 GPUs), Polyak averaging 0.9995.
Differences from the paper: no weight normalisation or data-dependent init,
and a constant learning rate after warm-up instead of the 0.999995 decay per
step. The paper reaches 2.92 bits/dim after about 5 days on 8 GPUs; this is an
accelerator config (sampling draws 1,024 pixels, one full network each).
`:smoke` shrinks it to seconds on the CPU.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'autoregressive'
  config.seed = 0
  config.data = dict(name='cifar10', random_flip=False)
  config.model = dict(network='pixelcnnpp', pixels='logistic_mixture', features=160, num_layers=0,
                      kernel=7, kernel_rest=3, head=0, num_resnets=5, num_mixtures=10, num_heads=4,
                      dropout=0.5, palette_levels=16, palette_file='', tokenizer='', num_classes=0,
                      dtype='float32')
  config.sample = dict(sampler='naive', temperature=1.0, label=-1)
  config.optim = dict(lr=1e-3, warmup_steps=0, decay_steps=0, end_lr_frac=0.0,
                      b1=0.95, b2=0.9995, eps=1e-8, weight_decay=0.0, grad_clip=0.0)
  config.train = dict(batch_size=128, num_steps=500_000, ema_decay=0.9995, log_every=500,
                      checkpoint_every=10_000, keep_checkpoints=3, sample_every=0, num_grid=16,
                      eval_every=0, eval_num=1000, eval_metrics='bpd', eval_features='inception',
                      keep_best='', fsdp=1, nonfinite='stop')
  if arg == 'smoke':
    config.data.name = 'mnist'  # the only dataset on disk here; 28x28 halves twice
    config.model.update(features=8, num_resnets=1, num_mixtures=2, dropout=0.1)
    config.train.update(batch_size=8, num_steps=6, log_every=2, checkpoint_every=3,
                        sample_every=0, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
