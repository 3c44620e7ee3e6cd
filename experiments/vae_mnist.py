"""VAE on dynamically binarized MNIST: an MLP VAE (Kingma & Welling 2014) whose decoder ends in
a local autoregressive pixel head (the variational lossy autoencoder, Chen et al. 2017).

    jaxgen train --config experiments/vae_mnist.py --workdir runs/vae_mnist
    jaxgen eval --workdir runs/vae_mnist --metrics bpd --num 10000
    jaxgen eval --workdir runs/vae_mnist --metrics bpd --num 1000 --iwae-samples 1000
    jaxgen sample --workdir runs/vae_mnist --num 64 --out samples.png

Encoder 784-1024-512 -> a 32-d Gaussian z; decoder 32-512-1024 -> 4 features per
pixel; each pixel's Bernoulli logit comes from those features and the pixels
before it in a 7 x 7 window (`model.pixel_window`), so z carries the digit's
shape and the head the stroke texture a factorised decoder cannot model.
10 epochs at batch 32 (18,750 steps; 25-40 minutes on the 2-core CPU machine).
`--config.model.pixel_window=0` is the plain VAE (pixels independent given z;
about 10 minutes). The test negative ELBO and IWAE bound of both are in the
README ("Results") and benchmarks/results/vae_mnist.md. `:smoke` shrinks it to seconds.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'vae'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  # The conv settings are used by the derived autoencoder experiments (network='conv'):
  # 28x28 -> 14x14 -> 7x7 by strided convs.
  config.model = dict(kind='gaussian', network='mlp', hidden=(1024, 512), ch=16, ch_mult=(1, 2, 2),
                      num_res_blocks=0, latent_dim=32, spatial=False, likelihood='bernoulli',
                      num_codes=512, pixel_window=7, pixel_features=32, pixel_layers=1,
                      pixel_cond=4, dtype='float32')
  config.vae = dict(beta=1.0, warmup_steps=0, commitment=0.25, codebook_decay=0.99)
  config.optim = dict(lr=1e-3, warmup_steps=100, decay_steps=0, end_lr_frac=0.0,
                      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=100.0)
  config.train = dict(batch_size=32, num_steps=18_750, ema_decay=0.999, log_every=500,
                      checkpoint_every=5000, keep_checkpoints=3, sample_every=5000, num_grid=64,
                      eval_every=0, eval_num=1000, eval_metrics='fid', eval_features='mnist',
                      keep_best='', fsdp=1, nonfinite='stop')
  if arg == 'smoke':
    config.model.update(hidden=(64,), ch=8, ch_mult=(1, 2), latent_dim=4, pixel_window=3,
                        pixel_features=8)
    config.optim.warmup_steps = 2
    config.train.update(batch_size=8, num_steps=10, log_every=5, checkpoint_every=5,
                        sample_every=10, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
