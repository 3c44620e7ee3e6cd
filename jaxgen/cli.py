"""The `jaxgen` command line: a thin layer that parses flags and calls the library.

    jaxgen train  --config experiments/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]
    jaxgen sample --workdir DIR --num N --out FILE.npz|FILE.png [--sampler ddpm|ddim|dpmpp2m|heun] ...
    jaxgen eval   --workdir DIR --metrics fid,bpd ...
    jaxgen info   --config experiments/NAME.py[:ARG] [--config.KEY=VALUE ...]
    jaxgen palette --dataset NAME --colors K --out FILE.npy

Bad input is reported in one sentence on stderr with exit status 2, before
anything is written.
"""

import argparse
import os
import sys
from typing import Sequence

from jaxgen.errors import JaxgenError

CONFIG_PREFIX = '--config.'
SAMPLERS = ('ddpm', 'ddim', 'dpmpp2m', 'heun', 'cached', 'naive')  # diffusion; autoregressive


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.KEY=VALUE` items (returned as `KEY=VALUE`) from the other flags."""
  rest, overrides = [], []
  for arg in argv:
    if arg.startswith(CONFIG_PREFIX):
      if '=' not in arg:
        raise JaxgenError(f'config override {arg!r} must be written {CONFIG_PREFIX}KEY=VALUE.')
      overrides.append(arg[len(CONFIG_PREFIX):])
    else:
      rest.append(arg)
  return rest, overrides


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='jaxgen', description='Train, sample and inspect generative image models (JAX/Flax).')
  sub = parser.add_subparsers(dest='command', required=True, metavar='{train,sample,eval,info,palette}')

  train = sub.add_parser(
      'train', help='train a model from an experiment config',
      description='Train the experiment in --config, writing checkpoints, metrics and sample grids to '
                  '--workdir. Running the same command again resumes from the latest checkpoint. '
                  'Override any config value with --config.KEY=VALUE (e.g. --config.train.num_steps=1000).')
  train.add_argument('--config', required=True, metavar='FILE.py[:ARG]',
                     help="experiment config file, optionally with an argument (e.g. ':smoke')")
  train.add_argument('--workdir', required=True, help='run directory (created; resumed if it exists)')
  dist = train.add_argument_group(
      'several processes', 'run the same command in every process (jax.distributed); '
      'without these flags the run uses one process')
  dist.add_argument('--distributed', action='store_true',
                    help="initialize jax.distributed from the cluster's environment (SLURM, TPU pods, ...)")
  dist.add_argument('--coordinator-address', metavar='HOST:PORT', help='address of process 0')
  dist.add_argument('--num-processes', type=int, help='number of processes')
  dist.add_argument('--process-id', type=int, help='this process (0 .. num-processes - 1)')

  sample = sub.add_parser(
      'sample', help='sample images from a trained run',
      description='Draw --num images from the EMA parameters of the latest checkpoint in --workdir, '
                  'in batches spread over all devices, each batch one compiled program. '
                  '.npz output holds uint8 NHWC images under the key "images"; .png output is a grid.')
  sample.add_argument('--workdir', required=True, help='a run directory written by jaxgen train')
  sample.add_argument('--num', type=int, required=True, help='number of images')
  sample.add_argument('--out', required=True, metavar='FILE.npz|FILE.png', help='output file')
  sample.add_argument('--sampler', choices=SAMPLERS, default=None,
                      help="diffusion: ddpm|ddim|dpmpp2m|heun; autoregressive: cached|naive "
                           "(default: the config's)")
  sample.add_argument('--temperature', type=float, default=None,
                      help="autoregressive: logits divided by it (default: the config's)")
  sample.add_argument('--steps', type=int, default=None,
                      help='ddim/dpmpp2m/heun timesteps K (heun: 2K-1 evaluations; default: the config\'s)')
  sample.add_argument('--guidance', type=float, default=None,
                      help='diffusion: classifier-free guidance scale (1: none; needs a model trained '
                           'with diffusion.label_dropout > 0)')
  sample.add_argument('--eta', type=float, default=None, help='DDIM noise scale (0: deterministic)')
  sample.add_argument('--truncation', type=float, default=None,
                      help='StyleGAN2 truncation psi (1: none; default: the config\'s)')
  sample.add_argument('--label', type=int, default=None,
                      help='class of a conditional model\'s samples (-1: cycle through the classes)')
  sample.add_argument('--show', default='samples',
                      choices=('samples', 'reconstructions', 'interpolations', 'manifold'),
                      help='samples from the prior (any family, default); vae family, as a .png: '
                           'reconstructions of --num test images, interpolations between --num pairs '
                           '(linear and spherical), or the manifold of a 2-d latent (--num grid cells); '
                           'gan family: interpolations, --num rows of spherical paths between two z')
  sample.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
  sample.add_argument('--batch', type=int, default=256, help='images per compiled call (default 256)')
  sample.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  sample.add_argument('--params', choices=('ema', 'raw'), default='ema',
                      help='EMA parameters (default) or the raw trained ones (short runs)')

  ev = sub.add_parser(
      'eval', help='evaluate a run or a sample file (FID, KID, IS, precision/recall)',
      description='Evaluate samples against a reference dataset. With --workdir, sample --num images '
                  "from the run's EMA parameters and compare them with its dataset's train split; with "
                  '--fake FILE.npz (uint8 NHWC under "images", from any library), compare that file with '
                  '--real DATASET[:SPLIT] or FILE.npz. Prints a table and writes JSON into the workdir or '
                  'beside the file. `jaxgen eval train-features --dataset mnist` trains the MNIST feature '
                  'network used for "FID (MNIST features)".')
  ev.add_argument('action', nargs='?', choices=('train-features',), default=None,
                  help='train-features: train the domain feature network of --dataset')
  ev.add_argument('--workdir', help='a run directory written by jaxgen train')
  ev.add_argument('--fake', metavar='FILE.npz', help='samples to evaluate')
  ev.add_argument('--real', metavar='DATASET[:SPLIT]|FILE.npz',
                  help='reference images (default with --workdir: the run dataset, split train)')
  ev.add_argument('--metrics', default='fid',
                  help='comma-separated: fid,kid,is,pr,coverage (class histogram of the samples) and, with --workdir, bpd (likelihood) and '
                       'recon (autoencoder reconstruction MSE and PSNR) (default fid)')
  ev.add_argument('--features', choices=('inception', 'mnist'), default=None,
                  help='feature network (default: mnist for MNIST, inception otherwise)')
  ev.add_argument('--num', type=int, default=None,
                  help='number of samples (default 10000 with --workdir, all images with --fake)')
  ev.add_argument('--batch', type=int, default=256, help='images per compiled sampling call')
  ev.add_argument('--seed', type=int, default=0, help='sampling seed')
  ev.add_argument('--params', choices=('ema', 'raw'), default='ema',
                  help='with --workdir: EMA parameters (default) or the raw trained ones (short runs)')
  ev.add_argument('--sampler', choices=SAMPLERS, default=None,
                  help='diffusion: ddpm|ddim|dpmpp2m|heun; autoregressive: cached|naive')
  ev.add_argument('--temperature', type=float, default=None, help='autoregressive: logit temperature')
  ev.add_argument('--steps', type=int, default=None, help='ddim/dpmpp2m/heun timesteps')
  ev.add_argument('--guidance', type=float, default=None, help='diffusion: classifier-free guidance scale')
  ev.add_argument('--eta', type=float, default=None, help='DDIM noise scale')
  ev.add_argument('--truncation', type=float, default=None, help='StyleGAN2 truncation psi')
  ev.add_argument('--label', type=int, default=None, help='conditional models: class of the samples')
  ev.add_argument('--iwae-samples', type=int, default=None, metavar='K',
                  help='with bpd, vae family: importance samples of the IWAE bound (default 1: the ELBO)')
  ev.add_argument('--dataset', default='mnist', help='with train-features: the dataset (mnist)')
  ev.add_argument('--num-steps', type=int, default=None, help='with train-features: training steps')

  info = sub.add_parser(
      'info', help="print a config's parameter count and FLOPs",
      description='Build the model of --config without training it and print its parameter count, '
                  'the FLOPs of one network evaluation per image (XLA cost analysis), and per sample.')
  info.add_argument('--config', required=True, metavar='FILE.py[:ARG]', help='experiment config file')

  pal = sub.add_parser(
      'palette', help='k-means colour palette of a dataset (for ImageGPT-style models)',
      description="Cluster --num-pixels pixels drawn from the dataset's train split into --colors "
                  'colours (k-means) and write them [K, C] to --out FILE.npy, for '
                  '--config.model.palette_file of a transformer with model.pixels=palette.')
  pal.add_argument('--dataset', required=True, help='dataset name (cifar10, mnist, ...)')
  pal.add_argument('--colors', type=int, default=512, help='palette size K (default 512, as ImageGPT)')
  pal.add_argument('--out', required=True, metavar='FILE.npy', help='output file')
  pal.add_argument('--num-pixels', type=int, default=1_000_000, help='pixels to cluster (default 1e6)')
  pal.add_argument('--iters', type=int, default=20, help='k-means iterations (default 20)')
  pal.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
  return parser


def _train(args, overrides) -> None:
  from jaxgen import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.train import distributed, trainer  # pylint: disable=g-import-not-at-top
  explicit = (args.coordinator_address, args.num_processes, args.process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise JaxgenError('--coordinator-address, --num-processes and --process-id go together; '
                      'pass all three or none (or --distributed to read them from the cluster).')
  config = config_lib.load_config(args.config, overrides)  # checked before any device is touched
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         auto=args.distributed)
  trainer.train_and_evaluate(config, args.workdir)


def _sample_options(args) -> dict:
  """The sampling options given on the command line (those left out keep the config's)."""
  given = dict(sampler=args.sampler, steps=args.steps, eta=args.eta, truncation=args.truncation,
               label=args.label, temperature=args.temperature, guidance=args.guidance)
  return {k: v for k, v in given.items() if v is not None}


def _sample(args) -> None:
  from jaxgen import images as images_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
  ext = os.path.splitext(args.out)[1].lower()
  if ext not in ('.npz', '.png'):
    raise JaxgenError(f'--out must end in .npz or .png, got {args.out!r}.')
  if args.num < 1 or args.batch < 1:
    raise JaxgenError(f'--num and --batch must be positive, got {args.num} and {args.batch}.')
  if args.show != 'samples' and ext != '.png':
    raise JaxgenError(f'--show {args.show} writes a picture; use --out FILE.png.')
  run = load_run(args.workdir, args.step, args.params)
  if args.show == 'interpolations' and run.config.family == 'gan':
    import jax  # pylint: disable=g-import-not-at-top
    options = _sample_options(args)
    run.model.sample_options(**options)
    fn = jax.jit(lambda p, r: run.model.interpolate(p, r, args.num, **options))
    images = images_lib.to_uint8(jax.device_get(fn(run.params, jax.random.PRNGKey(args.seed))))
    images_lib.save_grid(args.out, images, ncols=len(images) // args.num)
    print(f'Wrote {args.num} latent interpolations from step {run.step} to {args.out}.')
    return
  if args.show != 'samples':
    if run.config.family != 'vae':
      raise JaxgenError(f'--show {args.show} is for the vae family (and interpolations for gan); '
                        f'this run is {run.config.family}.')
    from jaxgen.vae import figures  # pylint: disable=g-import-not-at-top
    images, cols = figures.figure(run, args.show, args.num)
    images_lib.save_grid(args.out, images, ncols=cols)
    print(f'Wrote {args.show} ({len(images)} images) from step {run.step} to {args.out}.')
    return
  options = _sample_options(args)
  run.model.sample_options(**options)  # check options before the long part
  images = run.generate(args.num, seed=args.seed, batch=args.batch, progress=True, **options)
  if ext == '.npz':
    images_lib.save_npz(args.out, images)
  else:
    images_lib.save_grid(args.out, images)
  print(f'Wrote {len(images)} images {images.shape[1:]} from step {run.step} to {args.out}.')


def _eval(args) -> None:
  from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
  if args.action == 'train-features':
    from jaxgen.eval import domain  # pylint: disable=g-import-not-at-top
    out_dir = domain.default_features_dir(args.dataset)
    kwargs = {} if args.num_steps is None else {'num_steps': args.num_steps}
    result = domain.train_domain_classifier(args.dataset, out_dir=out_dir, **kwargs)
    print(f"Trained the {args.dataset} feature network: test accuracy {result['test_accuracy']:.4f}; "
          f'saved to {out_dir}.')
    return
  if bool(args.workdir) == bool(args.fake):
    raise JaxgenError('pass exactly one of --workdir (sample a run) and --fake FILE.npz.')
  metrics = evaluate.parse_metrics(args.metrics)
  if args.fake:
    if not args.real and set(metrics) - set(evaluate.FAKE_ONLY_METRICS):
      raise JaxgenError('--fake needs --real DATASET[:SPLIT] or --real FILE.npz for fid, kid and pr.')
    result = evaluate.evaluate_npz(args.fake, args.real or '', metrics=metrics, features=args.features,
                                   num=args.num)
  else:
    from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
    run = load_run(args.workdir, params=args.params)
    options = _sample_options(args)
    run.model.sample_options(**options)
    result = evaluate.evaluate_run(run, metrics=metrics, num=args.num or 10_000, features=args.features,
                                   real=args.real, seed=args.seed, batch=args.batch,
                                   iwae_samples=args.iwae_samples, **options)
  print(evaluate.format_table(result))
  print(f"Wrote {result['json']}.")


def _info(args, overrides) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgen import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.train import trainer  # pylint: disable=g-import-not-at-top
  from jaxgen.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(args.config, overrides)
  s = trainer.setup(config, mesh_lib.make_mesh())  # any train.fsdp: nothing is placed
  count = sum(x.size for x in jax.tree.leaves(s.abstract_state.params))
  print(f'family: {config.family}')
  print(f'image shape: {s.model.image_shape}')
  print(f'parameters: {count:,} ({count / 1e6:.2f}M)')
  flops = s.model.forward_flops()
  if flops:
    evals = s.model.evaluations_per_sample()
    print(f'FLOPs per network evaluation: {flops / 1e9:.3f} GFLOP per image')
    print(f'FLOPs per sample: {flops * evals / 1e12:.3f} TFLOP ({evals} evaluations, default sampler)')


def _palette(args) -> None:
  if not args.out.endswith('.npy'):
    raise JaxgenError(f'--out must end in .npy, got {args.out!r}.')
  if args.colors < 2 or args.num_pixels < args.colors or args.iters < 1:
    raise JaxgenError(f'need --colors >= 2, --num-pixels >= --colors and --iters >= 1; got '
                      f'{args.colors}, {args.num_pixels} and {args.iters}.')
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxgen import images as images_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.autoregressive import palette  # pylint: disable=g-import-not-at-top
  colors = palette.dataset_palette(args.dataset, args.colors, num_pixels=args.num_pixels,
                                   iters=args.iters, seed=args.seed)

  def write(tmp):
    with open(tmp, 'wb') as f:
      np.save(f, colors)

  images_lib.atomic_write(args.out, write)
  print(f'Wrote a {len(colors)}-colour palette of {args.dataset} to {args.out}.')


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    if args.command != 'train' and args.command != 'info' and overrides:
      raise JaxgenError(f'{args.command} takes no --config.KEY overrides.')
    if args.command == 'train':
      _train(args, overrides)
    elif args.command == 'sample':
      _sample(args)
    elif args.command == 'eval':
      _eval(args)
    elif args.command == 'palette':
      _palette(args)
    else:
      _info(args, overrides)
  except JaxgenError as e:
    print(f'jaxgen: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
