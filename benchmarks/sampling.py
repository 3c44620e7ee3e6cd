"""Sampling throughput of the diffusion samplers, and what one `lax.scan` buys.

For each batch size and sampler (DDPM over all T steps, DDIM over K steps) it
times the compiled `lax.scan` sampler and, side by side in the same process,
the very same step function (`ddpm_step` / `ddim_step`) run as a Python loop
of jitted calls. Parameters are random (speed does not depend on them).

    python -m benchmarks.sampling --config experiments/ddpm_mnist.py --batch 16,64 \
        --json benchmarks/results/sampling_cpu.json

Prints a table; with --json also writes the numbers with the machine and the
command. Timings exclude compilation (reported separately) and are the
median of --repeats runs, each ended by `block_until_ready`.
"""

import argparse
import datetime
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from jaxgen import config as config_lib
from jaxgen.diffusion import samplers
from jaxgen.train import trainer


def timed(fn, repeats: int) -> tuple[float, float]:
  """(first-call seconds incl. compile, median steady-state seconds) of fn()."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def bench_one(model, params, batch: int, sampler: str, steps: int, repeats: int) -> dict:
  schedule = model.schedule
  shape = (batch, *model.image_shape)
  rng = jax.random.PRNGKey(0)
  eps_fn = lambda p: model.eps_fn(p)  # noqa: E731

  if sampler == 'ddpm':
    scan_fn = jax.jit(lambda p, r: samplers.ddpm_sample(eps_fn(p), schedule, r, shape))
    timesteps = [jnp.int32(t) for t in range(schedule.num_timesteps - 1, -1, -1)]
    prevs = [None] * len(timesteps)
    step_fn = jax.jit(lambda p, x, t, t_prev, r: samplers.ddpm_step(eps_fn(p), schedule, x, t, r))
  else:
    scan_fn = jax.jit(lambda p, r: samplers.ddim_sample(eps_fn(p), schedule, r, shape, num_steps=steps))
    ts, tps = samplers.ddim_timesteps(schedule.num_timesteps, steps)
    timesteps, prevs = [jnp.int32(t) for t in ts], [jnp.int32(t) for t in tps]
    step_fn = jax.jit(lambda p, x, t, t_prev, r: samplers.ddim_step(eps_fn(p), schedule, x, t, t_prev, r))
  n_steps = len(timesteps)

  def loop():
    rng_init, rng_loop = jax.random.split(rng)
    x = jax.random.normal(rng_init, shape)
    for t, t_prev in zip(timesteps, prevs):
      x = step_fn(params, x, t, t_prev, rng_loop)
    return x

  scan_first, scan_s = timed(lambda: scan_fn(params, rng), repeats)
  loop_first, loop_s = timed(loop, repeats)
  return dict(sampler=sampler, batch=batch, steps=n_steps,
              scan_images_per_s=batch / scan_s, scan_ms_per_step=1e3 * scan_s / n_steps,
              scan_compile_s=scan_first - scan_s,
              loop_images_per_s=batch / loop_s, loop_ms_per_step=1e3 * loop_s / n_steps,
              scan_speedup=loop_s / scan_s)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='experiments/ddpm_mnist.py')
  parser.add_argument('--batch', default='16,64', help='comma-separated batch sizes')
  parser.add_argument('--ddim-steps', type=int, default=50)
  parser.add_argument('--samplers', default='ddim,ddpm')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default=None, help='write results here')
  args = parser.parse_args(argv)

  config = config_lib.load_config(args.config)
  s = trainer.setup(config)
  params = s.init_state().params
  rows = []
  print(f'{"sampler":8} {"batch":>5} {"steps":>5} {"scan img/s":>11} {"scan ms/step":>12} '
        f'{"loop img/s":>11} {"loop ms/step":>12} {"scan/loop":>9} {"compile s":>9}', flush=True)
  for sampler in args.samplers.split(','):
    for batch in (int(b) for b in args.batch.split(',')):
      r = bench_one(s.model, params, batch, sampler, args.ddim_steps, args.repeats)
      rows.append(r)
      print(f'{r["sampler"]:8} {r["batch"]:5d} {r["steps"]:5d} {r["scan_images_per_s"]:11.2f} '
            f'{r["scan_ms_per_step"]:12.2f} {r["loop_images_per_s"]:11.2f} {r["loop_ms_per_step"]:12.2f} '
            f'{r["scan_speedup"]:9.2f}x {r["scan_compile_s"]:9.1f}', flush=True)
  if args.json:
    record = dict(date=datetime.date.today().isoformat(), machine=platform.machine(),
                  processor=platform.processor(), devices=[str(d) for d in jax.devices()],
                  jax=jax.__version__, command='python -m benchmarks.sampling ' + ' '.join(sys.argv[1:]),
                  config=args.config, results=rows)
    with open(args.json, 'w') as f:
      json.dump(record, f, indent=2)


if __name__ == '__main__':
  main()
