"""DCGAN (Radford et al. 2016) on MNIST with the non-saturating loss.

    jaxgen train --config experiments/dcgan_mnist.py --workdir runs/dcgan_mnist
    jaxgen sample --workdir runs/dcgan_mnist --num 64 --out samples.png
    jaxgen eval --workdir runs/dcgan_mnist --metrics fid,pr --features mnist --num 10000

The paper's recipe at MNIST size, at half its width so that it trains on a
2-core CPU in minutes: G is z (100) -> dense 7x7x128 -> two 4x4 stride-2
transposed convolutions (BatchNorm, ReLU; tanh out); D is two 4x4 stride-2
convolutions (32, 64 channels; LeakyReLU 0.2, BatchNorm after the first) ->
dense. Adam lr 2e-4, beta1 0.5 for both players, batch 64, EMA of G 0.999,
2,000 steps. `--config.model.ch_g=64 --config.model.ch_d=64` is the paper's width.
The other MNIST GAN experiments load this one and change what differs.
`:smoke` shrinks it to seconds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'gan'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  config.model = dict(arch='dcgan', z_dim=100, ch_g=32, ch_d=32, num_up=2, num_down=2, d_norm='batch',
                      spectral_norm=False, w_dim=128, mapping_layers=4, num_classes=0, dtype='float32')
  config.gan = dict(loss='nonsaturating', n_critic=1, gp_weight=10.0, clip=0.0, r1_gamma=0.0, r1_every=1,
                    pl_weight=0.0, pl_every=4, pl_decay=0.01, style_mixing=0.0, label_smoothing=0.0,
                    lr_g=2e-4, lr_d=2e-4, b1_g=0.5, b2_g=0.999, b1_d=0.5, b2_d=0.999)
  config.sample = dict(truncation=1.0, label=-1)
  config.train = dict(batch_size=64, num_steps=2000, ema_decay=0.999, log_every=250,
                      checkpoint_every=1000, keep_checkpoints=3, sample_every=1000, num_grid=64,
                      eval_every=0, eval_num=1000, eval_metrics='fid', eval_features='mnist',
                      keep_best='', fsdp=1, nonfinite='stop')
  if arg == 'smoke':
    config.model.update(ch_g=8, ch_d=8, z_dim=16, w_dim=16, mapping_layers=2)
    config.train.update(batch_size=8, num_steps=6, log_every=2, checkpoint_every=3,
                        sample_every=6, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
