"""Convolutional building blocks (NHWC) shared by the model families.

Every module takes `dtype` (computation) and keeps parameters in float32, so
that one config flag switches a model to bfloat16 compute on accelerators.
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxgen.nn.dropout import Dropout
from jaxgen.nn.kernels import dot_product_attention
from jaxgen.nn.norm import GroupNorm

Dtype = Any

# Ho et al. zero-initialise the last layer of every residual branch so that each
# block starts as the identity.
zeros_init = nn.initializers.zeros
# The DDPM reference initialises with variance scaling (fan_avg, uniform).
default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
# The name of a ResBlock's convolution outputs, for remat policies.
CONV_OUTPUT = 'resblock_conv'


def group_norm(dtype: Dtype, name: str | None = None, silu: bool = False) -> GroupNorm:
  """GroupNorm(32) with the epsilon of the DDPM reference (1e-6), SiLU after it if `silu`."""
  return GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype, silu=silu, name=name)


def cast_matmul_params(params: Any, dtype: Dtype) -> Any:
  """`params` with the kernel and bias of every convolution and dense layer cast to `dtype`.

  A layer with compute dtype `dtype` casts its float32 kernel and bias itself on
  every call (`flax.linen.Conv`, `Dense`, `PartsDense`, `QKVProjection`); cast
  once here, outside a sampler's loop, those per-step conversions (one small
  kernel each, a few hundred per UNet evaluation on a GPU) disappear and the
  outputs do not change. A layer is a dict holding a 'kernel'; everything else
  (norm scales and biases, embeddings) keeps its dtype, as its module computes
  in float32 with it.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return params

  def cast(tree: Any) -> Any:
    if not isinstance(tree, Mapping):
      return tree
    layer = 'kernel' in tree and not isinstance(tree['kernel'], Mapping)
    return {k: v.astype(dtype) if layer and k in ('kernel', 'bias') else cast(v)
            for k, v in tree.items()}
  return cast(params)


class PartsDense(nn.Module):
  """`nn.Dense` applied to the channel concatenation of `parts`, one product per part.

  Input: a sequence of [..., C_i]; output [..., features]. Parameters are those of
  `nn.Dense(features)` on the concatenation (kernel [sum C_i, features], bias),
  so a checkpoint does not depend on how the input arrives. The concatenation
  itself is never formed: a matrix product needs its operand in memory, and
  a concatenated UNet skip input is the largest activation of the network.
  An optional `shift` [sum C_i], the same for every row, is added to the input
  first; it is folded into the bias (shift @ kernel), so no shifted copy is formed.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, parts: Sequence[jax.Array], shift: jax.Array | None = None) -> jax.Array:
    c_in = sum(p.shape[-1] for p in parts)
    kernel = self.param('kernel', default_init, (c_in, self.features), jnp.float32).astype(self.dtype)
    bias = self.param('bias', zeros_init, (self.features,), jnp.float32).astype(self.dtype)
    if shift is not None:
      bias = bias + jnp.dot(shift.astype(self.dtype), kernel)  # [features]
    out, start = None, 0
    for part in parts:
      c = part.shape[-1]
      y = jnp.dot(part.astype(self.dtype), kernel[start:start + c])  # [..., features]
      out, start = y if out is None else out + y, start + c
    return out + bias


class ConvBiasApart(nn.Module):
  """A 'SAME' stride-1 convolution returned without its bias, and the bias: x [B, H, W, C] ->
  ([B, H, W, features], [features]), both in the compute dtype `dtype`.

  Parameters and initial values are those of `nn.Conv(features, kernel_size)`
  under the same name, so checkpoints do not change; the caller adds the bias
  where it costs nothing. In a residual block it joins the time embedding in
  the next norm's shift (`GroupNorm(h, shift=emb + bias)`): its gradient is then
  the sum over examples of the shift's [B, C] gradient, instead of another pass
  over the [B, H, W, C] gradient (about 1 GB per training step of the CIFAR-10
  UNet at batch 512).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """x: [B, H, W, C], or parts [B, H, W, C_i] whose channel concatenation is the input."""
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    shape = (*self.kernel_size, sum(p.shape[-1] for p in parts), self.features)
    kernel = self.param('kernel', default_init, shape, jnp.float32).astype(self.dtype)
    bias = self.param('bias', zeros_init, (self.features,), jnp.float32).astype(self.dtype)
    y, start = None, 0
    for part in parts:  # one convolution per part, each added to the last one's output
      c = part.shape[-1]
      out = jax.lax.conv_general_dilated(part.astype(self.dtype), kernel[:, :, start:start + c],
                                         (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      y, start = out if y is None else y + out, start + c
    return y, bias


class ResBlock(nn.Module):
  """Residual block with a time (and class) embedding, Ho et al. 2020.

  Inputs x: [B, H, W, C], or a tuple of [B, H, W, C_i] whose channel
  concatenation is the input (a UNet's up-path input and its skip
  connection: the concatenation then only ever exists inside the fused
  normalisation kernels); emb: [B, E]; in_shift: None or [C], added to the
  input at every example and position (an up-sampling convolution's bias):
  the block folds it into its first norm and its skip projection instead of
  writing a shifted input. Output: [B, H, W, out_ch].

  `split_conv`: normalise the parts apart and give the first convolution one
  product per part (the second adds the first's output), so the normalised
  concatenation is never written and a part is free once it is normalised and
  projected. It costs one more write and read of the block's first convolution
  output; where the up-path part is the widest activation alive (a UNet block
  that narrows the channels after an up-sampling) it lowers the peak memory.

  The outputs of its two convolutions are named CONV_OUTPUT
  (`jax.ad_checkpoint.checkpoint_name`), so that a remat policy can keep them
  and recompute the cheap normalisations in the backward pass.
  """
  out_ch: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  split_conv: bool = False

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array], emb: jax.Array,
               train: bool, in_shift: jax.Array | None = None) -> jax.Array:
    parts = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    c_in = sum(p.shape[-1] for p in parts)
    if in_shift is not None and in_shift.shape != (c_in,):
      raise ValueError(f'in_shift must have shape {(c_in,)} ([channels]), got {in_shift.shape}.')
    b = parts[0].shape[0]
    norm_shift = None if in_shift is None else jnp.broadcast_to(
        in_shift.astype(jnp.float32), (b, c_in))  # [B, C]
    # [B, H, W, C]: the parts' concatenation, or with split_conv each part's normalisation
    h = group_norm(self.dtype, silu=True)(parts, shift=norm_shift, concat=not self.split_conv)
    h, conv_bias = ConvBiasApart(self.out_ch, dtype=self.dtype, name='Conv_0')(h)
    h = checkpoint_name(h, CONV_OUTPUT)
    # The embedding and the convolution's bias are added inside the norm (GroupNorm(h + shift)),
    # not as a broadcast add here, which XLA's GPU compiler would fold into the convolution
    # above as a full-size side input (jaxgen.nn.norm).
    emb = nn.Dense(self.out_ch, dtype=self.dtype, kernel_init=default_init)(nn.silu(emb))  # [B, C']
    shift = emb.astype(jnp.float32) + conv_bias.astype(jnp.float32)  # [B, C']
    h = group_norm(self.dtype, silu=True)(h, shift=shift)
    h = Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=zeros_init, name='Conv_1')(h)
    h = checkpoint_name(h, CONV_OUTPUT)
    if c_in != self.out_ch:
      x = PartsDense(self.out_ch, self.dtype, name='skip')(parts, shift=in_shift)
    else:
      x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)  # [B, H, W, C]
      if in_shift is not None:
        x = x + in_shift.astype(x.dtype)
    return x + h


