"""jaxgen against the diffusers peer of ../shared/PEERS.md, side by side in one command.

    python -m benchmarks.compare --preset h200 --out benchmarks/results/h200   # one H200
    python -m benchmarks.compare --preset cpu --out /tmp/cpu                   # a CPU, small batches
    python -m benchmarks.compare --preset smoke --out /tmp/smoke               # seconds (the CI test)

Runs, one after another on the same machine, jaxgen's DDPM CIFAR-10 config
(`experiments/ddpm_cifar10.py`, bf16 compute) and the peer (`UNet2DModel`
with the same network) at the same batch and the same number of steps:
1000-step DDPM sampling, training, and DDIM at a small batch. Each side runs
in its own process (`benchmarks.sampling`, `benchmarks.training`,
`benchmarks.peers.diffusers_unet`), so neither framework's allocator sees the
other's memory. Writes each process's JSON and `summary.json` / `summary.md`
(the ratios against the targets of issue 9) under --out, and prints the
summary last. Without torch and diffusers installed, the peer is reported as
missing and only jaxgen runs.

The h200 preset also runs ablations: the default workload again with one
config override (`model.attention=xla`: XLA's attention instead of cuDNN's
fused kernel; `model.split_skip=False`: the UNet's skip concatenations written
to memory; `model.remat=True` for training), tabled beside the default's
figure, so each speed option's effect is measured in the same run. `--set
KEY=VALUE` applies an override to every jaxgen stage.

--budget (seconds) bounds the whole command: a stage that would start after
it is skipped and named in the summary, and a stage still running at the end
is stopped, so the command fits a lease on a borrowed accelerator.

--rounds N runs the whole list N times in turn (round K's JSON under
--out/roundK/), so that both sides see the same slow drifts of a shared or
throttled machine; the summary then takes each timing figure's median over
the rounds and lists every round's jaxgen / peer ratios beside it. On the
2-core CI-kind VM single runs of either side vary by up to 30%, so the cpu
preset is meant to be run with --rounds 3 or more.
"""

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

CIFAR = 'experiments/ddpm_cifar10.py'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the stages run from the repo root

# name -> (module, arguments); {out} is the output folder. In priority order (a --budget
# drops the last): in h200, what the 2026-11-27 run did not reach (DDIM, remat) comes before the
# ablations it measured. Stages named jaxgen_sampling_* / jaxgen_training_* other than the
# defaults are ablations: the same workload with one config override (--set), reported
# beside the default's figure in the summary.
_SAMPLING = ['--config', CIFAR, '--dtype', 'bfloat16', '--samplers', 'ddpm', '--batch', '1024',
             '--time-steps', '40', '--repeats', '5']
