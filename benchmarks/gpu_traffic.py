"""What XLA's GPU compiler makes of a sampling or training step, on a machine without a GPU.

    pip install 'jax[cuda13]'     # the CUDA plugin; no GPU or driver needed
    python -m benchmarks.gpu_traffic --what sampling --batch 1024
    python -m benchmarks.gpu_traffic --what training --batch 512 --variant model.split_skip=False

Compiles the step ahead of time for an NVIDIA H200 (SM 9.0; `TARGET` below,
the figures of the machine measured in benchmarks/results/h200_speed.md) with
JAX's deviceless compilation, then reads the optimised program: every kernel
it launches per step (fusions, cuDNN convolutions and attention, cuBLAS
matmuls, copies) with the bytes of its operands and results, and the bytes of
the program's temporary buffers (XLA's memory analysis: what its schedule keeps
live beside parameters and inputs), and the step's FLOPs (XLA's count of the
program as lowered for the GPU, so of the GPU's formulation of each layer;
cuDNN's attention is a custom call and not counted). Memory-bound kernels take
about bytes / bandwidth, so the total bytes, the kernel count and the FLOPs
predict how a change moves the step time before a GPU is at hand, and the
temporaries how it moves peak memory; the device (`benchmarks.compare --preset
h200`) decides.

What differs from a compile on the device: no autotuning, so matmuls are
pinned to cuBLAS (`--xla_gpu_enable_triton_gemm=false`; the H200 profiles
show cuBLAS kernels for them) and convolution algorithms are not chosen
(their operands and results, counted here, do not depend on the algorithm).
The bytes of a kernel count each operand once, as if nothing were cached.

--what sampling: the body of the DDPM sampler's scan (one network evaluation
and update), parameters cast outside it as the samplers do. --what training:
the trainer's whole step (loss, gradients, optimizer, EMA). The config's model
at bfloat16 compute with cuDNN attention, as `benchmarks.compare` runs it.
Each --variant adds the same step with config overrides ('+' joins several).
"""

import argparse
import collections
import os
import re
import sys
from typing import Any

# The DDPM CIFAR-10 network, measured against the peer on the H200.
CIFAR = 'experiments/ddpm_cifar10.py'
WHAT = ('sampling', 'training')

# XLA's TargetConfig for an H200: the H100 SXM figures of XLA's own GPU specs, with the
# H200's memory, bandwidth and cuDNN. Only used to compile; nothing runs.
TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 4800000000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 150754820096
  shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 28 }
runtime_version { major: 13 minor: 0 patch: 0 }
device_description_str: "NVIDIA H200"
"""

_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4,
          's32': 4, 'u32': 4, 'f64': 8, 's64': 8, 'u64': 8}
_SHAPE = re.compile(r'\b(' + '|'.join(_BYTES) + r')\[([0-9,]*)\]')
_INSTRUCTION = re.compile(r'\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*?)\)(?:, |$)')
# Instructions that launch nothing: views, tuples, constants, and control flow whose body is
# counted on its own.
_FREE = {'parameter', 'get-tuple-element', 'bitcast', 'constant', 'tuple', 'while',
         'conditional', 'call', 'after-all', 'partition-id', 'replica-id', 'opt-barrier'}


def type_bytes(hlo_type: str) -> int:
  """Bytes of an HLO type, a tuple's summed: 'bf16[2,3]{1,0}' -> 12."""
  total = 0
  for dtype, dims in _SHAPE.findall(hlo_type):
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * _BYTES[dtype]
  return total


def computation(hlo_text: str, name: str | None = None) -> str:
  """The text of computation `name` of an HLO module (None: its ENTRY computation)."""
  if name is None:
    start = hlo_text.index('\nENTRY') + 1
  else:
    match = re.search(r'^%' + re.escape(name) + r' ', hlo_text, re.MULTILINE)
    if match is None:
      raise ValueError(f'no computation {name!r} in the module.')
    start = match.start()
  end = hlo_text.find('\n}', start)
  return hlo_text[start:end if end >= 0 else len(hlo_text)]


def loop_body(hlo_text: str) -> str:
  """The body computation of the module's first while loop (a `lax.scan`)."""
  match = re.search(r'body=%([\w.\-]+)', hlo_text)
  if match is None:
    raise ValueError('the module has no while loop.')
  return computation(hlo_text, match.group(1))


