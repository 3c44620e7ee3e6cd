"""GroupNorm, optionally fused with the SiLU after it, with a hand-written backward pass.

The UNets normalise every activation twice per residual block, so the norm's
memory traffic is a large part of a training step (benchmarks/results/
h200_speed.md: "GroupNorm statistics and other reductions" were a fifth of it).
Differentiating `flax.linen.GroupNorm` through its mean and variance gives
several reductions per norm and keeps float32 intermediates alive for the
backward pass. Here the forward keeps only the input and the per-group mean and
inverse standard deviation; the backward recomputes the normalised input (and
the SiLU) elementwise and needs one pass of per-(example, channel) sums over
positions, from which both the parameter gradients and the per-group terms of
the input gradient follow:

  y = xhat * scale + bias,  xhat = (x - mean) * rstd,  g = dL/dy * scale
  dL/dx = rstd * (g - mean_group(g) - xhat * mean_group(g * xhat))

Statistics are float32 whatever the compute dtype; the variance is E[x^2] -
E[x]^2, as Flax computes it. Same parameters ('scale', 'bias' of shape [C]) as
`flax.linen.GroupNorm`, so checkpoints do not change.

An optional per-(example, channel) `shift` [B, C] is added to the input first
(a UNet residual block's time embedding): GroupNorm(x + shift) with the sum
formed inside the norm's own passes, in float32. Written as a separate add of a
broadcast after the convolution that produces x, XLA's GPU compiler instead
folds it into that cuDNN convolution as a full-size "side input", so the
broadcast is written to and read from device memory once per block
(benchmarks/results/h200_speed.md). Its gradient, the input gradient summed
over positions, follows from per-channel sums the two passes already form.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _grouped(x: jax.Array, groups: int) -> jax.Array:
  """[B, ..., C] -> float32 [B, N, G, C/G] (N: all positions)."""
  b, c = x.shape[0], x.shape[-1]
  return x.astype(jnp.float32).reshape(b, -1, groups, c // groups)


def _shifted(x, shift, groups):
  """float32 [B, N, G, Cg] of x [B, ..., C] plus shift [B, C] (or None) at every position."""
  xs = _grouped(x, groups)  # [B, N, G, Cg]
  if shift is None:
    return xs
  return xs + shift.astype(jnp.float32).reshape(xs.shape[0], 1, *xs.shape[2:])


def _forward(x, shift, scale, bias, groups, eps, silu, dtype):
  xs = _shifted(x, shift, groups)  # [B, N, G, Cg]
  count = xs.shape[1] * xs.shape[3]  # elements per group
  sum_x = jnp.sum(xs, axis=1)  # [B, G, Cg]: per channel, kept for the shift's gradient
  mean = jnp.sum(sum_x, axis=-1)[:, None, :, None] / count  # [B, 1, G, 1]
  var = jnp.maximum(jnp.sum(jnp.square(xs), axis=(1, 3), keepdims=True) / count - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + eps)  # [B, 1, G, 1]
  y = (xs - mean) * rstd * scale.reshape(xs.shape[2:]) + bias.reshape(xs.shape[2:])
  if silu:
    y = jax.nn.silu(y)
  return y.astype(dtype).reshape(x.shape), (sum_x, mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def group_norm(x: jax.Array, shift: jax.Array | None, scale: jax.Array, bias: jax.Array,
               groups: int, eps: float, silu: bool, dtype: Dtype) -> jax.Array:
  """GroupNorm of x + shift over groups of C/groups channels and all positions.

  x: [B, ..., C]; shift: [B, C] added at every position, or None; scale, bias:
  float32 [C]; silu: apply SiLU to the result. Returns `dtype` [B, ..., C].
  """
  return _forward(x, shift, scale, bias, groups, eps, silu, dtype)[0]


def _group_norm_fwd(x, shift, scale, bias, groups, eps, silu, dtype):
  out, (sum_x, mean, rstd) = _forward(x, shift, scale, bias, groups, eps, silu, dtype)
  return out, (x, shift, scale, bias, None if shift is None else sum_x, mean, rstd)


def _group_norm_bwd(groups, eps, silu, dtype, res, d_out):
  del eps, dtype
  x, shift, scale, bias, sum_x, mean, rstd = res
  xs = _shifted(x, shift, groups)  # [B, N, G, Cg]
  shape_gc = xs.shape[2:]
  scale_gc = scale.reshape(shape_gc)
  xhat = (xs - mean) * rstd
  d = d_out.astype(jnp.float32).reshape(xs.shape)  # dL/d(output)
  if silu:  # through SiLU: d/dy [y sigmoid(y)] = s (1 + y (1 - s))
    y = xhat * scale_gc + bias.reshape(shape_gc)
    s = jax.nn.sigmoid(y)
    d = d * s * (1.0 + y * (1.0 - s))  # dL/dy
  sum_d = jnp.sum(d, axis=1)  # [B, G, Cg]
  sum_dx = jnp.sum(d * xhat, axis=1)  # [B, G, Cg]
  d_bias = jnp.sum(sum_d, axis=0).reshape(scale.shape)
  d_scale = jnp.sum(sum_dx, axis=0).reshape(scale.shape)
  count = xs.shape[1] * xs.shape[3]  # elements per group
  mean_g = jnp.sum(sum_d * scale_gc, axis=-1)[:, None, :, None] / count  # [B, 1, G, 1]
  mean_gx = jnp.sum(sum_dx * scale_gc, axis=-1)[:, None, :, None] / count
  dx = rstd * (d * scale_gc - mean_g - xhat * mean_gx)  # [B, N, G, Cg]
  d_shift = None
  if shift is not None:  # dx summed over positions, from per-channel sums already at hand
    n = xs.shape[1]
    sum_xhat = rstd[:, 0] * (sum_x - n * mean[:, 0])  # [B, G, Cg]
    d_shift = rstd[:, 0] * (sum_d * scale_gc - n * mean_g[:, 0] - mean_gx[:, 0] * sum_xhat)
    d_shift = d_shift.reshape(shift.shape).astype(shift.dtype)
  return dx.astype(x.dtype).reshape(x.shape), d_shift, d_scale, d_bias


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
  """GroupNorm with `num_groups` groups (and SiLU after it if `silu`), [B, ..., C] -> same shape.

  Parameters 'scale' (ones) and 'bias' (zeros), float32 [C], named as in
  `flax.linen.GroupNorm`; the output has the compute dtype `dtype`.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  silu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, shift: jax.Array | None = None) -> jax.Array:
    """x: [B, ..., C]; shift: [B, C] added to x at every position first, or None."""
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f'{c} channels do not split into {self.num_groups} groups.')
    if shift is not None and shift.shape != (x.shape[0], c):
      raise ValueError(f'shift must have shape {(x.shape[0], c)} ([batch, channels]), got {shift.shape}.')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    return group_norm(x, shift, scale, bias, self.num_groups, self.epsilon, self.silu,
                      jnp.dtype(self.dtype))