_TRAINING = ['--config', CIFAR, '--dtype', 'bfloat16', '--batch', '512', '--steps', '30']
PRESETS: dict[str, list[tuple[str, str, list[str]]]] = {
    'h200': [
        ('jaxgen_sampling', 'benchmarks.sampling',
         [*_SAMPLING, '--measure-ceiling', '--profile', '{out}/profile_sampling']),
        ('peer_sampling', 'benchmarks.peers.diffusers_unet',
         ['--what', 'sampling', '--batch', '1024', '--modes', 'compile-bf16,eager-bf16,eager-fp32',
          '--time-steps', '40']),
        ('jaxgen_training', 'benchmarks.training', [*_TRAINING, '--profile', '{out}/profile_training']),
        ('peer_training', 'benchmarks.peers.diffusers_unet',
         ['--what', 'training', '--batch', '512', '--modes', 'compile-bf16,eager-bf16',
          '--train-steps', '30']),
        ('jaxgen_ddim', 'benchmarks.sampling',
         ['--config', CIFAR, '--dtype', 'bfloat16', '--samplers', 'ddim', '--batch', '16',
          '--ddim-steps', '50', '--repeats', '10']),
        ('peer_ddim', 'benchmarks.peers.diffusers_unet',
         ['--what', 'ddim', '--batch', '16', '--modes', 'eager-fp32', '--ddim-steps', '50']),
        ('jaxgen_training_remat', 'benchmarks.training', [*_TRAINING, '--set', 'model.remat=True']),
        ('jaxgen_sampling_xla_attention', 'benchmarks.sampling',
         [*_SAMPLING, '--set', 'model.attention=xla']),
        ('jaxgen_sampling_concat_skips', 'benchmarks.sampling',
         [*_SAMPLING, '--set', 'model.split_skip=False']),
        ('jaxgen_training_xla_attention', 'benchmarks.training',
         [*_TRAINING, '--set', 'model.attention=xla']),
        ('jaxgen_sampling_full', 'benchmarks.sampling',
         ['--config', CIFAR, '--dtype', 'bfloat16', '--samplers', 'ddpm', '--batch', '1024',
          '--repeats', '1', '--warmup', '0']),
    ],
    'cpu': [
        ('jaxgen_sampling', 'benchmarks.sampling',
         ['--config', CIFAR, '--dtype', 'float32', '--samplers', 'ddpm', '--batch', '4',
          '--time-steps', '10', '--repeats', '3']),
        ('peer_sampling', 'benchmarks.peers.diffusers_unet',
         ['--what', 'sampling', '--batch', '4', '--modes', 'eager-fp32', '--time-steps', '10',
          '--device', 'cpu']),
        ('jaxgen_training', 'benchmarks.training',
         ['--config', CIFAR, '--dtype', 'float32', '--batch', '8', '--steps', '5', '--repeats', '3']),
        ('peer_training', 'benchmarks.peers.diffusers_unet',
         ['--what', 'training', '--batch', '8', '--modes', 'eager-fp32', '--train-steps', '5',
          '--device', 'cpu']),
        ('jaxgen_ddim', 'benchmarks.sampling',
         ['--config', CIFAR, '--dtype', 'float32', '--samplers', 'ddim', '--batch', '1',
          '--ddim-steps', '10', '--repeats', '3']),
        ('peer_ddim', 'benchmarks.peers.diffusers_unet',
         ['--what', 'ddim', '--batch', '1', '--modes', 'eager-fp32', '--ddim-steps', '10',
          '--repeats', '3', '--device', 'cpu']),
    ],
    'smoke': [
        ('jaxgen_sampling', 'benchmarks.sampling',
         ['--config', CIFAR + ':smoke', '--samplers', 'ddpm', '--batch', '2', '--time-steps', '2',
          '--repeats', '1']),
        ('jaxgen_training', 'benchmarks.training',
         ['--config', CIFAR + ':smoke', '--batch', '2', '--steps', '1', '--warmup', '1',
          '--repeats', '1']),
        ('jaxgen_ddim', 'benchmarks.sampling',
         ['--config', CIFAR + ':smoke', '--samplers', 'ddim', '--batch', '1', '--ddim-steps', '2',
          '--repeats', '1']),
        ('jaxgen_sampling_concat_skips', 'benchmarks.sampling',
         ['--config', CIFAR + ':smoke', '--samplers', 'ddpm', '--batch', '2', '--time-steps', '2',
          '--repeats', '1', '--set', 'model.split_skip=False']),
    ],
}

# Issue 9's targets: jaxgen / peer.
TARGETS = {'sampling': 1.5, 'training': 1.5, 'ddim_vs_eager_fp32': 3.0}


