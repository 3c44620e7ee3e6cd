"""The `jaxgen` command line: a thin layer that parses flags and calls the library.

    jaxgen train  --config experiments/NAME.py[:ARG] --workdir DIR [--config.KEY=VALUE ...]
    jaxgen sample --workdir DIR --num N --out FILE.npz|FILE.png [--sampler ddpm|ddim|dpmpp2m|dpmpp2m_sde|heun] ...
    jaxgen eval   --workdir DIR --metrics fid,bpd ...
    jaxgen train-classifier --workdir DIR [--num-steps N] [--batch B] [--seed S]
    jaxgen info   --config experiments/NAME.py[:ARG] [--config.KEY=VALUE ...]
    jaxgen palette --dataset NAME --colors K --out FILE.npy
    jaxgen edit   --workdir DIR --task inpaint|img2img|interpolate --image SRC --out FILE.png|FILE.npz ...

Bad input is reported in one sentence on stderr with exit status 2, before
anything is written.
"""

import argparse
import os
import sys
from typing import Sequence

from jaxgen import xla_flags
from jaxgen.errors import JaxgenError

CONFIG_PREFIX = '--config.'
SAMPLERS = ('ddpm', 'ddim', 'dpmpp2m', 'dpmpp2m_sde', 'heun', 'cached', 'naive')  # diffusion; autoregressive
EDIT_TASKS = ('inpaint', 'img2img', 'interpolate')


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
  sub = parser.add_subparsers(dest='command', required=True,
                              metavar='{train,sample,eval,info,palette,edit,train-classifier}')

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
                      help="diffusion: ddpm|ddim|dpmpp2m|dpmpp2m_sde|heun; autoregressive: cached|naive "
                           "(default: the config's)")
  sample.add_argument('--temperature', type=float, default=None,
                      help="autoregressive: logits divided by it (default: the config's)")
  sample.add_argument('--steps', type=int, default=None,
                      help='ddim/dpmpp2m(_sde)/heun timesteps K (heun: 2K-1 evaluations; default: the config\'s)')
  sample.add_argument('--guidance', type=float, default=None,
                      help='diffusion: classifier-free guidance scale (1: none; needs a model trained '
                           'with diffusion.label_dropout > 0)')
  sample.add_argument('--classifier-scale', type=float, default=None, metavar='S',
                      help='diffusion: classifier guidance scale towards --label (0: none; needs '
                           '`jaxgen train-classifier --workdir DIR` first; unconditional models too)')
  sample.add_argument('--eta', type=float, default=None, help='DDIM noise scale (0: deterministic)')
  sample.add_argument('--truncation', type=float, default=None,
                      help='StyleGAN2 truncation psi (1: none; default: the config\'s)')
  sample.add_argument('--label', type=int, default=None,
                      help='class of a conditional model\'s samples (-1: cycle through the classes)')
  sample.add_argument('--prompt', default=None,
                      help='diffusion, text-conditioned models: the prompt of every sample, e.g. '
                           '"a handwritten seven" (default: cycle "a handwritten {digit}")')
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
                  help='comma-separated: fid,kid,is,pr,coverage (class histogram of the samples), '
                       'accuracy (the feature network agrees with the asked-for class) and, with '
                       '--workdir, bpd (likelihood) and '
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
                  help='diffusion: ddpm|ddim|dpmpp2m|dpmpp2m_sde|heun; autoregressive: cached|naive')
  ev.add_argument('--temperature', type=float, default=None, help='autoregressive: logit temperature')
  ev.add_argument('--steps', type=int, default=None, help='ddim/dpmpp2m(_sde)/heun timesteps')
  ev.add_argument('--guidance', type=float, default=None, help='diffusion: classifier-free guidance scale')
  ev.add_argument('--classifier-scale', type=float, default=None, metavar='S',
                  help='diffusion: classifier guidance scale (needs `jaxgen train-classifier` first)')
  ev.add_argument('--eta', type=float, default=None, help='DDIM noise scale')
  ev.add_argument('--truncation', type=float, default=None, help='StyleGAN2 truncation psi')
  ev.add_argument('--label', type=int, default=None, help='conditional models: class of the samples')
  ev.add_argument('--prompt', default=None, help='text-conditioned diffusion: the prompt of the samples')
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
  _add_edit_parser(sub)
  _add_train_classifier_parser(sub)
  return parser


