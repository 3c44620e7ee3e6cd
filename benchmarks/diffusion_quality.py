"""Sample quality of a trained diffusion run: the guidance trade-off and FID against steps.

    python -m benchmarks.diffusion_quality --workdir runs/ddpm_cfg_mnist --num 200 --batch 50 \
        --guidance 0,1,3,5 --guidance-steps 25 --json guidance.json --plot guidance
    python -m benchmarks.diffusion_quality --workdir runs/ddpm_cfg_mnist --num 100 --batch 50 \
        --guidance '' --curve dpmpp2m:10,20,ddim:10,20,50,heun:5,10,ddpm --json steps.json --plot steps
    python -m benchmarks.diffusion_quality --workdir runs/ddpm_cfg_mnist --num 200 --batch 50 \
        --guidance '' --guidance-steps 25 --curve-guidance 0 --classifier-scale 0,1,2,4,8 \
        --json clf.json --plot clf

(the runs of benchmarks/results/diffusion_quality_mnist.md).

Every point samples `--num` images from the run (classes cycling 0..9) and
measures, with the run dataset's feature network (for MNIST the domain
classifier of `jaxgen eval train-features`), the FID against the train split
and the accuracy: how often the classifier names the class each image was
asked for. `--guidance` points use `--guidance-sampler` at `--guidance-steps`;
`--curve` points use guidance scale `--curve-guidance` (default 1: plain
conditional sampling) and list SAMPLER[:STEPS,...] ('ddpm' always runs all T
steps). `--classifier-scale` points use the run's noise-conditional classifier
(`jaxgen train-classifier`) at those scales, with `--guidance-sampler`,
`--guidance-steps` and classifier-free guidance `--curve-guidance` (0 on a
model trained with label dropout: its unconditional mode): the
classifier-guidance trade-off, for unconditional models too. Text-conditioned
latent models cycle the prompts "a handwritten {digit}" and the accuracy is
the prompt's.

Numbers at one --num are comparable with each other only: FID is biased
upwards at small sample counts. The same seed draws the same starting noise
for every point. --plot writes PREFIX_guidance.png, PREFIX_steps.png and
PREFIX_classifier.png, for the curves that ran (needs matplotlib).
"""

import argparse
import json
import sys
import time
from typing import Any

from benchmarks import common
from jaxgen import run as run_lib
from jaxgen.diffusion import classifier as classifier_lib
from jaxgen.errors import JaxgenError
from jaxgen.eval import evaluate


def parse_curve(spec: str) -> list[tuple[str, int]]:
  """'ddpm,ddim:10,20,heun:5' -> [('ddpm', 0), ('ddim', 10), ('ddim', 20), ('heun', 5)]."""
  points, sampler = [], None
  for item in (s.strip() for s in spec.split(',') if s.strip()):
    name, _, steps = item.partition(':')
    if not name.isdigit():
      sampler = name
      if not steps:
        points.append((sampler, 0))
        continue
    else:
      steps = name
    if sampler is None:
      raise JaxgenError(f'--curve must start with a sampler name, got {spec!r}.')
    points.append((sampler, int(steps)))
  return points


def parse_scales(flag: str, spec: str) -> list[float]:
  """'0,1,2.5' -> [0.0, 1.0, 2.5]; '' -> []; JaxgenError naming `flag` otherwise."""
  try:
    return [float(v) for v in spec.split(',') if v.strip()]
  except ValueError:
    raise JaxgenError(f'{flag} must be comma-separated numbers, got {spec!r}.') from None


def point(run: Any, *, num: int, batch: int, seed: int, **options: Any) -> dict[str, Any]:
  """FID and accuracy of `num` samples drawn with `options`, and the wall time."""
  t0 = time.perf_counter()
  result = evaluate.evaluate_run(run, metrics=('fid', 'accuracy'), num=num, batch=batch, seed=seed,
                                 write=False, **options)
  seconds = time.perf_counter() - t0
  metrics = result['metrics']
  fid = next(v for k, v in metrics.items() if k.startswith('FID'))
  acc = next(v for k, v in metrics.items() if k.startswith('accuracy'))
  row = dict(options, fid=fid, accuracy=acc, seconds=seconds,
             evaluations=run.model.evaluations_per_sample(**options))
  print(json.dumps(row), flush=True)
  return row