class QKVProjection(nn.Module):
  """Queries, keys and values of attention: x [..., C] -> three [..., features].

  Parameters are those of `nn.DenseGeneral((3, features))` (kernel [C, 3,
  features], initialised as a [C, 3 * features] kernel; bias [3, features]), so
  checkpoints do not depend on how the product is written. One product, then
  slices: three products with kernel slices read the input three times and were
  slower on an H200. The bias is added after slicing, inside the slice copies
  XLA writes anyway: added to the product, XLA's GPU compiler materialises the
  broadcast bias as the matmul's full-size accumulator input
  (benchmarks/results/h200_speed.md).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    c, f = x.shape[-1], self.features

    def kernel_init(rng, shape, dtype=jnp.float32):  # as DenseGeneral: fans of the flat kernel
      return default_init(rng, (shape[0], shape[1] * shape[2]), dtype).reshape(shape)
    kernel = self.param('kernel', kernel_init, (c, 3, f), jnp.float32).astype(self.dtype)
    bias = self.param('bias', zeros_init, (3, f), jnp.float32).astype(self.dtype)
    qkv = jnp.einsum('...c,cjf->...jf', x.astype(self.dtype), kernel)  # [..., 3, features]
    return tuple(qkv[..., j, :] + bias[j] for j in range(3))


class AttnBlock(nn.Module):
  """Single-head spatial self-attention with a residual connection.

  Input and output: [B, H, W, C]. attention: 'auto' (cuDNN's fused kernel where
  it applies), 'xla' or 'cudnn' (`jaxgen.nn.kernels`).
  """
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    h = group_norm(self.dtype)(x)
    q, k, v = QKVProjection(c, self.dtype, name='qkv')(h.reshape(b, hgt * wid, c))  # each [B, L, C]
    q, k, v = (a[:, :, None, :] for a in (q, k, v))  # each [B, L, heads=1, C]
    h = dot_product_attention(q, k, v, implementation=self.attention)  # [B, L, 1, C]
    h = h.reshape(b, hgt, wid, c)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=zeros_init, name='proj_out')(h)
    return x + h


class Downsample(nn.Module):
  """Halves H and W: a stride-2 3x3 convolution. [B, H, W, C] -> [B, H/2, W/2, C]."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype,
                   kernel_init=default_init)(x)


def upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x up-sampling, [B, H, W, C] -> [B, 2H, 2W, C].

  The same values as `jax.image.resize(..., method='nearest')`, written as a
  broadcast and a reshape, which XLA fuses like any elementwise op, where
  resize lowers to a gather.
  """
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))  # [B, H, 2, W, 2, C]
  return x.reshape(b, 2 * h, 2 * w, c)


def _up_taps(w: jax.Array, axis: int) -> jax.Array:
  """The 4 taps along `axis` of `upsample_nearest_conv`'s kernel from a 3x3 kernel's 3, in
  reverse order: output row 2i reads input rows i-1 (3x3 row 0) and i (rows 1 + 2), output
  row 2i+1 reads rows i (rows 0 + 1) and i+1 (row 2); reversed: [2, 1+2, 0+1, 0]."""
  t = [jax.lax.index_in_dim(w, i, axis) for i in range(3)]
  return jnp.concatenate([t[2], t[1] + t[2], t[0] + t[1], t[0]], axis=axis)


def upsample_nearest_conv(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """`conv_3x3_same(upsample_nearest_2x(x), kernel)` without forming the up-sampled input.

  x: [B, H, W, I]; kernel: [3, 3, I, O] (HWIO). Returns [B, 2H, 2W, O] in x's dtype.
  One stride-2 transposed convolution (cuDNN's backward-data kernel on a GPU) with
  a 4x4 kernel of sums of `kernel`'s taps: it reads the H x W input instead of a
  written 2H x 2W copy, and does 16 instead of 36 multiply-adds per input pixel
  and channel pair. The same values up to the rounding of the summed taps.
  precision: passed to `jax.lax.conv_general_dilated`.
  """
  flipped = _up_taps(_up_taps(kernel.astype(jnp.float32), 0), 1)  # [4, 4, I, O], both axes reversed
  # Reversed back in the program: XLA's GPU compiler takes a convolution of a dilated input
  # with a reversed kernel for a transposed convolution (otherwise it pads the dilated input).
  return jax.lax.conv_general_dilated(
      x, jax.lax.rev(flipped.astype(x.dtype), (0, 1)), window_strides=(1, 1),
      padding=((2, 2), (2, 2)), lhs_dilation=(2, 2), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=precision)


def upsample_conv(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """A 'SAME' 3x3 convolution of the nearest 2x up-sampling of x: [B, H, W, I] -> [B, 2H, 2W, O].

  On a GPU `upsample_nearest_conv`; elsewhere the up-sampling, then the
  convolution: XLA's CPU compiler computes the transposed form's kernel
  gradient (a convolution with a dilated kernel) about 9x slower than the
  plain form's (benchmarks/results/gpu_traffic_2026-11-28/notes.md), and TPUs
  are not measured. Both give the same values (tests/test_unet.py).
  precision: passed to `jax.lax.conv_general_dilated`.
  """
  def plain(x, kernel):
    return jax.lax.conv_general_dilated(upsample_nearest_2x(x), kernel.astype(x.dtype), (1, 1),
                                        'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        precision=precision)

  def transposed(x, kernel):
    return upsample_nearest_conv(x, kernel, precision)
  return jax.lax.platform_dependent(x, kernel, cuda=transposed, default=plain)


class UpsampleConv(nn.Module):
  """`nn.Conv(features, (3, 3))` applied to the nearest 2x up-sampling of its input, with
  that layer's parameters (kernel [3, 3, C, features], bias), the bias returned apart:
  x [B, H, W, C] -> ([B, 2H, 2W, features], [features]), both in the compute dtype.
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Cast before the taps are summed, so parameters cast in advance (`cast_matmul_params`)
    # give the same bits.
    kernel = self.param('kernel', default_init, (3, 3, x.shape[-1], self.features),
                        jnp.float32).astype(self.dtype)
    bias = self.param('bias', zeros_init, (self.features,), jnp.float32).astype(self.dtype)
    return upsample_conv(x.astype(self.dtype), kernel), bias


class Upsample(nn.Module):
  """Doubles H and W: nearest-neighbour then a 3x3 convolution (on a GPU as one transposed
  convolution: `upsample_conv`). [B, H, W, C] -> [B, 2H, 2W, C].

  With `bias_apart`, returns the convolution without its bias and the bias [C],
  for the next block to add where it costs nothing (`ResBlock(in_shift=...)`):
  cuDNN adds no bias to a transposed convolution, so XLA writes a biased copy of
  the largest activation of a UNet's last level.
  """
  dtype: Dtype = jnp.float32
  bias_apart: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
    y, bias = UpsampleConv(x.shape[-1], self.dtype, name='Conv_0')(x)
    return (y, bias) if self.bias_apart else y + bias