def _add_edit_parser(sub) -> None:
  """The `edit` subcommand's flags (diffusion runs: inpainting, SDEdit, interpolation)."""
  ed = sub.add_parser(
      'edit', help='edit images with a trained diffusion run (inpaint, img2img, interpolate)',
      description='Edit --image with the EMA parameters of the latest checkpoint in --workdir, with '
                  'DDIM on --steps timesteps. inpaint repaints the --box (or where --mask is black) '
                  'and keeps the rest exactly; img2img (SDEdit) noises the images to --strength and '
                  'denoises them; interpolate inverts two images to DDIM latents and decodes --num '
                  'points of the spherical path between them. SRC is a .png, .npy or .npz file '
                  '(.npz: uint8 images under "images", as jaxgen sample writes) or '
                  'DATASET:SPLIT:INDEX[,INDEX...], e.g. mnist:test:0,1,2,3. A .png output is a grid: '
                  'inpaint rows (original, masked input, --num results), img2img rows (original, '
                  '--num results), interpolate one row (a, --num path points, b); .npz holds the '
                  'results as uint8 under "images".')
  ed.add_argument('--workdir', required=True, help='a run directory of the diffusion family')
  ed.add_argument('--task', required=True, choices=EDIT_TASKS, help='what to do')
  ed.add_argument('--image', required=True, metavar='SRC', help='the image(s) to edit')
  ed.add_argument('--image2', metavar='SRC',
                  help='interpolate: the end image b (default: --image holds exactly a and b)')
  ed.add_argument('--mask', metavar='FILE.png|FILE.npy',
                  help='inpaint: white (1) = keep, black (0) = repaint; one [H, W] mask for all images')
  ed.add_argument('--box', metavar='Y0,X0,Y1,X1',
                  help='inpaint: repaint rows Y0..Y1-1 and columns X0..X1-1, keep the rest')
  ed.add_argument('--strength', type=float, default=None,
                  help='img2img: noise level in (0, 1] to start from (default 0.6; 1: almost pure noise)')
  ed.add_argument('--num', type=int, default=None,
                  help='interpolate: points on the path (default 8); inpaint/img2img: results per '
                       'image (default 4)')
  ed.add_argument('--out', required=True, metavar='FILE.png|FILE.npz', help='output file')
  ed.add_argument('--steps', type=int, default=None, help="DDIM timesteps (default: the config's; 0: all)")
  ed.add_argument('--eta', type=float, default=None,
                  help="inpaint/img2img: DDIM noise scale (default: the config's)")
  ed.add_argument('--label', type=int, default=None,
                  help="conditional models: the class (default: a dataset source's labels, else cycle)")
  ed.add_argument('--prompt', default=None, help='text-conditioned models: the prompt')
  ed.add_argument('--guidance', type=float, default=None, help='classifier-free guidance scale')
  ed.add_argument('--classifier-scale', type=float, default=None, metavar='S',
                  help='classifier guidance towards the class (an unconditional model needs --label) '
                       'with the classifier of `jaxgen train-classifier` (default 0: none)')
  ed.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
  ed.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  ed.add_argument('--params', choices=('ema', 'raw'), default='ema',
                  help='EMA parameters (default) or the raw trained ones (short runs)')


