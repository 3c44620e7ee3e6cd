"""Sampling throughput of any experiment's model: images/s, ms per step, memory, FLOPs.

    python -m benchmarks.sampling --config experiments/ddpm_cifar10.py --dtype bfloat16 \
        --samplers ddpm --batch 1024 --time-steps 40 --json out.json
    python -m benchmarks.sampling --config experiments/vae_mnist.py --batch 1024

Parameters are random (speed does not depend on them). Diffusion models are
timed per sampler ('ddpm' over all T steps, 'ddim' over --ddim-steps);
autoregressive models per sampler ('cached', 'naive': one step per position),
checking that both draw the same images for the same key; every
other family through its own `sample` (sampler 'model'). Each sampler is the
library's compiled `lax.scan` program. With --time-steps N, a DDPM chain is
timed over its first N steps (the same step function in the same kind of scan)
and scaled to all T, as the peer is measured; 0 times the whole chain.
With --loop, the very same step also runs as a Python loop of jitted calls,
side by side, to show what one compiled scan buys.

For each row: images/s, ms per network evaluation, compile seconds (ahead of
time, never inside a timing), the program's device memory by XLA's memory
analysis, the process's peak device memory, model FLOPs per image (XLA's cost
analysis of one network evaluation times the evaluations) and, with
--ceiling-tflops or --measure-ceiling, the fraction of that matmul ceiling.
"""

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from jaxgen import config as config_lib
from jaxgen import families
from jaxgen.data.specs import dataset_spec
from jaxgen.diffusion import samplers


def load_model(config_spec: str, dtype: str | None, overrides: list[str]) -> tuple[Any, Any, Any]:
  """(config, model, random params on device 0) of an experiment, with `dtype` as compute dtype."""
  overrides = list(overrides) + ([f'model.dtype={dtype}'] if dtype else [])
  config = config_lib.load_config(config_spec, overrides)
  model = families.build(config, dataset_spec(config.data).image_shape)
  batch = {'image': jnp.zeros((1, *model.image_shape)), 'label': jnp.zeros((1,), jnp.int32)}
  params = jax.jit(model.init)(jax.random.PRNGKey(config.seed), batch)
  return config, model, params


def diffusion_program(model, sampler: str, batch: int, ddim_steps: int, time_steps: int):
  """(fn(params, rng) -> images, timed network evaluations, evaluations of the whole chain)."""
  schedule, opts = model.schedule, model.sample_options()
  shape = (batch, *model.image_shape)
  if sampler == 'ddpm':
    total = schedule.num_timesteps
    n = time_steps or total
    if n == total:
      return (lambda p, r: model.sample(p, r, batch, sampler='ddpm')), total, total

    def first_steps(p, r):  # the body of samplers.ddpm_sample, over its first n timesteps
      x, rng_loop = samplers._init(r, shape)  # pylint: disable=protected-access
      eps_fn = model.eps_fn(p)  # built outside the loop, as model.sample builds it
      body = lambda x_t, t: (samplers.ddpm_step(eps_fn, schedule, x_t, t, rng_loop,  # noqa: E731
                                                variance=opts['variance'], clip_x0=opts['clip_x0']), None)
      return jax.lax.scan(body, x, jnp.arange(total - 1, total - 1 - n, -1, dtype=jnp.int32))[0]
    return first_steps, n, total
  return (lambda p, r: model.sample(p, r, batch, sampler='ddim', steps=ddim_steps)), ddim_steps, ddim_steps


