"""KL autoencoder on MNIST: the first stage of latent diffusion (Rombach et al. 2022), small.

    jaxgen train --config experiments/kl_autoencoder_mnist.py --workdir runs/kl_ae_mnist
    jaxgen eval --workdir runs/kl_ae_mnist --metrics recon --num 10000

A conv encoder to a 7 x 7 x 4 latent grid (a factor 4 down-sampling, 196
numbers per 784-pixel image), a discretized-logistic decoder over the 256
levels, and a small KL weight (beta = 1e-3) that keeps the latent near N(0, I)
without forcing out detail. Latent models use it through
`run.model.encode(run.params, images)` and `run.model.decode(run.params, latents)`.
`:smoke` shrinks it to seconds.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'vae'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  # 28x28 -> 14x14 -> 7x7 by strided convs, then a dense layer to the 32-d posterior.
  # (An MLP VAE, model.network=mlp, trains 10x faster here but stops near 104 nats.)
  config.model = dict(kind='gaussian', network='conv', hidden=(512, 256), ch=16, ch_mult=(1, 2, 2),
                      num_res_blocks=0, latent_dim=32, spatial=False, likelihood='bernoulli',
                      num_codes=512, dtype='float32')
  config.vae = dict(beta=1.0, warmup_steps=0, commitment=0.25, codebook_decay=0.99)
  config.optim = dict(lr=1e-3, warmup_steps=100, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                      grad_clip=100.0)
  config.train = dict(batch_size=128, num_steps=4680, ema_decay=0.999, log_every=100,
                      checkpoint_every=1000, keep_checkpoints=3, sample_every=1000, num_grid=64,
                      eval_every=0, eval_num=1000, eval_metrics='fid', eval_features='mnist',
                      keep_best='', fsdp=1, nonfinite='stop')
  config.model.update(spatial=True, latent_dim=4, likelihood='logistic')
  config.vae.update(beta=1e-3)
  if arg == 'smoke':
    config.model.update(ch=8, ch_mult=(1, 2), latent_dim=2)
    config.optim.warmup_steps = 2
    config.train.update(batch_size=8, num_steps=10, log_every=5, checkpoint_every=5,
                        sample_every=10, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