def kernels(comp_text: str) -> list[dict[str, Any]]:
  """The kernels one computation launches, in order: name, kind, bytes in and out, op.

  kind: the custom call's target (a cuDNN or cuBLAS call) or the fusion's kind
  and root ('fusion:loop_add'), or the instruction ('copy'). op: the JAX
  operation it came from (the metadata's op_name), '' if none.
  """
  sizes: dict[str, int] = {}
  out = []
  for line in comp_text.splitlines()[1:]:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, hlo_type, opcode, operands = match.groups()
    sizes[name] = type_bytes(hlo_type)
    if opcode in _FREE:
      continue
    if opcode == 'custom-call':
      kind = re.search(r'custom_call_target="([^"]+)"', line).group(1)
    elif opcode == 'fusion':
      kind = 'fusion:' + re.sub(r'(_fusion)?(\.\d+)?$', '', name)
    else:
      kind = opcode
    op = re.search(r'op_name="([^"]*)"', line)
    out.append(dict(name=name, kind=kind,
                    bytes_in=sum(sizes.get(a, 0) for a in re.findall(r'%([\w.\-]+)', operands)),
                    bytes_out=sizes[name], op=op.group(1) if op else ''))
  return out


def summarise(rows: list[dict[str, Any]], bandwidth: float) -> dict[str, Any]:
  """Totals of `kernels` rows and their bytes by kind, largest first."""
  by_kind: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for r in rows:
    by_kind[r['kind']][0] += 1
    by_kind[r['kind']][1] += r['bytes_in'] + r['bytes_out']
  total = sum(b for _, b in by_kind.values())
  kinds = [dict(kind=k, kernels=n, gb=b / 1e9) for k, (n, b) in
           sorted(by_kind.items(), key=lambda kv: -kv[1][1])]
  return dict(kernels=len(rows), gb=total / 1e9, ms_at_bandwidth=1e3 * total / bandwidth,
              by_kind=kinds)


def _deviceless_device():
  """A CUDA device of the H200 target, for compiling only (needs JAX's CUDA plugin)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax._src.cudnn import fused_attention_stablehlo  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(platform='cuda', target_config=TARGET, topology='1x1x1')
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f'compiling for a GPU here needs JAX\'s CUDA plugin: pip install '
                     f'"jax[cuda13]=={jax.__version__}" ({type(e).__name__}: {e})') from e
  # JAX asks the local GPU for its compute capability before using cuDNN's attention; there
  # is none, so answer for the target (SM 9.0).
  fused_attention_stablehlo.check_compute_capability = (
      lambda c: tuple(int(v) for v in c.split('.')) <= (9, 0))
  fused_attention_stablehlo.is_cuda_compute_capability_equal = lambda c: False
  return topology.devices[0]


def step_program(config_spec: str, overrides: list[str], what: str, batch: int, device
                 ) -> tuple[str, int, float | None]:
  """(optimised HLO text of the step compiled for `device`, its temporary buffers' bytes,
  FLOPs of one step by XLA's count of the program as lowered for the GPU: the GPU's own
  formulation of every layer, cuDNN's attention not counted, a loop's body once)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxgen import config as config_lib  # pylint: disable=g-import-not-at-top
  sharding = jax.sharding.SingleDeviceSharding(device)
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding)  # noqa: E731
  overrides = ['model.dtype=bfloat16', 'model.attention=cudnn', *overrides]
  if what == 'sampling':
    from benchmarks import sampling  # pylint: disable=g-import-not-at-top
    _, model, params = sampling.load_model(config_spec, None, overrides)
    fn, _, _ = sampling.diffusion_program(model, 'ddpm', batch, 0, 2)  # a scan of 2 steps
    args = (jax.tree.map(spec, params), spec(jax.random.PRNGKey(0)))
    compiled = jax.jit(fn).lower(*args).compile()
    return (compiled.as_text(), compiled.memory_analysis().temp_size_in_bytes,
            _flops(jax.jit(fn), args))
  from jaxgen.train import trainer  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(config_spec, [*overrides, f'train.batch_size={batch}'])
  s = trainer.setup(config)
  state = jax.tree.map(spec, jax.eval_shape(s.init_state))
  data = {'image': jax.ShapeDtypeStruct((batch, *s.model.image_shape), jnp.float32,
                                        sharding=sharding),
          'label': jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding)}
  compiled = jax.jit(s.step_fn, donate_argnums=0).lower(state, data).compile()
  return (compiled.as_text(), compiled.memory_analysis().temp_size_in_bytes,
          _flops(jax.jit(s.step_fn), (state, data)))