def _load(out: str, name: str) -> dict[str, Any] | None:
  path = os.path.join(out, f'{name}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _best(rows: list[dict[str, Any]], key: str = 'images_per_s') -> dict[str, Any] | None:
  return max(rows, key=lambda r: r[key]) if rows else None


def summarise(out: str, ran: dict[str, str]) -> dict[str, Any]:
  """Ratios jaxgen / peer from the stage JSONs under `out`.

  A stage that `ran` names with a status other than 'ok' (skipped, failed, stopped)
  is left out even if an earlier run's JSON for it is still in `out`.
  """
  def load(name: str) -> dict[str, Any] | None:
    return _load(out, name) if ran.get(name, 'ok') == 'ok' else None

  get = lambda name: (load(name) or {}).get('results', [])  # noqa: E731
  s: dict[str, Any] = {'stages': ran}
  j_samp = _best(get('jaxgen_sampling'))
  p_samp = get('peer_sampling')
  ceiling = (load('jaxgen_sampling') or {}).get('ceiling_tflops')
  peer_flops = (load('peer_sampling') or {}).get('forward_gflops_per_image')
  if j_samp:
    s['sampling'] = dict(batch=j_samp['batch'], steps=j_samp['steps'], jaxgen_images_per_s=j_samp['images_per_s'],
                         jaxgen_ms_per_step=j_samp['ms_per_step'], jaxgen_peak_bytes=j_samp['peak_bytes'],
                         jaxgen_program_bytes=j_samp['program_bytes'],
                         peer={r['mode']: r['images_per_s'] for r in p_samp},
                         peer_peak_bytes={r['mode']: r['peak_bytes'] for r in p_samp})
    if ceiling and peer_flops:
      # Model FLOPs by the peer's count (torch's FLOP counter), as PEERS.md states the limit.
      limit = ceiling * 1e12 / (peer_flops * 1e9 * j_samp['steps'])
      s['sampling'].update(compute_limit_images_per_s=limit,
                           jaxgen_fraction_of_limit=j_samp['images_per_s'] / limit)
    best = _best(p_samp)
    if best:
      s['sampling'].update(peer_best_mode=best['mode'],
                           ratio_vs_best=j_samp['images_per_s'] / best['images_per_s'])
  full = _best(get('jaxgen_sampling_full'))
  if full and 'sampling' in s:
    s['sampling']['jaxgen_full_chain_images_per_s'] = full['images_per_s']
  j_train, p_train = _best(get('jaxgen_training')), get('peer_training')
  if j_train:
    s['training'] = dict(batch=j_train['batch'], jaxgen_images_per_s=j_train['images_per_s'],
                         jaxgen_ms_per_step=j_train['ms_per_step'], jaxgen_peak_bytes=j_train['peak_bytes'],
                         jaxgen_program_bytes=j_train['program_bytes'],
                         peer={r['mode']: r['images_per_s'] for r in p_train},
                         peer_peak_bytes={r['mode']: r['peak_bytes'] for r in p_train})
    best = _best(p_train)
    if best:
      s['training'].update(peer_best_mode=best['mode'],
                           ratio_vs_best=j_train['images_per_s'] / best['images_per_s'])
  variants = []  # ablation stages: the default workload with one config override
  for name in ran:
    kind = next((k for k in ('sampling', 'training') if name.startswith(f'jaxgen_{k}_')), None)
    row = _best(get(name)) if kind and name != 'jaxgen_sampling_full' else None
    if row and kind in s:
      overrides = (load(name) or {}).get('overrides', [])
      variants.append(dict(stage=name, what=kind,
                           overrides=[o for o in overrides if not o.startswith('model.dtype=')],
                           images_per_s=row['images_per_s'], ms_per_step=row['ms_per_step'],
                           peak_bytes=row['peak_bytes'],
                           vs_default=row['images_per_s'] / s[kind]['jaxgen_images_per_s']))
  if variants:
    s['variants'] = variants
  j_ddim, p_ddim = get('jaxgen_ddim'), get('peer_ddim')
  if j_ddim:
    fast = _best(j_ddim)
    s['ddim'] = dict(batch=fast['batch'], steps=fast['steps'], jaxgen_dtype=fast['dtype'],
                     jaxgen_seconds={r['dtype']: r['seconds_per_batch'] for r in j_ddim},
                     peer_seconds={r['mode']: r['seconds'] for r in p_ddim})
    eager = [r for r in p_ddim if r['mode'] == 'eager-fp32']
    if eager:
      s['ddim']['ratio_vs_eager_fp32'] = eager[0]['seconds'] / fast['seconds_per_batch']
    if p_ddim:
      best = min(p_ddim, key=lambda r: r['seconds'])
      s['ddim'].update(peer_best_mode=best['mode'],
                       ratio_vs_best=best['seconds'] / fast['seconds_per_batch'])
  return s


def _median_field(values: list[Any]) -> Any:
  """One field of a result row over the rounds: itself if every round agrees, else the median."""
  if all(v == values[0] for v in values):
    return values[0]
  if any(v is None or isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
    return values[0]  # labels and missing figures are not averaged
  return statistics.median(values)


def merge_rounds(out: str, rounds: list[str], names: list[str]) -> None:
  """Writes each stage's JSON under `out` with every figure the median over the `rounds` folders.

  Rows are matched by position (every round runs the same command). A stage that
  failed in some rounds is merged over the others; one that ran in none is not written.
  """
  for name in names:
    records = [r for r in (_load(d, name) for d in rounds) if r is not None]
    if not records:
      continue
    rows = []
    for i, row in enumerate(records[0].get('results', [])):
      same = [r['results'][i] for r in records if len(r.get('results', [])) > i]
      rows.append({k: _median_field([s.get(k) for s in same]) for k in row})
    with open(os.path.join(out, f'{name}.json'), 'w') as f:
      json.dump(dict(records[0], results=rows, rounds=len(records)), f, indent=2)


def round_ratios(s: dict[str, Any]) -> dict[str, float]:
  """The headline jaxgen / peer ratios of one summary: sampling and training against the peer's
  best mode, DDIM latency against eager fp32."""
  got = {'sampling': s.get('sampling', {}).get('ratio_vs_best'),
         'training': s.get('training', {}).get('ratio_vs_best'),
         'ddim': s.get('ddim', {}).get('ratio_vs_eager_fp32')}
  return {k: v for k, v in got.items() if v is not None}


def _gib(n: int | None) -> str:
  return '-' if n is None else f'{n / 2 ** 30:.1f} GiB'


def _num(x: float) -> str:
  """Three significant digits, without scientific notation for the sizes seen here."""
  return f'{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}' if x else '0'


def _throughput_rows(r: dict[str, Any], label: str, what: str, target: float) -> list[str]:
  """Table rows of one throughput workload: one per peer mode, then peak memory."""
  ours = r['jaxgen_images_per_s']
  rows = [f'| {label}, images/s | {_num(ours)} | {_num(ips)} ({mode}) | {ours / ips:.2f}x | '
          f'{target if mode == "compile-bf16" else ""} |' for mode, ips in sorted(r['peer'].items())]
  rows = rows or [f'| {label}, images/s | {_num(ours)} | - | - | |']
  for mode, b in sorted(r['peer_peak_bytes'].items()) if r['jaxgen_peak_bytes'] else ():
    rows.append(f'| {what} peak memory, batch {r["batch"]} | {_gib(r["jaxgen_peak_bytes"])} | '
                f'{_gib(b)} ({mode}) | | no higher |')
  return rows


def markdown(s: dict[str, Any]) -> str:
  """The summary as a Markdown table (plus the compute limit and what was not measured)."""
  lines = ['| workload | jaxgen | peer (mode) | jaxgen / peer | target |', '| --- | --- | --- | --- | --- |']
  if 'sampling' in s:
    r = s['sampling']
    lines += _throughput_rows(r, f'DDPM {r["steps"]} steps, batch {r["batch"]}', 'sampling',
                              TARGETS['sampling'])
  if 'training' in s:
    r = s['training']
    lines += _throughput_rows(r, f'training, batch {r["batch"]}', 'training', TARGETS['training'])
  if 'ddim' in s:
    r = s['ddim']
    j = r['jaxgen_seconds'][r['jaxgen_dtype']]
    for mode, sec in sorted(r['peer_seconds'].items()):
      lines.append(f'| DDIM {r["steps"]} steps, batch {r["batch"]}, seconds | {_num(j)} ({r["jaxgen_dtype"]}) | '
                   f'{_num(sec)} ({mode}) | {sec / j:.2f}x | '
                   f'{TARGETS["ddim_vs_eager_fp32"] if mode == "eager-fp32" else ""} |')
    if not r['peer_seconds']:
      lines.append(f'| DDIM {r["steps"]} steps, batch {r["batch"]}, seconds | {_num(j)} | - | - | |')
  if 'sampling' in s and 'jaxgen_fraction_of_limit' in s['sampling']:
    r = s['sampling']
    lines.append(f'\nSampling compute limit (measured bf16 matmul ceiling / peer-counted FLOPs): '
                 f'{r["compute_limit_images_per_s"]:.1f} images/s; jaxgen reaches '
                 f'{100 * r["jaxgen_fraction_of_limit"]:.0f}% of it.')
  if s.get('variants'):
    lines += ['', '| ablation (jaxgen, one override) | images/s | ms/step | peak | default / this |',
              '| --- | --- | --- | --- | --- |']
    for v in s['variants']:
      lines.append(f'| {v["what"]}: {" ".join(v["overrides"]) or "-"} | {_num(v["images_per_s"])} | '
                   f'{v["ms_per_step"]:.2f} | {_gib(v["peak_bytes"])} | {1 / v["vs_default"]:.3f}x |')
  if s.get('rounds'):
    per = {k: [r[k] for r in s['rounds'] if k in r] for k in ('sampling', 'training', 'ddim')}
    lines.append(f'\nFigures are medians over {len(s["rounds"])} rounds (every stage run once per round, '
                 'in turn); jaxgen / peer in each round: '
                 + '; '.join(f'{k} ' + ', '.join(f'{x:.2f}' for x in v) for k, v in per.items() if v) + '.')
  skipped = [k for k, v in s['stages'].items() if v != 'ok']
  if skipped:
    lines.append('\nStages not measured: ' + ', '.join(f'{k} ({s["stages"][k]})' for k in skipped) + '.')
  return '\n'.join(lines)


def peer_installed() -> bool:
  """Whether the optional extra `peers` (torch and diffusers) is importable."""
  return all(importlib.util.find_spec(m) for m in ('torch', 'diffusers'))


def _run_stages(stages: list[tuple[str, str, list[str]]], out: str, overrides: list[str],
                has_peer: bool, end: float | None) -> dict[str, str]:
  """Runs each stage in its own process, writing `out`/NAME.json; returns each stage's status."""
  ran: dict[str, str] = {}
  for name, module, stage_args in stages:
    if name.startswith('peer') and not has_peer:
      ran[name] = 'torch/diffusers not installed'
      continue
    left = None if end is None else end - time.monotonic()
    if left is not None and left < 20:
      ran[name] = 'out of time'
      continue
    cmd = [sys.executable, '-m', module, *[a.format(out=out) for a in stage_args],
           '--json', os.path.join(out, f'{name}.json')]
    if name.startswith('jaxgen'):
      cmd += [a for kv in overrides for a in ('--set', kv)]
    if left is not None:
      cmd += ['--deadline', str(max(left - 60, 1))]
    print(f'== {name}: {" ".join(cmd[1:])}', flush=True)
    try:
      proc = subprocess.run(cmd, timeout=left, check=False, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                [ROOT, os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)))
      ran[name] = 'ok' if proc.returncode == 0 else f'exit {proc.returncode}'
    except subprocess.TimeoutExpired:
      ran[name] = 'stopped at the budget'
  return ran


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--preset', default='cpu', choices=sorted(PRESETS))
  parser.add_argument('--out', required=True, help='folder for the JSON files and the summary')
  parser.add_argument('--budget', type=float, default=0, help='seconds for the whole command (0: none)')
  parser.add_argument('--only', default=None, help='comma-separated stage names to run')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override for every jaxgen stage, e.g. --set model.attention=xla')
  parser.add_argument('--rounds', type=int, default=1,
                      help='run every stage this many times in turn and report medians (noisy machines)')
  args = parser.parse_args(argv)
  if args.rounds < 1:
    raise SystemExit(f'--rounds must be at least 1, got {args.rounds}.')
  os.makedirs(args.out, exist_ok=True)
  has_peer = peer_installed()
  end = time.monotonic() + args.budget if args.budget else None
  stages = [st for st in PRESETS[args.preset] if not args.only or st[0] in args.only.split(',')]
  folders = [args.out] if args.rounds == 1 else [
      os.path.join(args.out, f'round{k + 1}') for k in range(args.rounds)]
  ran_in: list[dict[str, str]] = []
  for folder in folders:
    os.makedirs(folder, exist_ok=True)
    ran_in.append(_run_stages(stages, folder, args.set, has_peer, end))
  if args.rounds == 1:
    ran = ran_in[0]
  else:  # a stage counts as run if any round ran it; its figures are the medians of those that did
    ran = {name: next((r[name] for r in ran_in if r[name] == 'ok'), ran_in[-1][name])
           for name, _, _ in stages}
    merge_rounds(args.out, folders, list(ran))
  summary = summarise(args.out, ran)
  if args.rounds > 1:
    summary['rounds'] = [round_ratios(summarise(f, r)) for f, r in zip(folders, ran_in)]
  with open(os.path.join(args.out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  text = markdown(summary)
  with open(os.path.join(args.out, 'summary.md'), 'w') as f:
    f.write(text + '\n')
  print(text, flush=True)
  return summary


if __name__ == '__main__':
  main(sys.argv[1:])
