"""Latent diffusion on MNIST with text prompts (Rombach et al. 2022, Stable Diffusion's recipe, small).

    jaxgen train --config experiments/kl_autoencoder_mnist.py --workdir runs/kl_ae_mnist
    jaxgen train --config experiments/ldm_mnist.py --workdir runs/ldm_mnist
    jaxgen sample --workdir runs/ldm_mnist --prompt "a handwritten seven" --num 16 --out seven.png
    jaxgen eval --workdir runs/ldm_mnist --metrics fid,accuracy --num 1000

The UNet diffuses the 7 x 7 x 4 latents of the KL autoencoder `runs/kl_ae_mnist`
(its posterior means times `diffusion.latent_scale`, 1 / their std: 0.858 for the
committed autoencoder config, measured on 500 training images; measure yours
with `jaxgen.diffusion.model.measure_latent_scale` on a few hundred images and
set `--config.diffusion.latent_scale=...` if your autoencoder differs). 7 is odd,
so the UNet pads its input to 8 x 8 (`model.pad_to_fit`) and crops its output:
two levels, 8 x 8 and 4 x 4, each with a SpatialTransformer that attends to
the prompt, and one in the middle. The prompt goes through a 2-layer byte-level
transformer text encoder that trains with the UNet (nothing is downloaded).
Training prompts come from the labels through templates ("a handwritten seven",
"the digit 7", "seven", "a 7", ... in jaxgen.diffusion.prompts); 10% of them are
dropped to the empty prompt, so sampling uses classifier-free guidance
(`sample.guidance`, 3 by default). Without --prompt, samples cycle through
"a handwritten zero" .. "a handwritten nine", which `--metrics accuracy` checks.

About 1.7M parameters; 3,000 steps took 45 min on the 2-core CPU machine this
project is developed on (FID 44.4 and prompt accuracy 0.998 on 1,000 samples:
benchmarks/results/ldm_mnist.md; with a training job sharing the cores for the
first third). `:smoke` shrinks it to seconds;
it diffuses the latents of the autoencoder named by
`--config.diffusion.autoencoder=WORKDIR` (the tests train
`experiments/kl_autoencoder_mnist.py:smoke` for it), or the pixels without one.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.family = 'diffusion'
  config.seed = 0
  config.data = dict(name='mnist', random_flip=False)
  # Latents 7x7 -> padded 8x8 -> 4x4; SpatialTransformers at both sizes and in the middle.
  config.model = dict(ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(8, 4),
                      dropout=0.0, num_classes=10, dtype='float32', pad_to_fit=True,
                      context_dim=64, num_heads=4, transformer_depth=1, conditioning='text',
                      text_width=64, text_layers=2, text_max_len=32,
                      attention='auto', split_skip=True, remat=False)
  config.diffusion = dict(schedule='linear', num_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          prediction='eps', label_dropout=0.1, autoencoder='runs/kl_ae_mnist',
                          latent_scale=0.858)  # 1 / std of kl_autoencoder_mnist.py's latents
  # clip_x0 does not apply in latent space (the model ignores it there).
  config.sample = dict(sampler='ddim', steps=50, eta=1.0, variance='fixedlarge', clip_x0=True,
                       label=-1, guidance=3.0, prompt='')
  config.optim = dict(lr=1e-3, warmup_steps=200, decay_steps=0, end_lr_frac=0.0,
                      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0)
  config.train = dict(batch_size=64, num_steps=3000, ema_decay=0.998, log_every=50,
                      checkpoint_every=500, keep_checkpoints=3, sample_every=1000, num_grid=64,
                      eval_every=0, eval_num=1000, eval_metrics='fid', eval_features='mnist',
                      keep_best='', fsdp=1, nonfinite='stop')

  if arg == 'smoke':
    # Tiny, no down-sampling (the smoke autoencoder's latents are 14x14x2), one transformer
    # in the middle. The autoencoder comes from --config.diffusion.autoencoder=...
    config.model.update(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                        context_dim=32, num_heads=2, text_width=32, text_layers=1, text_max_len=24)
    config.diffusion.update(num_timesteps=100, autoencoder='', latent_scale=1.0)
    config.sample.update(steps=5)
    config.optim.warmup_steps = 2
    config.train.update(batch_size=8, num_steps=4, log_every=2, checkpoint_every=4,
                        sample_every=0, num_grid=4)
  elif arg:
    raise ValueError(f'unknown config argument {arg!r}; use smoke or nothing.')
  return config
