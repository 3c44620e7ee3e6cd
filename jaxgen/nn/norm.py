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

The input may also arrive as parts whose channel concatenation it is (a UNet
up block's input and its skip connection): the output is the normalised
concatenation, written once, and the backward pass writes each part's
gradient directly, where differentiating a `jnp.concatenate` in front of the
norm writes the whole input gradient and then copies it out part by part (6.4
GB per training step of the CIFAR-10 UNet at batch 512). A group may straddle
two parts: statistics are formed from per-channel sums, then grouped. With
`concat=False` each part's normalisation comes out apart, for a convolution
split over the parts (`nn.blocks.ResBlock.split_conv`).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Parts = tuple[jax.Array, ...]


def _bounds(parts: Parts) -> list[tuple[int, int]]:
  """The channel range [start, end) of each part in the concatenation."""
  out, start = [], 0
  for p in parts:
    out.append((start, start + p.shape[-1]))
    start += p.shape[-1]
  return out


def _flat(x: jax.Array) -> jax.Array:
  """[B, ..., C] -> float32 [B, N, C] (N: all positions)."""
  return x.astype(jnp.float32).reshape(x.shape[0], -1, x.shape[-1])


def _per_group(per_channel: jax.Array, groups: int) -> jax.Array:
  """[..., C] -> [..., G]: sums over each group's C/G channels.

  Callers stack the sums they need ([2, B, C]) so that one small reduction forms
  both: XLA's GPU compiler gives each reduction its own kernel, and at small
  batches a norm's handful of tiny kernels costs more than its passes over the data.
  """
  c = per_channel.shape[-1]
  return jnp.sum(per_channel.reshape(*per_channel.shape[:-1], groups, c // groups), axis=-1)


def _per_channel(per_group: jax.Array, channels: int) -> jax.Array:
  """[B, G] -> [B, 1, C]: each group's value for each of its channels."""
  return jnp.repeat(per_group, channels // per_group.shape[1], axis=1)[:, None, :]


def _inputs(parts: Parts, shift: jax.Array | None) -> list[jax.Array]:
  """float32 [B, N, C_i] of each part, plus its channels of shift [B, C] at every position."""
  xs = [_flat(p) for p in parts]
  if shift is None:
    return xs
  return [x + shift[:, None, lo:hi].astype(jnp.float32) for x, (lo, hi) in zip(xs, _bounds(parts))]


def _forward(parts, shift, scale, bias, groups, eps, silu, dtype, concat):
  xs = _inputs(parts, shift)  # each [B, N, C_i]
  n, c = xs[0].shape[1], scale.shape[0]
  count = n * (c // groups)  # elements per group
  sum_x = jnp.concatenate([jnp.sum(x, axis=1) for x in xs], axis=-1)  # [B, C]
  sum_x2 = jnp.concatenate([jnp.sum(jnp.square(x), axis=1) for x in xs], axis=-1)  # [B, C]
  mean, mean_x2 = _per_group(jnp.stack([sum_x, sum_x2]), groups) / count  # each [B, G]
  var = jnp.maximum(mean_x2 - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + eps)  # [B, G]
  mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)  # [B, 1, C]
  ys = []
  for x, (lo, hi) in zip(xs, _bounds(parts)):
    y = (x - mean_c[..., lo:hi]) * rstd_c[..., lo:hi] * scale[lo:hi] + bias[lo:hi]  # [B, N, C_i]
    ys.append(jax.nn.silu(y) if silu else y)
  stats = (sum_x, mean, rstd)
  if not concat:  # each part's normalisation, [B, ..., C_i]
    return tuple(y.astype(dtype).reshape(p.shape) for y, p in zip(ys, parts)), stats
  out = ys[0] if len(ys) == 1 else jnp.concatenate(ys, axis=-1)  # [B, N, C]
  return out.astype(dtype).reshape(*parts[0].shape[:-1], c), stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def group_norm(parts: Parts, shift: jax.Array | None, scale: jax.Array, bias: jax.Array,
               groups: int, eps: float, silu: bool, dtype: Dtype,
               concat: bool = True) -> jax.Array | Parts:
  """GroupNorm of x + shift over groups of C/groups channels and all positions.

  parts: the input x [B, ..., C] as a tuple of arrays [B, ..., C_i] whose
  channel concatenation it is (one array: a 1-tuple); shift: [B, C] added at
  every position, or None; scale, bias: float32 [C]; silu: apply SiLU to the
  result. Returns `dtype` [B, ..., C], or with `concat=False` the normalised
  parts, each [B, ..., C_i].
  """
  return _forward(parts, shift, scale, bias, groups, eps, silu, dtype, concat)[0]


def _group_norm_fwd(parts, shift, scale, bias, groups, eps, silu, dtype, concat):
  out, (sum_x, mean, rstd) = _forward(parts, shift, scale, bias, groups, eps, silu, dtype, concat)
  return out, (parts, shift, scale, bias, None if shift is None else sum_x, mean, rstd)


def _group_norm_bwd(groups, eps, silu, dtype, concat, res, d_out):
  del eps, dtype
  parts, shift, scale, bias, sum_x, mean, rstd = res
  xs = _inputs(parts, shift)  # each [B, N, C_i]
  n, c = xs[0].shape[1], scale.shape[0]
  count = n * (c // groups)
  mean_c, rstd_c = _per_channel(mean, c), _per_channel(rstd, c)  # [B, 1, C]
  # dL/d(output): [B, ..., C], or with concat=False one [B, ..., C_i] per part
  d_all = d_out.reshape(d_out.shape[0], n, c) if concat else None  # [B, N, C]

  def grads(i: int, sigmoid) -> tuple[jax.Array, jax.Array]:
    """(xhat, dL/dy) of part i [B, N, C_i], with `sigmoid` for the SiLU's derivative."""
    lo, hi = _bounds(parts)[i]
    xhat = (xs[i] - mean_c[..., lo:hi]) * rstd_c[..., lo:hi]  # [B, N, C_i]
    d = d_all[..., lo:hi] if concat else d_out[i].reshape(xhat.shape)
    d = d.astype(jnp.float32)
    if silu:  # through SiLU: d/dy [y sigmoid(y)] = s (1 + y (1 - s))
      y = xhat * scale[lo:hi] + bias[lo:hi]
      s = sigmoid(y)
      d = d * s * (1.0 + y * (1.0 - s))
    return xhat, d

  # dL/dy is needed by the sums' pass and then by dx's. A value that is costly to repeat (the
  # sigmoid) with several consumers is written to memory by XLA, here in float32, and read
  # back by each; so the dx pass gets its own, equal form of the sigmoid, which XLA does not
  # merge, and recomputes dL/dy from d_out and x. (A third form for the second sum would
  # save 2.6 GB more per training step of the CIFAR-10 UNet at batch 512, but XLA then
  # schedules the backward pass with 1.2 GB more live memory; benchmarks.gpu_traffic.)
  sum_d, sum_dx = [], []
  for i in range(len(parts)):
    xhat, d = grads(i, jax.nn.sigmoid)
    sum_d.append(jnp.sum(d, axis=1))  # [B, C_i]
    sum_dx.append(jnp.sum(d * xhat, axis=1))
  sum_d, sum_dx = jnp.concatenate(sum_d, axis=-1), jnp.concatenate(sum_dx, axis=-1)  # [B, C]
  d_bias, d_scale = jnp.sum(sum_d, axis=0), jnp.sum(sum_dx, axis=0)
  group_d, group_dx = _per_group(jnp.stack([sum_d, sum_dx]) * scale, groups) / count  # [B, G]
  mean_g, mean_gx = _per_channel(group_d, c), _per_channel(group_dx, c)  # [B, 1, C]
  d_parts = []
  for i, (p, (lo, hi)) in enumerate(zip(parts, _bounds(parts))):
    xhat, d = grads(i, lambda y: 0.5 * jnp.tanh(0.5 * y) + 0.5)  # = sigmoid(y)
    dx = rstd_c[..., lo:hi] * (d * scale[lo:hi] - mean_g[..., lo:hi] - xhat * mean_gx[..., lo:hi])
    d_parts.append(dx.astype(p.dtype).reshape(p.shape))
  d_parts = tuple(d_parts)
  d_shift = None
  if shift is not None:  # the input gradient summed over positions, from the sums at hand
    sum_xhat = rstd_c[:, 0] * (sum_x - n * mean_c[:, 0])  # [B, C]
    d_shift = rstd_c[:, 0] * (sum_d * scale - n * mean_g[:, 0] - mean_gx[:, 0] * sum_xhat)
    d_shift = d_shift.astype(shift.dtype)
  return d_parts, d_shift, d_scale, d_bias


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
  """GroupNorm with `num_groups` groups (and SiLU after it if `silu`), [B, ..., C] -> same shape.

  The input may be given as a sequence of [B, ..., C_i], its channel
  concatenation (the output is then [B, ..., sum C_i]).

  Parameters 'scale' (ones) and 'bias' (zeros), float32 [C], named as in
  `flax.linen.GroupNorm`; the output has the compute dtype `dtype`.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  silu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array], shift: jax.Array | None = None,
               concat: bool = True) -> jax.Array | Parts:
    """x: [B, ..., C] or parts [B, ..., C_i]; shift: [B, C] added at every position, or None.

    Returns [B, ..., C], or with `concat=False` the parts' normalisations (each
    [B, ..., C_i]) without writing their concatenation.
    """
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    c = sum(p.shape[-1] for p in parts)
    if c % self.num_groups:
      raise ValueError(f'{c} channels do not split into {self.num_groups} groups.')
    if any(p.shape[:-1] != parts[0].shape[:-1] for p in parts):
      raise ValueError(f'the parts must agree in all but their channels, got shapes '
                       f'{[p.shape for p in parts]}.')
    if shift is not None and shift.shape != (parts[0].shape[0], c):
      raise ValueError(f'shift must have shape {(parts[0].shape[0], c)} ([batch, channels]), '
                       f'got {shift.shape}.')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    return group_norm(parts, shift, scale, bias, self.num_groups, self.epsilon, self.silu,
                      jnp.dtype(self.dtype), concat)