def _flops(jitted: Any, args: Any) -> float | None:
  """XLA's FLOP count of `jitted(*args)` lowered for a GPU (not optimised), None if it gives
  none. Lowered by platform name: the deviceless backend itself has no cost analysis."""
  import jax  # pylint: disable=g-import-not-at-top
  args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  cost = jitted.trace(*args).lower(lowering_platforms=('cuda',)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', default=CIFAR,
                      help='experiments/NAME.py[:ARG], a diffusion config')
  parser.add_argument('--what', default='sampling', choices=WHAT)
  parser.add_argument('--batch', type=int, default=1024)
  parser.add_argument('--variant', action='append', default=[], metavar='KEY=VALUE[+KEY=VALUE]',
                      help='also compile the step with these config overrides (repeatable)')
  parser.add_argument('--top', type=int, default=12, help='kinds of kernel listed per program')
  parser.add_argument('--bandwidth', type=float, default=4.0e12,
                      help='bytes/s for the time column (an H200 streams about 4e12)')
  parser.add_argument('--save-hlo', default=None, metavar='DIR', help='write each program there')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  if args.batch < 1 or args.top < 0 or args.bandwidth <= 0:
    raise SystemExit(f'--batch must be at least 1, --top at least 0 and --bandwidth positive; got '
                     f'{args.batch}, {args.top}, {args.bandwidth}.')
  from jaxgen import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgen.errors import JaxgenError  # pylint: disable=g-import-not-at-top
  variants = {'jaxgen': []} | {f'jaxgen {v}': v.split('+') for v in args.variant}
  try:  # every config checked before anything is compiled
    base = config_lib.load_config(args.config)
    for overrides in variants.values():
      config_lib.load_config(args.config, overrides)
  except JaxgenError as e:
    raise SystemExit(str(e)) from e
  if base.family != 'diffusion':
    raise SystemExit(f'{args.config} is a {base.family} experiment; benchmarks.gpu_traffic '
                     'compiles the diffusion UNet\'s steps, so give a diffusion config.')
  # Before JAX starts its backends: XLA reads its flags once.
  os.environ['XLA_FLAGS'] = ' '.join(
      [os.environ.get('XLA_FLAGS', ''), '--xla_gpu_enable_triton_gemm=false']).strip()
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')  # the host; the program is compiled for the target
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  device = _deviceless_device()
  results = []
  for label, overrides in variants.items():
    text, temp_bytes, flops = step_program(args.config, overrides, args.what, args.batch, device)
    if args.save_hlo:
      os.makedirs(args.save_hlo, exist_ok=True)
      with open(os.path.join(args.save_hlo, re.sub(r'\W+', '_', label) + '.hlo'), 'w') as f:
        f.write(text)
    body = loop_body(text) if args.what == 'sampling' else computation(text)
    row = dict(contender=label, **summarise(kernels(body), args.bandwidth),
               temp_gib=temp_bytes / 2 ** 30, tflop=None if flops is None else flops / 1e12)
    results.append(row)
    print(f'{label}: {args.what}, batch {args.batch}: {row["kernels"]} kernels per step, '
          f'{row["gb"]:.2f} GB moved ({row["ms_at_bandwidth"]:.2f} ms at '
          f'{args.bandwidth / 1e12:.1f} TB/s), temporaries {row["temp_gib"]:.2f} GiB, '
          + (f'{row["tflop"]:.3f} TFLOP' if row['tflop'] is not None else 'FLOPs not counted'),
          flush=True)
    for k in row['by_kind'][:args.top]:
      print(f'  {k["gb"]:8.2f} GB {k["kernels"]:5d}x  {k["kind"]}')
  command = ' '.join(['python -m benchmarks.gpu_traffic',
                      *(argv if argv is not None else sys.argv[1:])])
  record = dict(common.machine(command), target='NVIDIA H200 (deviceless)', config=args.config,
                what=args.what, batch=args.batch, results=results)
  common.write_json(args.json, record)
  return record


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  main(sys.argv[1:])
