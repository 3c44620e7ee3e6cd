"""What every benchmark shares: timing, the machine's description, the matmul ceiling, JSON.

Timings are wall-clock around work ended by `jax.block_until_ready` (or
`torch.cuda.synchronize` for the peer), after a warm-up that compiled it;
compile time is measured separately through ahead-of-time lowering
(`jit(f).lower(...).compile()`), so it never leaks into a steady-state figure.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
  """Median wall time of `fn()` (its result blocked on) over `repeats` runs after `warmup` runs."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def compile_aot(fn: Callable, *args: Any, donate_argnums: tuple[int, ...] = ()) -> tuple[Any, float]:
  """(compiled executable of jit(fn) for `args`, seconds spent lowering and compiling)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def flops_or_none(count: Callable[[], float | None]) -> float | None:
  """`count()`, or None (said on stdout) if the program has a kernel with no CPU lowering.

  FLOPs are counted on a CPU lowering (`jaxgen.nn.flops.hlo_flops`); a timing
  already taken must not be lost to a kernel that only exists on the device.
  """
  try:
    return count()
  except NotImplementedError as e:
    print(f'FLOPs not counted: {e}', flush=True)
    return None


def program_bytes(compiled: Any) -> int | None:
  """Device memory one call of a compiled program needs: arguments + outputs + temporaries - aliased.

  From XLA's memory analysis (static, so unaffected by what ran before); None
  where the backend gives none.
  """
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 (backends without it raise various errors)
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def peak_device_bytes() -> int | None:
  """The allocator's peak bytes in use on device 0 since the process started (None on CPU)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return int(peak) if peak is not None else None


def matmul_ceiling(n: int = 8192, dtype: str = 'bfloat16', repeats: int = 10) -> float:
  """Measured FLOP/s of an n x n x n matrix product on random data on device 0."""
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.dtype(dtype))
  b = jax.random.normal(kb, (n, n), jnp.dtype(dtype))
  # Several products per call, so the launch is a negligible part of each timing.
  inner = 10

  def chain(a, b):
    def body(c, _):
      return (c + a @ b).astype(a.dtype), None
    return jax.lax.scan(body, jnp.zeros_like(a), None, length=inner)[0]

  compiled, _ = compile_aot(chain, a, b)
  seconds = median_seconds(lambda: compiled(a, b), repeats)
  return 2 * n ** 3 * inner / seconds


def machine(command: str) -> dict[str, Any]:
  """Date, host, devices, software versions and `command` (what produced the numbers), for the record."""
  info = dict(date=datetime.date.today().isoformat(), host_machine=platform.machine(),
              python=platform.python_version(), jax=jax.__version__,
              backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()],
              command=command, xla_flags=os.environ.get('XLA_FLAGS', ''))
  try:
    import flax  # pylint: disable=g-import-not-at-top
    info['flax'] = flax.__version__
  except ImportError:
    pass
  if jax.default_backend() == 'gpu':
    try:
      out = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                            '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
      info['gpu'] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
      pass
  return info


def write_json(path: str | None, record: dict[str, Any]) -> None:
  """Writes `record` to `path` (atomically: a failed run leaves an earlier file intact)."""
  if not path:
    return
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, path)


class Deadline:
  """Skips measurements that would start after `seconds` from now (0: no limit).

  A benchmark on a lent accelerator must end inside its lease: what it could
  not measure in time is reported as skipped, never half-measured.
  """

  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds if seconds else None

  def passed(self) -> bool:
    return self.end is not None and time.monotonic() > self.end


def fmt_bytes(n: int | None) -> str:
  return '-' if n is None else f'{n / 2 ** 30:.2f} GiB'


def profile_once(fn: Callable[[], Any], out_file: str) -> str | None:
  """Runs `fn()` once under `jax.profiler.trace`; copies the Perfetto trace to `out_file`.

  Returns `out_file`, or None if the profiler wrote no Perfetto trace.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    try:
      with jax.profiler.trace(tmp, create_perfetto_trace=True):
        jax.block_until_ready(fn())
    except Exception as e:  # noqa: BLE001 (a profiler that cannot start must not lose the timing)
      print(f'profile: the profiler failed: {e}', flush=True)
      return None
    found = glob.glob(os.path.join(tmp, '**', 'perfetto_trace.json.gz'), recursive=True)
    if not found:
      return None
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    shutil.copy(found[0], out_file)
  return out_file


def device_time_by_kernel(trace_file: str, top: int = 20) -> list[tuple[str, float, int, float]]:
  """[(kernel name, total ms, count, share of device time)] from a Perfetto trace, longest first.

  Counts the complete events ('X') of a GPU or TPU device's 'XLA Ops' line (its
  kernel streams where there is none).
  """
  import collections  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  with gzip.open(trace_file, 'rt') as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  devices = {e['pid'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and any(k in str(e.get('args', {}).get('name', '')) for k in ('GPU', 'TPU', 'gpu'))}
  threads = {(e['pid'], e.get('tid')): str(e.get('args', {}).get('name', '')) for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name' and e.get('pid') in devices}
  # A device's trace has the same time as kernels ('Stream #..') and as XLA ops ('XLA Ops'):
  # count one of them, the ops where the profiler names them.
  wanted = {k for k, name in threads.items() if 'XLA Ops' in name}
  wanted = wanted or {k for k, name in threads.items() if name.startswith('Stream')}
  total = collections.Counter()
  count = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and (e.get('pid'), e.get('tid')) in wanted:
      total[e['name']] += float(e.get('dur', 0)) / 1e3
      count[e['name']] += 1
  all_ms = sum(total.values()) or 1.0
  return [(name, ms, count[name], ms / all_ms) for name, ms in total.most_common(top)]


def print_profile(trace_file: str | None, top: int = 15) -> None:
  """Prints where device time went (see `device_time_by_kernel`)."""
  if not trace_file:
    print('profile: the profiler wrote no Perfetto trace', flush=True)
    return
  rows = device_time_by_kernel(trace_file, top)
  if not rows:
    print(f'profile: no device events in {trace_file}', flush=True)
  for name, ms, n, share in rows:
    print(f'  {100 * share:5.1f}% {ms:9.2f} ms {n:6d}x  {name[:110]}', flush=True)
