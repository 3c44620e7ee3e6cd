"""jaxgen's network and the peer's in one process, called in turn: ratios on a machine whose speed drifts.

    python -m benchmarks.paired --what grad --batch 8 --rounds 9 --variant model.split_skip=False
    python -m benchmarks.paired --config experiments/ddpm_mnist.py --no-peer --what grad \
        --batch 32 --variant model.split_skip=False

`benchmarks.compare` runs each side in its own process, so on a shared machine
the two see it at different moments (single runs on the 2-core CI-kind VM vary
by up to 30% over minutes). Here every round calls each contender once, in
turn, so they see the same moment; the report is each contender's median time
and the median over rounds of (peer's time / its time), with the range.

Contenders: jaxgen's diffusion UNet as --config builds it; each --variant, the
same network with config overrides ('+' joins several); and the peer
(`UNet2DModel` with PEERS.md's configuration, the network of
experiments/ddpm_cifar10.py, float32; it needs the `peers` extra, and --no-peer
leaves it out). Without the peer, ratios are against jaxgen's first contender.
Both sides run on the CPU (an accelerator is measured by `benchmarks.compare`,
whose processes each hold the device alone).

--what forward: one network evaluation (a sampling step). --what grad: forward
and backward to the parameters of a mean-square loss in training mode
(dropout on), without the optimizer. The config's compute dtype (float32 in the
experiments); random weights and inputs.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks import common
from jaxgen import config as config_lib
from jaxgen import families
from jaxgen.data.specs import dataset_spec
from jaxgen.errors import JaxgenError
from jaxgen.train import checkpoint

CIFAR = 'experiments/ddpm_cifar10.py'
WHAT = ('forward', 'grad')


def network(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's model section without the options that change only speed or memory (and the
  compute dtype): equal for the same network."""
  skip = (*checkpoint.EXECUTION_KEYS['model'], 'dtype')
  return {k: v for k, v in config.model.to_dict().items() if k not in skip}


def jaxgen_call(config: ml_collections.ConfigDict, what: str, batch: int) -> Callable[[], Any]:
  """A no-argument call of the compiled network (what='forward') or its parameter gradient ('grad')."""
  shape = dataset_spec(config.data).image_shape  # (H, W, C)
  unet = families.build(config, shape).unet
  kx, kp, kd = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (batch, *shape))  # [B, H, W, C]
  t = jnp.arange(batch, dtype=jnp.int32) * 997 % 1000  # [B]
  params = jax.jit(unet.init)({'params': kp}, x, t)['params']
  if what == 'forward':
    fn = jax.jit(lambda p, x, t: unet.apply({'params': p}, x, t))
  else:
    fn = jax.jit(jax.grad(lambda p, x, t: jnp.mean(jnp.square(
        unet.apply({'params': p}, x, t, train=True, rngs={'dropout': kd})))))
  return lambda: jax.block_until_ready(fn(params, x, t))


def peer_call(what: str, batch: int) -> Callable[[], Any]:
  """The same call of the peer network on the CPU (torch's own thread count)."""
  from benchmarks.peers.diffusers_unet import Peer  # pylint: disable=g-import-not-at-top
  peer = Peer('cpu')
  torch, model = peer.torch, peer.model
  gen = torch.Generator().manual_seed(0)
  x = torch.randn(batch, 3, 32, 32, generator=gen)
  t = torch.arange(batch) * 997 % 1000
  if what == 'forward':
    model.eval()

    def call():
      with torch.no_grad():
        return model(x, t).sample
    return call
  model.train()

  def grad():
    model.zero_grad(set_to_none=True)
    model(x, t).sample.square().mean().backward()
  return grad


def run_rounds(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2
               ) -> dict[str, list[float]]:
  """Seconds of each call in each round; every round calls each contender once, in `calls`' order."""
  for call in calls.values():
    for _ in range(warmup):
      call()
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      t0 = time.perf_counter()
      call()
      times[name].append(time.perf_counter() - t0)
  return times


def summarise(times: dict[str, list[float]], reference: str) -> list[dict[str, Any]]:
  """Per contender: median ms, and the median (min, max) over rounds of reference time / its time."""
  ref = times[reference]
  rows = []
  for name, ts in times.items():
    ratios = [r / t for r, t in zip(ref, ts)]
    rows.append(dict(contender=name, median_ms=1e3 * statistics.median(ts),
                     ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                     seconds=ts))
  return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default=CIFAR, help='experiments/NAME.py[:ARG], a diffusion config')
  parser.add_argument('--what', default='forward', choices=WHAT)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--rounds', type=int, default=9)
  parser.add_argument('--variant', action='append', default=[], metavar='KEY=VALUE[+KEY=VALUE]',
                      help='also time the network with these config overrides (repeatable)')
  parser.add_argument('--no-peer', action='store_true', help='jaxgen contenders only')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  if args.rounds < 1 or args.batch < 1:
    raise SystemExit(f'--rounds and --batch must be at least 1, got {args.rounds} and {args.batch}.')
  # Every config is read and checked before anything is built or timed.
  try:
    configs = {'jaxgen': config_lib.load_config(args.config)}
    configs.update({f'jaxgen {v}': config_lib.load_config(args.config, v.split('+')) for v in args.variant})
  except JaxgenError as e:
    raise SystemExit(str(e)) from e
  if configs['jaxgen'].family != 'diffusion':
    raise SystemExit(f'{args.config} is a {configs["jaxgen"].family} experiment; benchmarks.paired '
                     'times the diffusion UNet, so give a diffusion config.')
  with_peer = not args.no_peer
  if with_peer and network(configs['jaxgen']) != network(config_lib.load_config(CIFAR)):
    raise SystemExit(f'the peer is the network of {CIFAR}; with --config {args.config} add --no-peer.')
  if with_peer and jax.default_backend() != 'cpu':
    raise SystemExit(f'the peer runs on the CPU and jaxgen here on {jax.default_backend()}: set '
                     'JAX_PLATFORMS=cpu, add --no-peer, or use benchmarks.compare on an accelerator.')
  if with_peer and not all(importlib.util.find_spec(m) for m in ('torch', 'diffusers')):
    raise SystemExit('the peer needs torch and diffusers: pip install -e ".[peers]", or add --no-peer.')

  calls = {name: jaxgen_call(config, args.what, args.batch) for name, config in configs.items()}
  if with_peer:
    calls['peer'] = peer_call(args.what, args.batch)
  reference = 'peer' if with_peer else 'jaxgen'
  rows = summarise(run_rounds(calls, args.rounds), reference)
  command = ' '.join(['python -m benchmarks.paired', *(argv if argv is not None else sys.argv[1:])])
  record = dict(common.machine(command), config=args.config, what=args.what, batch=args.batch,
                rounds=args.rounds, reference=reference, results=rows)
  if with_peer:
    import torch  # pylint: disable=g-import-not-at-top
    record.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  print(f'{args.what}, batch {args.batch}, {args.rounds} rounds; ratio = {reference} time / this time')
  for r in rows:
    print(f'{r["contender"]:44s} {r["median_ms"]:9.1f} ms   ratio {r["ratio"]:.2f} '
          f'({r["ratio_min"]:.2f}-{r["ratio_max"]:.2f})', flush=True)
  common.write_json(args.json, record)
  return record


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main(sys.argv[1:])
