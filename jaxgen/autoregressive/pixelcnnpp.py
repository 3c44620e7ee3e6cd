"""PixelCNN++ (Salimans et al. 2017): the network that gives each pixel its logistic mixture.

`PixelCNNPP` maps images [B, H, W, C] in [-1, 1] to the parameters [B, H, W, M (1 + 2C +
C(C-1)/2)] of a discretized logistic mixture per pixel (the layout of
`jaxgen.nn.distributions.discretized_logistic_mixture_log_prob`, which is the likelihood to
train it with). The output at pixel (i, j) depends only on the pixels strictly before it in
raster order: rows < i, and row i at columns < j. The channels of one pixel are ordered by the
mixture's coupling coefficients, not by the network.

Causality comes from where each convolution's window sits, set by explicit zero padding:

- down-shifted (kh x kw, kw odd): output (i, j) reads input rows i - kh + 1 .. i, columns
  j - (kw - 1) / 2 .. j + (kw - 1) / 2;
- down-right-shifted (kh x kw): rows i - kh + 1 .. i, columns j - kw + 1 .. j;
- `down_shift` / `right_shift` move a map one row down / one column right, zeros entering.

The u stream starts as down_shift(down-shifted 2x3 conv) and so sees only rows above; the ul
stream starts as down_shift(down-shifted 1x3) + right_shift(down-right-shifted 2x1) and sees the
rows above and the pixels to the left. Later layers keep each stream's window on its own
side: u with down-shifted 2x3 convs, ul with down-right-shifted 2x2 convs (and u as input).
The stride-2 convolutions use the same windows; the stride-2 transposed convolutions (written
as convolutions of the input dilated by 2) send low-resolution pixel (i, j) to output rows
2i, 2i + 1 only, which sees no more than pixel (2i, 2j) of the full-resolution map did.

Departures from the paper: plain convolutions instead of weight-normalised ones (and no
data-dependent initialisation); the last convolution of every gated resnet starts at a tenth
of the usual scale, in place of the paper's init_scale=0.1.

Shape letters: B batch, H W image (divisible by 4), C image channels, F = `ch` features,
M mixture components, P = M (1 + 2C + C(C-1)/2) output parameters.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import JaxgenError
from jaxgen.nn.distributions import logistic_mixture_num_params

Dtype = Any

# The last conv of a gated resnet: lecun-normal with a tenth of the standard deviation.
small_init = nn.initializers.variance_scaling(0.01, 'fan_in', 'truncated_normal')
# The paper's initialisation of the class-conditional weights: N(0, 0.05).
label_init = nn.initializers.normal(0.05)


def down_shift(x: jax.Array) -> jax.Array:
  """[B, H, W, F] -> [B, H, W, F], out[:, i] = x[:, i - 1] and zeros on row 0."""
  return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def right_shift(x: jax.Array) -> jax.Array:
  """[B, H, W, F] -> [B, H, W, F], out[:, :, j] = x[:, :, j - 1] and zeros on column 0."""
  return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def concat_elu(x: jax.Array) -> jax.Array:
  """elu([x, -x]) on the feature axis: [..., F] -> [..., 2F]."""
  return nn.elu(jnp.concatenate([x, -x], axis=-1))


def shifted_conv(features: int, kernel: tuple[int, int], kind: str, stride: int = 1,
                 dtype: Dtype = jnp.float32, kernel_init: Any = nn.initializers.lecun_normal(),
                 name: str | None = None) -> nn.Conv:
  """A down-shifted ('down') or down-right-shifted ('down_right') convolution.

  [B, H, W, Fi] -> [B, H / stride, W / stride, features] (H, W even for stride 2). Output (i, j)
  (at stride 1) reads rows i - kh + 1 .. i and columns j - (kw - 1) / 2 .. j + (kw - 1) / 2
  ('down', kw odd) or j - kw + 1 .. j ('down_right').
  """
  kh, kw = kernel
  cols = ((kw - 1) // 2, (kw - 1) // 2) if kind == 'down' else (kw - 1, 0)
  return nn.Conv(features, kernel, strides=(stride, stride), padding=((kh - 1, 0), cols),
                 dtype=dtype, kernel_init=kernel_init, name=name)


def shifted_deconv(features: int, kernel: tuple[int, int], kind: str, dtype: Dtype = jnp.float32,
                   name: str | None = None) -> nn.Conv:
  """The stride-2 transposed down-shifted (kernel 2x3) or down-right-shifted (2x2) convolution.

  [B, H, W, Fi] -> [B, 2H, 2W, features], as a convolution of the input dilated by 2
  (input (i, j) sits at (2i, 2j)). Output row r reads input rows i with 2i in {r - 1, r};
  output column s reads input columns j with 2j in {s - 1, s, s + 1} ('down', 2x3) or
  {s - 1, s} ('down_right', 2x2): input (i, j) reaches only outputs (2i + {0, 1}, 2j + ...).
  This matches the paper's VALID transposed conv followed by its crop.
  """
  if (kind, tuple(kernel)) not in (('down', (2, 3)), ('down_right', (2, 2))):
    raise ValueError(f'shifted_deconv supports down 2x3 and down_right 2x2, got {kind} {kernel}')
  cols = (1, 2) if kind == 'down' else (1, 1)
  return nn.Conv(features, kernel, padding=((1, 1), cols), input_dilation=(2, 2), dtype=dtype,
                 name=name)


class GatedResnet(nn.Module):
  """The PixelCNN++ gated resnet: x + a * sigmoid(b).

  c1 = conv(concat_elu(x)) (+ nin(concat_elu(a)) when `a` is given), then concat_elu, dropout,
  conv to 2F (+ a per-class bias when `num_classes` > 0), split into a, b.
  Inputs x: [B, H, W, F]; a: [B, H, W, Fa] or None; label: int32 [B] or None. Output [B, H, W, F].
  """
  kind: str  # 'down' (2x3 convs, the u stream) or 'down_right' (2x2 convs, the ul stream)
  dropout: float = 0.0
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, a: jax.Array | None = None, label: jax.Array | None = None,
               *, train: bool = False) -> jax.Array:
    f = x.shape[-1]
    kernel = (2, 3) if self.kind == 'down' else (2, 2)
    c1 = shifted_conv(f, kernel, self.kind, dtype=self.dtype, name='conv1')(concat_elu(x))
    if a is not None:
      c1 = c1 + nn.Dense(f, dtype=self.dtype, name='nin_a')(concat_elu(a))
    c1 = nn.Dropout(self.dropout, deterministic=not train)(concat_elu(c1))
    c2 = shifted_conv(2 * f, kernel, self.kind, dtype=self.dtype, kernel_init=small_init,
                      name='conv2')(c1)  # [B, H, W, 2F]
    if self.num_classes > 0:
      bias = nn.Embed(self.num_classes, 2 * f, embedding_init=label_init, name='label_bias')(label)
      c2 = c2 + bias.astype(self.dtype)[:, None, None, :]
    gate_a, gate_b = jnp.split(c2, 2, axis=-1)
    return x + gate_a * nn.sigmoid(gate_b)


class PixelCNNPP(nn.Module):
  """PixelCNN++ (module docstring): images -> per-pixel logistic-mixture parameters.

  Attributes:
    ch: features F of both streams at every resolution (160 in the paper).
    num_resnets: gated resnets per stage (5 in the paper); the down pass has num_resnets per
      resolution, the up pass num_resnets at the lowest and num_resnets + 1 at the other two.
    num_mixtures: M, logistic components per pixel (10 in the paper).
    dropout: dropout rate inside the gated resnets, applied only with train=True (rng
      collection 'dropout').
    num_classes: > 0 makes the model class-conditional: a learned per-class bias of each gated
      resnet's gates. With 0 the labels are ignored.
    dtype: computation dtype; parameters and the output are float32.
  """
  ch: int = 160
  num_resnets: int = 5
  num_mixtures: int = 10
  dropout: float = 0.5
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, label: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """x [B, H, W, C] in [-1, 1], label int32 [B] or None -> params [B, H, W, P] float32."""
    if x.ndim != 4:
      raise JaxgenError(f'PixelCNNPP takes images [B, H, W, C], got shape {tuple(x.shape)}.')
    b, h, w, c = x.shape
    if h % 4 or w % 4:
      raise JaxgenError(f'PixelCNNPP halves the image twice, so its height and width must be '
                        f'divisible by 4, got {h}x{w}.')
    num_params = logistic_mixture_num_params(c, self.num_mixtures)
    if self.num_classes > 0:
      if label is None or tuple(label.shape) != (b,):
        got = None if label is None else tuple(label.shape)
        raise JaxgenError(f'PixelCNNPP has num_classes={self.num_classes}, so pass labels of '
                          f'shape ({b},) int32, got {got}.')
    else:
      label = None

    f, dt = self.ch, self.dtype
    resnet = lambda kind, name: GatedResnet(kind, self.dropout, self.num_classes, dt, name=name)
    x = x.astype(dt)
    x_pad = jnp.concatenate([x, jnp.ones((b, h, w, 1), dt)], axis=-1)  # [B, H, W, C + 1]

    # Down pass (the paper's "up pass"): three resolutions, every output kept.
    u_list = [down_shift(shifted_conv(f, (2, 3), 'down', dtype=dt, name='u_in')(x_pad))]
    ul_list = [down_shift(shifted_conv(f, (1, 3), 'down', dtype=dt, name='ul_in_above')(x_pad))
               + right_shift(shifted_conv(f, (2, 1), 'down_right', dtype=dt,
                                          name='ul_in_left')(x_pad))]
    for level in range(3):
      if level > 0:
        u_list.append(shifted_conv(f, (2, 3), 'down', 2, dt, name=f'u_down{level}')(u_list[-1]))
        ul_list.append(shifted_conv(f, (2, 2), 'down_right', 2, dt,
                                    name=f'ul_down{level}')(ul_list[-1]))
      for r in range(self.num_resnets):
        u_list.append(resnet('down', f'down{level}_u{r}')(u_list[-1], None, label, train=train))
        ul_list.append(resnet('down_right', f'down{level}_ul{r}')(
            ul_list[-1], u_list[-1], label, train=train))

    # Up pass (the paper's "down pass"): each resnet takes the matching down-pass outputs.
    u, ul = u_list.pop(), ul_list.pop()
    for level in range(3):
      if level > 0:
        u = shifted_deconv(f, (2, 3), 'down', dt, name=f'u_up{level}')(u)
        ul = shifted_deconv(f, (2, 2), 'down_right', dt, name=f'ul_up{level}')(ul)
      for r in range(self.num_resnets + (level > 0)):
        u = resnet('down', f'up{level}_u{r}')(u, u_list.pop(), label, train=train)
        ul = resnet('down_right', f'up{level}_ul{r}')(
            ul, jnp.concatenate([u, ul_list.pop()], axis=-1), label, train=train)
    assert not u_list and not ul_list

    out = nn.Dense(num_params, dtype=dt, name='nin_out')(nn.elu(ul))  # [B, H, W, P]
    return out.astype(jnp.float32)
