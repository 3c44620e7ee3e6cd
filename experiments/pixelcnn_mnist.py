"""PixelCNN (van den Oord et al. 2016a) on dynamically binarized MNIST.

    jaxgen train --config experiments/pixelcnn_mnist.py --workdir runs/pixelcnn_mnist
    jaxgen eval --workdir runs/pixelcnn_mnist --metrics bpd --num 10000 --batch 500
    jaxgen sample --workdir runs/pixelcnn_mnist --num 64 --out samples.png            # cached sampler
    jaxgen sample --workdir runs/pixelcnn_mnist --num 64 --out samples.png --sampler naive

A 7x7 mask-A convolution, residual 3x3 mask-B convolutions with ReLU, a 1x1
head, one Bernoulli logit per pixel; exact NLL in nats. This default is sized
for the 2-core CPU machine (32 features, 6 residual layers, batch 32);
`--config.model.features=128 --config.model.num_layers=12 --config.model.head=256`
is closer to the paper's network, for an accelerator. The gated network is
`experiments/gated_pixelcnn_mnist.py`; results are in benchmarks/results/pixelcnn_mnist.md.
`:smoke` shrinks it to seconds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'autoregressive'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  config.model = dict(network='pixelcnn', pixels='binary', features=32, num_layers=6, kernel=7,
                      kernel_rest=3, head=64, num_resnets=5, num_mixtures=10, num_heads=4, dropout=0.0,
                      palette_levels=16, palette_file='', tokenizer='', num_classes=0, dtype='float32')
  config.sample = dict(sampler='cached', temperature=1.0, label=-1)
  config.optim = dict(lr=1e-3, warmup_steps=100, decay_steps=0, end_lr_frac=0.0,
                      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=100.0)
  config.train = dict(batch_size=32, num_steps=3750, ema_decay=0.999, log_every=250,
                      checkpoint_every=1000, keep_checkpoints=3, sample_every=0, num_grid=16,
                      eval_every=0, eval_num=1000, eval_metrics='bpd', eval_features='mnist',
                      keep_best='', fsdp=1, nonfinite='stop')
  if arg == 'smoke':
    config.model.update(features=8, num_layers=1, kernel=3, head=8)
    config.optim.warmup_steps = 2
    config.train.update(batch_size=8, num_steps=6, log_every=2, checkpoint_every=3,
                        sample_every=6, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
