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

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'autoregressive'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  config.model = dict(network='transformer', pixels='palette', features=64, num_layers=4, kernel=7,
                      kernel_rest=3, head=64, num_resnets=5, num_mixtures=10, num_heads=4, dropout=0.0,
                      palette_levels=8, palette_file='', tokenizer='', num_classes=0, dtype='float32')
  config.sample = dict(sampler='cached', temperature=1.0, label=-1)
  config.optim = dict(lr=1e-3, warmup_steps=200, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                      grad_clip=1.0)
  config.train = dict(batch_size=32, num_steps=3750, ema_decay=0.999, log_every=250,
                      checkpoint_every=1000, keep_checkpoints=3, sample_every=0, num_grid=16,
                      eval_every=0, eval_num=1000, eval_metrics='bpd', eval_features='mnist',
                      keep_best='', fsdp=1, nonfinite='stop')
  if arg == 'smoke':
    config.model.update(features=16, num_layers=1, num_heads=2)
    config.optim.warmup_steps = 2
    config.train.update(batch_size=8, num_steps=6, log_every=2, checkpoint_every=3,
                        sample_every=6, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