def python_loop(model, params, sampler: str, batch: int, ddim_steps: int, n_steps: int):
  """The same step functions as the scan, as a Python loop of jitted calls; returns fn()."""
  schedule, opts = model.schedule, model.sample_options()
  eps_fn = model.eps_fn(params)
  if sampler == 'ddpm':
    ts = np.arange(schedule.num_timesteps - 1, -1, -1, dtype=np.int32)[:n_steps]
    prevs = [None] * len(ts)
    step = jax.jit(lambda x, t, tp, r: samplers.ddpm_step(eps_fn, schedule, x, t, r,
                                                          variance=opts['variance'],
                                                          clip_x0=opts['clip_x0']))
  else:
    ts, prevs = samplers.ddim_timesteps(schedule.num_timesteps, ddim_steps)
    step = jax.jit(lambda x, t, tp, r: samplers.ddim_step(eps_fn, schedule, x, t, tp, r,
                                                          eta=opts['eta'], clip_x0=opts['clip_x0']))
  ts = [jnp.int32(t) for t in ts]
  prevs = [None if t is None else jnp.int32(t) for t in prevs]

  def loop():
    x, rng_loop = samplers._init(jax.random.PRNGKey(0), (batch, *model.image_shape))  # pylint: disable=protected-access
    for t, tp in zip(ts, prevs):
      x = step(x, t, tp, rng_loop)
    return x
  return loop


def bench(model, params, family: str, sampler: str, batch: int, dtype: str | None,
          args) -> dict[str, Any]:
  rng = jax.random.PRNGKey(1)
  if family == 'diffusion':
    fn, timed_evals, chain_evals = diffusion_program(model, sampler, batch, args.ddim_steps,
                                                     args.time_steps)
  else:
    opts = {} if sampler == 'model' else {'sampler': sampler}
    fn = lambda p, r: model.sample(p, r, batch, **opts)  # noqa: E731
    timed_evals = chain_evals = model.evaluations_per_sample(**opts)
  compiled, compile_s = common.compile_aot(fn, params, rng)
  seconds = common.median_seconds(lambda: compiled(params, rng), args.repeats, args.warmup)
  chain_s = seconds * chain_evals / timed_evals
  # A cached autoregressive step computes one position, not a whole network evaluation.
  flops = None if sampler == 'cached' else common.flops_or_none(model.forward_flops)
  row = dict(family=family, sampler=sampler, batch=batch, steps=chain_evals,
             timed_steps=timed_evals, dtype=dtype or 'config',
             images_per_s=batch / chain_s, ms_per_step=1e3 * seconds / timed_evals,
             seconds_per_batch=chain_s, compile_s=compile_s,
             program_bytes=common.program_bytes(compiled), peak_bytes=common.peak_device_bytes(),
             forward_gflops_per_image=flops / 1e9 if flops else None)
  if flops:
    row['tflops_per_s'] = flops * chain_evals * batch / chain_s / 1e12
    if args.ceiling_tflops:
      row['fraction_of_ceiling'] = row['tflops_per_s'] / args.ceiling_tflops
  if args.profile:
    path = f'{args.profile}_{sampler}_b{batch}_{row["dtype"]}.json.gz'
    common.print_profile(common.profile_once(lambda: compiled(params, rng), path))
  if args.loop and family == 'diffusion':
    loop_s = common.median_seconds(python_loop(model, params, sampler, batch, args.ddim_steps,
                                               timed_evals), args.repeats)
    row.update(loop_images_per_s=batch * timed_evals / chain_evals / loop_s,
               loop_ms_per_step=1e3 * loop_s / timed_evals, scan_speedup=loop_s / seconds)
  row['_images'] = np.asarray(compiled(params, rng))  # for the same-images check; not written
  return row


def print_row(r: dict[str, Any]) -> None:
  frac = f'{100 * r["fraction_of_ceiling"]:.0f}%' if 'fraction_of_ceiling' in r else '-'
  loop = f' loop {r["loop_ms_per_step"]:.2f} ms/step (scan {r["scan_speedup"]:.2f}x)' if 'loop_ms_per_step' in r else ''
  print(f'{r["sampler"]:6} {r["batch"]:6d} {r["steps"]:5d} {r["dtype"]:9} {r["images_per_s"]:11.2f} '
        f'{r["ms_per_step"]:9.3f} {r["compile_s"]:8.1f} {common.fmt_bytes(r["program_bytes"]):>10} '
        f'{common.fmt_bytes(r["peak_bytes"]):>10} {r.get("tflops_per_s", 0):7.1f} {frac:>5}{loop}',
        flush=True)


