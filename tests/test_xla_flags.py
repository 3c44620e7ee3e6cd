"""jaxgen.xla_flags: CPU convolutions compile to XLA's own kernels, not YNNPACK fusions."""

import os
import re
import subprocess
import sys

import pytest

from jaxgen import xla_flags

KNOWN = xla_flags._jaxlib_has(xla_flags.FLAG[2:].encode(), *(n.encode() for n in xla_flags.REMOVED))


def _ynn_computations(hlo: str) -> set[str]:
  """Names of the computations that YNNPACK fusions call in optimised HLO text."""
  return {m.group(1) for line in hlo.splitlines() if '__ynn_fusion' in line
          for m in [re.search(r'calls=%?([\w.\-]+)', line)] if m}


CHECK = r"""
import re, sys
from jaxgen import xla_flags
xla_flags.prefer_xla_cpu_kernels()
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
from test_xla_flags import _ynn_computations
x = jnp.ones((8, 16, 16, 32))  # [B, H, W, C]; at 2x8x8x4 XLA keeps even the default off YNNPACK
w = jnp.ones((3, 3, 32, 32))  # [kh, kw, C_in, C_out]
def loss(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(y ** 2)
def group_stats(x):  # GroupNorm's statistics: [B, H, W, C] -> [B, 8]
  xs = x.reshape(8, -1, 8, 4)
  return jnp.mean(xs, axis=(1, 3)), jnp.mean(xs ** 2, axis=(1, 3))
for hlo, op in ((jax.jit(jax.grad(loss)).lower(w, x).compile().as_text(), 'convolution('),
                (jax.jit(group_stats).lower(x).compile().as_text(), 'reduce(')):
  assert op in hlo
  ynn = _ynn_computations(hlo)
  bodies = re.findall(r'^%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}', hlo, re.S | re.M)
  print(op[:-1], [name for name, body in bodies if name in ynn and op in body])
"""


@pytest.mark.skipif(not KNOWN, reason='this jaxlib has no YNN fusion-type flag')
@pytest.mark.parametrize('user_flags, in_ynn', [('', False), (f'{xla_flags.FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_REDUCE', True)])
def test_convolutions_and_reductions_are_not_ynn_fusions(user_flags, in_ynn):
  # A fresh process (XLA reads XLA_FLAGS once), started the way `jaxgen` starts; the test suite
  # itself keeps XLA's defaults. A user's own setting is kept, and then YNNPACK has them.
  env = dict(os.environ, XLA_FLAGS=user_flags, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', CHECK, os.path.dirname(__file__)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  for line in out.stdout.splitlines():
    name, _, fused = line.partition(' ')
    assert (fused != '[]') == in_ynn, line


def test_flag_is_added_once_and_a_users_choice_is_kept(monkeypatch):
  monkeypatch.setattr(xla_flags, '_jaxlib_has', lambda *names: True)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert xla_flags.prefer_xla_cpu_kernels()
  assert xla_flags.prefer_xla_cpu_kernels()  # a second call adds nothing
  assert os.environ['XLA_FLAGS'] == (
      f'--xla_force_host_platform_device_count=8 {xla_flags.FLAG}={xla_flags.VALUE}')

  users = f'{xla_flags.FLAG}=LIBRARY_FUSION_TYPE_REDUCE'
  monkeypatch.setenv('XLA_FLAGS', users)
  assert not xla_flags.prefer_xla_cpu_kernels()
  assert os.environ['XLA_FLAGS'] == users


def test_unknown_flag_is_never_set(monkeypatch):
  # XLA aborts the process on a flag it does not know: without it in jaxlib, nothing is added.
  monkeypatch.setattr(xla_flags, '_jaxlib_has', lambda *names: False)
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert not xla_flags.prefer_xla_cpu_kernels()
  assert 'XLA_FLAGS' not in os.environ
