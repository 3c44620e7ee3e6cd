"""jaxgen.xla_flags: CPU convolutions compile to XLA's own kernels, not YNNPACK fusions."""

import os
import re

import jax
import jax.numpy as jnp
import pytest

from jaxgen import xla_flags

KNOWN = xla_flags._jaxlib_has(xla_flags.FLAG[2:].encode(), *(n.encode() for n in xla_flags.REMOVED))


def _ynn_computations(hlo: str) -> set[str]:
  """Names of the computations that YNNPACK fusions call in optimised HLO text."""
  return {m.group(1) for line in hlo.splitlines() if '__ynn_fusion' in line
          for m in [re.search(r'calls=%?([\w.\-]+)', line)] if m}


@pytest.mark.skipif(not KNOWN, reason='this jaxlib has no YNN fusion-type flag')
def test_convolutions_and_reductions_are_not_ynn_fusions():
  # conftest.py calls prefer_xla_cpu_kernels() before JAX starts, as `jaxgen` does.
  # Large enough for XLA to hand both to YNNPACK by default (at 2x8x8x4 it does not).
  x = jnp.ones((8, 16, 16, 32))  # [B, H, W, C]
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
    in_ynn = [name for name, body in bodies if name in ynn and op in body]
    assert not in_ynn, f'{op[:-1]} in YNNPACK fusions: {in_ynn}'


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