def _add_train_classifier_parser(sub) -> None:
  """The `train-classifier` subcommand's flags (classifier guidance for diffusion runs)."""
  tc = sub.add_parser(
      'train-classifier', help='train the noise-conditional classifier of a diffusion run',
      description="Train a classifier of noised images (Dhariwal & Nichol 2021) on the train split of "
                  "the run's dataset with the run's noise schedule, report its held-out accuracy at "
                  't = 0, T/4 and T/2, and save it in WORKDIR/classifier/ (replacing an earlier one only '
                  'once complete). `jaxgen sample --classifier-scale S` then guides with it.')
  tc.add_argument('--workdir', required=True, help='a run directory of the diffusion family')
  tc.add_argument('--num-steps', type=int, default=None,
                  help="training steps (default: the config's classifier.steps, else 2000)")
  tc.add_argument('--batch', type=int, default=None,
                  help="global batch size, a multiple of the device count (default: the config's "
                       'classifier.batch, else 64)')
  tc.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
  tc.add_argument('--eval-num', type=int, default=1000,
                  help='held-out images the final accuracy is measured on (default 1000)')


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
               label=args.label, temperature=args.temperature, guidance=args.guidance,
               prompt=args.prompt, classifier_scale=args.classifier_scale)
  return {k: v for k, v in given.items() if v is not None}


def _with_classifier(run, args):
  """`run`, holding its noise-conditional classifier when --classifier-scale > 0 (diffusion runs)."""
  if not (args.classifier_scale or 0) > 0:  # a negative scale is named by the model's sample_options
    return run
  from jaxgen.diffusion import classifier  # pylint: disable=g-import-not-at-top
  return classifier.attach_classifier(run)


def _train_classifier(args) -> None:
  from jaxgen.diffusion import classifier  # pylint: disable=g-import-not-at-top
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
  given = (('--num-steps', args.num_steps), ('--batch', args.batch), ('--eval-num', args.eval_num))
  for flag, value in given:
    if value is not None and value < 1:
      raise JaxgenError(f'{flag} must be positive, got {value}.')
  run = load_run(args.workdir)
  result = classifier.train_classifier(run, num_steps=args.num_steps, batch_size=args.batch,
                                       seed=args.seed, eval_num=args.eval_num)
  accuracy = ', '.join(f'{k} {v:.3f}' for k, v in result['accuracy'].items())
  print(f"Trained the classifier of {args.workdir}: {result['split']} accuracy {accuracy} "
        f"({result['num_examples']} images); saved to {classifier.classifier_dir(args.workdir)}.")


def _sample(args) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxgen import images as images_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
  ext = os.path.splitext(args.out)[1].lower()
  if ext not in ('.npz', '.png'):
    raise JaxgenError(f'--out must end in .npz or .png, got {args.out!r}.')
  if args.num < 1 or args.batch < 1:
    raise JaxgenError(f'--num and --batch must be positive, got {args.num} and {args.batch}.')
  if args.show != 'samples' and ext != '.png':
    raise JaxgenError(f'--show {args.show} writes a picture; use --out FILE.png.')
  run = _with_classifier(load_run(args.workdir, args.step, args.params), args)
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
  from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
  batches = run.iter_generate(args.num, seed=args.seed, batch=args.batch, progress=True, **options)
  # The asked-for classes (None for unconditional draws), for `jaxgen eval --fake FILE.npz`.
  batches, labels = evaluate.with_requested_labels(run.model, batches, options, required=False)
  images = np.concatenate(list(batches))
  if ext == '.npz':
    images_lib.save_npz(args.out, images, labels)
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
    run = _with_classifier(load_run(args.workdir, params=args.params), args)
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