def plot(prefix: str, guidance_rows: list[dict], curve_rows: list[dict], title: str,
         classifier_rows: list[dict] = ()) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  for rows, key, symbol, name in ((guidance_rows, 'guidance', 'w', 'guidance'),
                                  (classifier_rows, 'classifier_scale', 's', 'classifier')):
    if not rows:
      continue
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot([r['accuracy'] for r in rows], [r['fid'] for r in rows], 'o-')
    for r in rows:
      ax.annotate(f"{symbol}={r[key]:g}", (r['accuracy'], r['fid']), textcoords='offset points',
                  xytext=(4, 4))
    ax.set_xlabel('classifier accuracy (asked-for class)')
    ax.set_ylabel('FID (feature network)')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(f'{prefix}_{name}.png', dpi=120)
    written.append(f'{prefix}_{name}.png')
  if curve_rows:
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for sampler in dict.fromkeys(r['sampler'] for r in curve_rows):
      rows = [r for r in curve_rows if r['sampler'] == sampler]
      ax.plot([r['evaluations'] for r in rows], [r['fid'] for r in rows], 'o-', label=sampler)
    ax.set_xscale('log')
    ax.set_xlabel('network evaluations per image')
    ax.set_ylabel('FID (feature network)')
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f'{prefix}_steps.png', dpi=120)
    written.append(f'{prefix}_steps.png')
  return written


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a diffusion run directory')
  parser.add_argument('--params', choices=('ema', 'raw'), default='ema')
  parser.add_argument('--num', type=int, default=500, help='samples per point')
  parser.add_argument('--batch', type=int, default=250, help='images per compiled sampling call')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--guidance', default='0,1,3,5', help="guidance scales ('' to skip)")
  parser.add_argument('--guidance-sampler', default='ddim')
  parser.add_argument('--guidance-steps', type=int, default=50)
  parser.add_argument('--curve', default='', help="SAMPLER[:STEPS,...],... ('' to skip)")
  parser.add_argument('--curve-guidance', type=float, default=1.0,
                      help='classifier-free guidance of the --curve and --classifier-scale points')
  parser.add_argument('--classifier-scale', default='',
                      help="classifier-guidance scales, e.g. 0,1,2,4 ('' to skip; needs "
                           "`jaxgen train-classifier`)")
  parser.add_argument('--eta', type=float, default=None,
                      help="DDIM noise scale of the ddim points (default: the run config's)")
  parser.add_argument('--json', default=None, help='write the rows and the machine here')
  parser.add_argument('--plot', default=None, metavar='PREFIX',
                      help='write PREFIX_guidance.png and PREFIX_steps.png')
  args = parser.parse_args(argv)
  try:
    guidance = parse_scales('--guidance', args.guidance)
    scales = parse_scales('--classifier-scale', args.classifier_scale)
    curve = parse_curve(args.curve)
    run = run_lib.load_run(args.workdir, params=args.params)
    guided_run = classifier_lib.attach_classifier(run) if any(scales) else run
    common_opts = dict(label=-1)
    if args.eta is not None:
      common_opts['eta'] = args.eta
    guidance_rows = [point(run, num=args.num, batch=args.batch, seed=args.seed,
                           sampler=args.guidance_sampler, steps=args.guidance_steps, guidance=w,
                           **common_opts)
                     for w in guidance]
    curve_rows = []
    for sampler, steps in curve:
      opts = dict(common_opts, sampler=sampler, steps=steps, guidance=args.curve_guidance)
      curve_rows.append(point(run, num=args.num, batch=args.batch, seed=args.seed, **opts))
    classifier_rows = [point(guided_run, num=args.num, batch=args.batch, seed=args.seed,
                             sampler=args.guidance_sampler, steps=args.guidance_steps,
                             guidance=args.curve_guidance, classifier_scale=s, **common_opts)
                       for s in scales]
  except JaxgenError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  title = f'{args.workdir} step {run.step}, {args.num} samples'
  command = ' '.join(['python -m benchmarks.diffusion_quality'] + (argv or sys.argv[1:]))
  record = dict(common.machine(command),
                workdir=args.workdir, step=run.step, params=args.params, num=args.num,
                guidance=guidance_rows, curve=curve_rows, classifier=classifier_rows)
  common.write_json(args.json, record)
  if args.plot:
    print('wrote', ', '.join(plot(args.plot, guidance_rows, curve_rows, title, classifier_rows)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
