"""Training throughput of any experiment: images/s, ms per step, memory, FLOPs.

    python -m benchmarks.training --config experiments/ddpm_cifar10.py --dtype bfloat16 \
        --batch 512 --steps 30 --json out.json

Times the trainer's own compiled step (`trainer.compile_train_step`: the
family's loss, gradients, optimizer, EMA, state donated, batch split over the
mesh of every device) on a random batch held on the devices, so input reading
is not part of the figure (the pipeline is measured by itself in the trainer's
logs). Compile time comes from ahead-of-time lowering; the steady state is the
median over --repeats runs of --steps consecutive steps, each run ended by
blocking on the state. FLOPs per image come from XLA's cost analysis of the
whole step (forward, backward and update; `jaxgen.nn.flops.hlo_flops`).
"""

import argparse
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from benchmarks import common
from jaxgen import config as config_lib
from jaxgen.nn.flops import hlo_flops
from jaxgen.train import mesh as mesh_lib
from jaxgen.train import trainer


def random_batch(image_shape: tuple[int, ...], batch: int, mesh) -> dict[str, jax.Array]:
  """Images uniform in [-1, 1] and labels 0..9, split over the mesh."""
  rng = np.random.default_rng(0)
  local = {'image': rng.uniform(-1, 1, (batch, *image_shape)).astype(np.float32),
           'label': rng.integers(0, 10, (batch,)).astype(np.int32)}
  return mesh_lib.global_batch(local, mesh)


def step_flops(config: ml_collections.ConfigDict, step_fn: Callable, state: Any, data: Any
               ) -> float | None:
  """FLOPs of one call of the pure training step `step_fn(state, data)`, by XLA's cost analysis.

  The count is of the program lowered for the CPU (`hlo_flops`), where GPU-only
  kernels do not lower: a model whose `attention` option is not 'xla' is counted
  with the step of the same config at `model.attention=xla` (the same products
  as cuDNN's fused attention; the same state).
  """
  if config.model.get('attention', 'xla') != 'xla':
    portable = config.copy_and_resolve_references()
    portable.model.attention = 'xla'
    step_fn = trainer.setup(portable).step_fn
  return hlo_flops(step_fn, state, data)


def bench(config_spec: str, overrides: list[str], batch: int, args) -> dict[str, Any]:
  config = config_lib.load_config(config_spec, [*overrides, f'train.batch_size={batch}'])
  s = trainer.setup(config)
  state = s.init_state()
  data = random_batch(s.model.image_shape, batch, s.mesh)
  t0 = time.perf_counter()
  pure_step = []  # the step before jit, for its FLOP count
  compiled = trainer.compile_train_step(s, wrap=lambda f: pure_step.append(f) or f).lower(
      state, data).compile()
  compile_s = time.perf_counter() - t0

  def run(state, n):
    metrics = None  # n = 0: a warm-up of no steps
    for _ in range(n):
      state, metrics = compiled(state, data)
    jax.block_until_ready(state)
    return state, metrics

  state, _ = run(state, args.warmup)
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    state, metrics = run(state, args.steps)
    times.append(time.perf_counter() - t0)
  seconds = float(np.median(times)) / args.steps
  if args.profile:
    holder = [state]

    def one_step():
      holder[0], _ = compiled(holder[0], data)
      return holder[0]
    common.print_profile(common.profile_once(one_step, f'{args.profile}_b{batch}.json.gz'))
  flops = common.flops_or_none(lambda: step_flops(config, pure_step[0], state, data))
  row = dict(family=config.family, batch=batch, dtype=config.model.get('dtype', 'float32'),
             devices=s.mesh.devices.size, fsdp=s.train.fsdp, images_per_s=batch / seconds,
             ms_per_step=1e3 * seconds, compile_s=compile_s,
             program_bytes=common.program_bytes(compiled), peak_bytes=common.peak_device_bytes(),
             step_gflops_per_image=flops / batch / 1e9 if flops else None,
             loss=float(metrics['loss']))
  if flops:
    row['tflops_per_s'] = flops / seconds / 1e12
    if args.ceiling_tflops:
      row['fraction_of_ceiling'] = row['tflops_per_s'] / args.ceiling_tflops
  return row


def main(argv: list[str]) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default='experiments/ddpm_mnist.py', help='experiments/NAME.py[:ARG]')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, e.g. --set train.fsdp=2 (repeatable)')
  parser.add_argument('--dtype', default=None, help='compute dtype (model.dtype): float32 or bfloat16')
  parser.add_argument('--batch', default='32', help='comma-separated global batch sizes')
  parser.add_argument('--steps', type=int, default=20, help='steps per timed run')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--ceiling-tflops', type=float, default=None)
  parser.add_argument('--measure-ceiling', action='store_true')
  parser.add_argument('--profile', default=None,
                      help='trace one timed step of each row to PREFIX_b<batch>.json.gz')
  parser.add_argument('--deadline', type=float, default=0, help='skip rows starting after this many s')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
    parser.error('--steps and --repeats must be at least 1 and --warmup at least 0.')

  deadline = common.Deadline(args.deadline)
  if args.measure_ceiling:
    args.ceiling_tflops = common.matmul_ceiling() / 1e12
    print(f'bf16 8192^3 matmul ceiling: {args.ceiling_tflops:.0f} TFLOP/s', flush=True)
  overrides = list(args.set) + ([f'model.dtype={args.dtype}'] if args.dtype else [])
  command = ' '.join(['python -m benchmarks.training', *argv])
  record = dict(common.machine(command), config=args.config, overrides=overrides,
                ceiling_tflops=args.ceiling_tflops, results=[], skipped=[])
  print(f'{"batch":>6} {"dtype":9} {"images/s":>10} {"ms/step":>9} {"compile":>8} {"program":>10} '
        f'{"peak":>10} {"GFLOP/img":>9} {"TFLOP/s":>7} {"ceil":>5}', flush=True)
  for batch in (int(b) for b in args.batch.split(',')):
    if deadline.passed():
      record['skipped'].append(dict(batch=batch))
      print(f'{batch:6d} skipped: past the deadline', flush=True)
      continue
    r = bench(args.config, overrides, batch, args)
    record['results'].append(r)
    frac = f'{100 * r["fraction_of_ceiling"]:.0f}%' if 'fraction_of_ceiling' in r else '-'
    print(f'{r["batch"]:6d} {r["dtype"]:9} {r["images_per_s"]:10.1f} {r["ms_per_step"]:9.2f} '
          f'{r["compile_s"]:8.1f} {common.fmt_bytes(r["program_bytes"]):>10} '
          f'{common.fmt_bytes(r["peak_bytes"]):>10} {r["step_gflops_per_image"] or 0:9.2f} '
          f'{r.get("tflops_per_s", 0):7.1f} {frac:>5}', flush=True)
    common.write_json(args.json, record)
  common.write_json(args.json, record)
  return record


if __name__ == '__main__':
  main(sys.argv[1:])