def _parse_source(flag: str, src: str) -> tuple[str, str, list[int]] | str:
  """A file path (checked to exist), or (DATASET, SPLIT, [INDEX, ...]) for DATASET:SPLIT:INDEX,...."""
  if os.path.isfile(src):
    if os.path.splitext(src)[1].lower() not in ('.png', '.npy', '.npz'):
      raise JaxgenError(f'{flag} {src!r} must be a .png, .npy or .npz file.')
    return src
  parts = src.split(':')
  if len(parts) == 3 and parts[0] and parts[1]:
    try:
      indices = [int(i) for i in parts[2].split(',')]
    except ValueError:
      indices = []
    if indices and min(indices) >= 0:
      return parts[0], parts[1], indices
  raise JaxgenError(f'{flag} {src!r} is neither a file nor DATASET:SPLIT:INDEX[,INDEX...] '
                    '(e.g. mnist:test:0,1) with indices >= 0.')


def _parse_box(box: str) -> tuple[int, int, int, int]:
  try:
    y0, x0, y1, x1 = (int(v) for v in box.split(','))
  except ValueError:
    y0 = x0 = y1 = x1 = -1
  if not (0 <= y0 < y1 and 0 <= x0 < x1):
    raise JaxgenError(f'--box must be four integers Y0,X0,Y1,X1 with 0 <= Y0 < Y1 and 0 <= X0 < X1, '
                      f'got {box!r}.')
  return y0, x0, y1, x1


def _check_edit_args(args) -> None:
  """Every check of `jaxgen edit` that needs no file contents and no run (before anything is read)."""
  ext = os.path.splitext(args.out)[1].lower()
  if ext not in ('.npz', '.png'):
    raise JaxgenError(f'--out must end in .npz or .png, got {args.out!r}.')
  only = {'--mask': ('inpaint', args.mask), '--box': ('inpaint', args.box),
          '--strength': ('img2img', args.strength), '--image2': ('interpolate', args.image2)}
  for flag, (task, value) in only.items():
    if value is not None and args.task != task:
      raise JaxgenError(f'{flag} is for --task {task}; drop it for --task {args.task}.')
  if args.task == 'inpaint' and (args.mask is None) == (args.box is None):
    raise JaxgenError('--task inpaint needs exactly one of --box Y0,X0,Y1,X1 and --mask FILE '
                      '(the region to repaint).')
  if args.strength is not None and not 0.0 < args.strength <= 1.0:
    raise JaxgenError(f'--strength must be in (0, 1], got {args.strength}.')
  least = 2 if args.task == 'interpolate' else 1
  if args.num is not None and args.num < least:
    raise JaxgenError(f'--num must be at least {least} for --task {args.task}, got {args.num}.')
  if args.steps is not None and args.steps < 0:
    raise JaxgenError(f'--steps must be >= 1 (or 0: every timestep), got {args.steps}.')
  if args.eta is not None and not 0.0 <= args.eta <= 1.0:
    raise JaxgenError(f'--eta must be in [0, 1], got {args.eta}.')
  if args.eta is not None and args.task == 'interpolate':
    raise JaxgenError('--eta does not apply to --task interpolate (DDIM inversion and decoding are '
                      'deterministic); drop it.')
  if args.box is not None:
    _parse_box(args.box)
  if args.mask is not None and not (os.path.isfile(args.mask)
                                    and os.path.splitext(args.mask)[1].lower() in ('.png', '.npy')):
    raise JaxgenError(f'--mask {args.mask!r} must be an existing .png or .npy file.')
  _parse_source('--image', args.image)
  if args.image2 is not None:
    _parse_source('--image2', args.image2)