def main(argv: list[str]) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='experiments/ddpm_mnist.py', help='experiments/NAME.py[:ARG]')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. --set model.ch=64 (repeatable)')
  parser.add_argument('--dtype', default=None,
                      help='comma-separated compute dtypes (model.dtype): float32, bfloat16')
  parser.add_argument('--batch', default='16,64', help='comma-separated batch sizes')
  parser.add_argument('--samplers', default=None,
                      help="comma-separated: ddpm, ddim (diffusion); default ddim,ddpm or 'model'")
  parser.add_argument('--ddim-steps', type=int, default=50)
  parser.add_argument('--time-steps', type=int, default=0,
                      help='DDPM: time the first N steps and scale to all T (0: the whole chain)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1, help='untimed runs after compiling')
  parser.add_argument('--loop', action='store_true', help='also time a Python loop of jitted steps')
  parser.add_argument('--ceiling-tflops', type=float, default=None,
                      help='matmul ceiling for the fraction column (TFLOP/s)')
  parser.add_argument('--measure-ceiling', action='store_true',
                      help='measure the bf16 8192^3 matmul ceiling first')
  parser.add_argument('--profile', default=None,
                      help='trace one timed call of each row to PREFIX_<sampler>_b<batch>_<dtype>.json.gz')
  parser.add_argument('--deadline', type=float, default=0, help='skip rows starting after this many s')
  parser.add_argument('--json', default=None, help='write results here')
  args = parser.parse_args(argv)

  deadline = common.Deadline(args.deadline)
  if args.measure_ceiling:
    args.ceiling_tflops = common.matmul_ceiling() / 1e12
    print(f'bf16 8192^3 matmul ceiling: {args.ceiling_tflops:.0f} TFLOP/s', flush=True)
  command = ' '.join(['python -m benchmarks.sampling', *argv])
  record = dict(common.machine(command), config=args.config, overrides=args.set,
                ceiling_tflops=args.ceiling_tflops, results=[], skipped=[])
  print(f'{"sampler":6} {"batch":>6} {"steps":>5} {"dtype":9} {"images/s":>11} {"ms/step":>9} '
        f'{"compile":>8} {"program":>10} {"peak":>10} {"TFLOP/s":>7} {"ceil":>5}', flush=True)
  for dtype in args.dtype.split(',') if args.dtype else [None]:
    config, model, params = load_model(args.config, dtype, args.set)
    family = config.family
    names = (args.samplers.split(',') if args.samplers
             else ['ddim', 'ddpm'] if family == 'diffusion'
             else ['cached', 'naive'] if family == 'autoregressive' else ['model'])
    first_images = {}  # batch -> (sampler, images) of the first sampler timed at that batch
    for sampler in names:
      for batch in (int(b) for b in args.batch.split(',')):
        if deadline.passed():
          record['skipped'].append(dict(sampler=sampler, batch=batch, dtype=dtype))
          print(f'{sampler:6} {batch:6d} skipped: past the deadline', flush=True)
          continue
        row = bench(model, params, family, sampler, batch, dtype, args)
        images = row.pop('_images')
        if family == 'autoregressive':
          other, theirs = first_images.setdefault(batch, (sampler, images))
          if other != sampler:
            row.update(same_images_as=other, same_images=bool(np.array_equal(images, theirs)))
            print(f'{sampler} and {other} at batch {batch} draw the same images: '
                  f'{row["same_images"]}', flush=True)
        record['results'].append(row)
        print_row(row)
        common.write_json(args.json, record)
  common.write_json(args.json, record)
  return record


if __name__ == '__main__':
  main(sys.argv[1:])
