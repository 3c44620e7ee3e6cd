"""XLA flags that jaxgen's entry points set before JAX starts a backend.

`prefer_xla_cpu_kernels`: jaxlib 0.10's CPU compiler hands convolutions
and reductions to YNNPACK (LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION and
LIBRARY_FUSION_TYPE_REDUCE are in the default of XLA's
`xla_cpu_experimental_ynn_fusion_type`), and at the shapes of these models
both are slower than XLA's own kernels: on the 2-core CPU this project is
developed on, the weight gradient of a 3x3 64 -> 64 convolution at 28x28,
batch 32, took 529 ms against 36 ms on Eigen, and GroupNorm's reductions
doubled a DDIM step. Taking those two fusion types out (dots stay with
YNNPACK) made training 2.1x faster for experiments/ddpm_cfg_mnist.py and 6.3x
for the gated PixelCNN, and DDIM sampling 2.9x faster
(benchmarks/results/cpu_convolutions.md). The flag changes only the CPU
compiler; GPU and TPU programs are unaffected.

XLA reads XLA_FLAGS once, when JAX first starts a backend, and aborts the
process on a flag it does not know; so the flag is added only where this
jaxlib's XLA has both the flag and the value, and must be set before the first
JAX computation. `jaxgen` and `python -m benchmarks.*` call it first thing
(the test suite does not: see tests/test_xla_flags.py); in your own scripts
call it yourself, before using JAX:

    from jaxgen import xla_flags
    xla_flags.prefer_xla_cpu_kernels()
"""

import glob
import mmap
import os

FLAG = '--xla_cpu_experimental_ynn_fusion_type'
# '-' removes a type from XLA's default list and keeps the rest (dots stay with YNNPACK).
REMOVED = ('LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION', 'LIBRARY_FUSION_TYPE_REDUCE')
VALUE = ','.join('-' + name for name in REMOVED)


def _jaxlib_has(*names: bytes) -> bool:
  """Whether one of jaxlib's shared libraries contains every byte string in `names`."""
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), '*.so')):
    try:
      with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if all(m.find(name) >= 0 for name in names):
          return True
    except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes)
      continue
  return False


def prefer_xla_cpu_kernels() -> bool:
  """Adds `FLAG=VALUE` to XLA_FLAGS: CPU convolutions and reductions on XLA's kernels, not YNNPACK.

  Leaves XLA_FLAGS alone where it already sets the YNN fusion types (the
  user's choice wins) or where this jaxlib does not know the flag or the
  value. Has no effect on a backend JAX has already started.

  Returns:
    True if XLA_FLAGS now carries the flag with VALUE (added now or before).
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if FLAG in flags:
    return f'{FLAG}={VALUE}' in flags.split()
  if not _jaxlib_has(FLAG[2:].encode(), *(name.encode() for name in REMOVED)):
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {FLAG}={VALUE}'.strip()
  return True