def _load_source(flag: str, src: str, run):
  """(float32 images [N, H, W, C] in [-1, 1] for `run`, int labels [N] or None) from SRC."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  shape = tuple(run.model.image_shape)
  source, labels = _parse_source(flag, src), None
  if isinstance(source, tuple):
    import ml_collections  # pylint: disable=g-import-not-at-top
    from jaxgen import data as data_lib  # pylint: disable=g-import-not-at-top
    name, split, indices = source
    data_config = (run.config.data if run.config.data.name == name
                   else ml_collections.ConfigDict(dict(name=name, random_flip=False)))
    builder = data_lib.prepare_for(data_config)
    if split not in builder.info.splits:
      raise JaxgenError(f'{flag}: dataset {name} has no split {split!r}; its splits are '
                        f'{", ".join(sorted(builder.info.splits))}.')
    records = builder.as_data_source(split)
    if max(indices) >= len(records):
      raise JaxgenError(f'{flag}: index {max(indices)} is past the end of {name}:{split} '
                        f'({len(records)} images).')
    elements = [records[i] for i in indices]
    images = np.stack([e['image'] for e in elements])  # [N, H, W, C] uint8
    labels = np.asarray([e['label'] for e in elements], np.int32)
  elif src.lower().endswith('.png'):
    with Image.open(src) as img:
      images = np.asarray(img.convert('L' if shape[2] == 1 else 'RGB'))[None]  # [1, H, W(, C)]
  elif src.lower().endswith('.npz'):
    with np.load(src) as f:
      if 'images' not in f:
        raise JaxgenError(f'{flag} {src!r} has no array "images" (uint8 [N, H, W, C]).')
      images = f['images']
  else:
    images = np.load(src, allow_pickle=False)
  if shape[2] == 1 and images.ndim in (2, 3) and tuple(images.shape[-2:]) == shape[:2]:
    images = images[..., None]  # gray [(N,) H, W] -> [(N,) H, W, 1]
  if images.ndim == 3:
    images = images[None]  # one image
  if images.ndim != 4 or tuple(images.shape[1:]) != shape:
    raise JaxgenError(f'{flag} {src!r} holds images of shape {tuple(images.shape)}; this run needs '
                      f'[N, {", ".join(map(str, shape))}].')
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
  elif not (np.issubdtype(images.dtype, np.floating) and np.all(np.abs(images) <= 1.0)):
    raise JaxgenError(f'{flag} {src!r} must hold uint8 images or floats in [-1, 1].')
  return images.astype(np.float32), labels


def _edit_mask(args, shape: tuple[int, int, int]):
  """The mask float32 [H, W, 1 or C] (1: keep) of --box or --mask for images of `shape`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width, channels = shape
  if args.box is not None:
    y0, x0, y1, x1 = _parse_box(args.box)
    if y1 > height or x1 > width:
      raise JaxgenError(f'--box {args.box} leaves the {height}x{width} image; keep Y1 <= {height} '
                        f'and X1 <= {width}.')
    mask = np.ones((height, width, 1), np.float32)
    mask[y0:y1, x0:x1] = 0.0
    return mask
  if args.mask.lower().endswith('.png'):
    with Image.open(args.mask) as img:
      mask = (np.asarray(img.convert('L')) >= 128).astype(np.float32)
  else:
    mask = np.load(args.mask, allow_pickle=False).astype(np.float32)
  if mask.ndim == 2:
    mask = mask[..., None]
  if mask.ndim != 3 or mask.shape[:2] != (height, width) or mask.shape[2] not in (1, channels):
    allowed = '1' if channels == 1 else f'1 or {channels}'
    raise JaxgenError(f'--mask {args.mask!r} has shape {mask.shape}; this run needs [{height}, {width}] '
                      f'or [{height}, {width}, {allowed}].')
  if not np.all((mask >= 0) & (mask <= 1)):
    raise JaxgenError(f'--mask {args.mask!r} must hold values in [0, 1] (1: keep).')
  return mask


def _edit(args) -> None:
  _check_edit_args(args)  # before anything is read
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxgen import images as images_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
  run = load_run(args.workdir, args.step, args.params)
  if run.config.family != 'diffusion':
    raise JaxgenError(f'jaxgen edit needs a diffusion run; {args.workdir} is {run.config.family}.')
  given = dict(steps=args.steps, eta=args.eta, label=args.label, prompt=args.prompt,
               guidance=args.guidance, classifier_scale=args.classifier_scale)
  options = {k: v for k, v in given.items() if v is not None}
  if (args.classifier_scale or 0) > 0 and not run.model.num_classes and args.label is None:
    raise JaxgenError('--classifier-scale with an unconditional model guides towards one class: '
                      'pass --label.')
  run = _with_classifier(run, args)
  model = run.model
  model.sample_options(**options)  # steps within [0, T], label, guidance, scale: before any work
  images, labels = _load_source('--image', args.image, run)  # [N, H, W, C], [N] or None
  if args.label is not None or not model.num_classes:
    labels = None  # the label option (or no conditioning) applies
  rng = jax.random.PRNGKey(args.seed)
  # A few images: one device runs the edit (replicated parameters would run it on every device).
  params = jax.device_put(run.params, jax.local_devices()[0])

  if args.task == 'interpolate':
    num = args.num or 8
    if args.image2 is not None:
      b, labels_b = _load_source('--image2', args.image2, run)
      if len(images) != 1 or len(b) != 1:
        raise JaxgenError(f'--image and --image2 must each name one image, got {len(images)} and '
                          f'{len(b)}.')
      images, labels = np.concatenate([images, b]), (None if labels is None or labels_b is None
                                                      else np.concatenate([labels, labels_b]))
    elif len(images) != 2:
      raise JaxgenError(f'--task interpolate needs two images: --image with exactly two (e.g. '
                        f'mnist:test:0,1) or one each in --image and --image2; got {len(images)}.')
    label = None if labels is None or labels[0] != labels[1] else int(labels[0])
    fn = jax.jit(lambda p, a, b: model.interpolate(p, a, b, num=num, labels=label, **options))
    path = images_lib.to_uint8(jax.device_get(fn(params, images[0], images[1])))  # [num, H, W, C]
    results, grid, ncols = path, np.concatenate([images_lib.to_uint8(images[:1]), path,
                                                 images_lib.to_uint8(images[1:])]), num + 2
  else:
    num = args.num or 4
    x = np.repeat(images, num, axis=0)  # [N * num, H, W, C], each image num times
    y = None if labels is None else np.repeat(labels, num)
    if args.task == 'inpaint':
      mask = _edit_mask(args, tuple(model.image_shape))  # [H, W, 1 or C]
      masks = np.broadcast_to(mask, (len(x), *mask.shape))
      fn = jax.jit(lambda p, r, x, m, y: model.inpaint(p, r, x, m, labels=y, **options))
      out = fn(params, rng, x, masks, y)
      shown = [images, np.where(mask > 0.5, images, 0.0)]  # the original, the input (repaint: grey)
    else:
      strength = 0.6 if args.strength is None else args.strength
      fn = jax.jit(lambda p, r, x, y: model.img2img(p, r, x, strength=strength, labels=y, **options))
      out = fn(params, rng, x, y)
      shown = [images]
    results = images_lib.to_uint8(jax.device_get(out)).reshape(len(images), num, *images.shape[1:])
    rows = np.concatenate([images_lib.to_uint8(s)[:, None] for s in shown] + [results], axis=1)
    grid, ncols = rows.reshape(-1, *images.shape[1:]), rows.shape[1]
    results = results.reshape(-1, *images.shape[1:])
  if args.out.lower().endswith('.npz'):
    images_lib.save_npz(args.out, results)
  else:
    images_lib.save_grid(args.out, grid, ncols=ncols)
  print(f'Wrote {args.task} ({len(results)} images) from step {run.step} to {args.out}.')


def main(argv: Sequence[str] | None = None) -> int:
  xla_flags.prefer_xla_cpu_kernels()  # before JAX starts a backend; see jaxgen.xla_flags
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
    elif args.command == 'edit':
      _edit(args)
    elif args.command == 'train-classifier':
      _train_classifier(args)
    else:
      _info(args, overrides)
  except JaxgenError as e:
    print(f'jaxgen: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
