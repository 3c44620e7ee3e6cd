"""The FID Inception-v3 of pytorch-fid, ported to Flax (NHWC), with its weights.

This is the network behind FID and Inception Score as everyone reports them:
the TensorFlow graph `inception-2015-12-05` as pytorch-fid ports it
(`pytorch_fid.inception.fid_inception_v3`). It differs from torchvision's
ImageNet Inception-v3 in three ways that all change the features:

  * the average pools inside the Mixed_5x, Mixed_6b-e and Mixed_7b blocks
    ignore the zero padding (`count_include_pad=False`, TensorFlow's rule);
  * the pool branch of Mixed_7c is a 3x3 *max* pool (a quirk of the TF graph);
  * the classifier has 1008 classes (TF's label map), not 1000.

Input handling follows `pytorch_fid.inception.InceptionV3(resize_input=True,
normalize_input=True)`: images in [0, 1] are resized to 299x299 with
`F.interpolate(mode='bilinear', align_corners=False)` (no antialiasing) and
scaled to [-1, 1]. `resize_bilinear_torch` reproduces that resize exactly.
`jax.image.resize(..., 'bilinear')` would agree when upsampling (e.g. 32 ->
299: both use half-pixel centres and clamp at the border) but it antialiases
when downsampling, so for inputs larger than 299 it would blur where PyTorch
does not; hence the explicit gather-and-lerp here.

Public API:
  InceptionV3                 the Flax module: [B, H, W, 3] in [0, 1] -> (features, logits).
  inception_features          variables + uint8 / float [-1, 1] images -> ([B, 2048], [B, 1008]).
  load_inception_params       finds (or downloads) pytorch-fid's weights -> variables.
  convert_torch_state_dict    pytorch-fid state_dict (numpy) -> variables.
  save_inception_params       variables -> .npz (so torch is needed only once).
  init_inception_params       random variables (tests, shape checks).
  resize_bilinear_torch       F.interpolate(bilinear, align_corners=False) in JAX.

`variables` is always the Flax dict {'params': ..., 'batch_stats': ...}.
"""

import functools
import hashlib
import http.client
import os
import urllib.request
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxgen.errors import JaxgenError
from jaxgen.eval.cache import cache_dir
from jaxgen.images import atomic_write

WEIGHTS_FILENAME = 'pt_inception-2015-12-05-6726825d.pth'
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')
WEIGHTS_ENV = 'JAXGEN_INCEPTION_WEIGHTS'
# torch.hub's convention: the hex after the last '-' of the file name is a
# prefix of the file's SHA-256, so a truncated or wrong download is caught.
WEIGHTS_SHA256_PREFIX = '6726825d'

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
# TensorFlow's batch-norm epsilon, kept by pytorch-fid (torchvision's BasicConv2d).
BN_EPSILON = 1e-3

Variables = dict[str, Any]


# ----------------------------------------------------------------------------
# Resize.


def _linear_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """PyTorch's bilinear (align_corners=False) source indices along one axis.

  Mirrors aten's `area_pixel_compute_source_index` + `compute_indices_weights_linear`:
  src = (dst + 0.5) * in / out - 0.5, clamped at 0; the right neighbour is
  clamped to the last pixel. Returns i0 [out] int32, i1 [out] int32, lam [out] float32.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  # float32 like aten's CPU kernel, so that the weights round the same way.
  src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  return i0, i1, lam


def resize_bilinear_torch(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.interpolate(x, size, mode='bilinear', align_corners=False)` on NHWC input.

  No antialiasing in either direction, as in PyTorch's default. Exact up to
  float rounding for upsampling and downsampling alike.

  Args:
    x: [B, H, W, C] float.
    size: (out_h, out_w).
  Returns:
    [B, out_h, out_w, C], same dtype as x.
  """
  _, h, w, _ = x.shape
  out_h, out_w = size
  i0, i1, lam = _linear_indices(h, out_h)
  lam = jnp.asarray(lam, x.dtype)[None, :, None, None]
  x = jnp.take(x, i0, axis=1) * (1 - lam) + jnp.take(x, i1, axis=1) * lam  # [B, out_h, W, C]
  j0, j1, mu = _linear_indices(w, out_w)
  mu = jnp.asarray(mu, x.dtype)[None, None, :, None]
  return jnp.take(x, j0, axis=2) * (1 - mu) + jnp.take(x, j1, axis=2) * mu  # [B, out_h, out_w, C]


# ----------------------------------------------------------------------------
# The network. Submodule names are pytorch-fid's, so that a state_dict key
# `Mixed_5b.branch1x1.conv.weight` is the Flax path Mixed_5b/branch1x1/conv/kernel.

Precision = Any


class BasicConv2d(nn.Module):
  """Conv (no bias) -> BatchNorm (inference, eps 1e-3) -> ReLU. [B, H, W, Cin] -> [B, H', W', features]."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = [(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])]
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=pad, use_bias=False,
                precision=self.precision, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool that ignores the padding (TF's rule, `count_include_pad=False`)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class FIDInceptionA(nn.Module):
  """Mixed_5b/c/d. [B, 35, 35, Cin] -> [B, 35, 35, 224 + pool_features]."""
  pool_features: int
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, (1, 1), name='branch1x1')(x)
    b5 = conv(48, (1, 1), name='branch5x5_1')(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = conv(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision's, unpatched). [B, 35, 35, 288] -> [B, 17, 17, 768]."""
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name='branch3x3')(x)
    bd = conv(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name='branch3x3dbl_3')(bd)
    bp = nn.max_pool(x, (3, 3), (2, 2), padding='VALID')
    return jnp.concatenate([b3, bd, bp], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b/c/d/e. [B, 17, 17, 768] -> [B, 17, 17, 768]."""
  channels_7x7: int
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name='branch1x1')(x)
    b7 = conv(c7, (1, 1), name='branch7x7_1')(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = conv(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = conv(192, (1, 1), name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision's, unpatched). [B, 17, 17, 768] -> [B, 8, 8, 1280]."""
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, (1, 1), name='branch3x3_1')(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name='branch3x3_2')(b3)
    b7 = conv(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name='branch7x7x3_4')(b7)
    bp = nn.max_pool(x, (3, 3), (2, 2), padding='VALID')
    return jnp.concatenate([b3, b7, bp], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (pool='avg', FIDInceptionE_1) and Mixed_7c (pool='max', FIDInceptionE_2).

  [B, 8, 8, Cin] -> [B, 8, 8, 2048].
  """
  pool: str  # 'avg' or 'max'
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, (1, 1), name='branch1x1')(x)
    b3 = conv(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = conv(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.pool == 'avg':
      bp = _avg_pool_3x3_same(x)
    else:
      # The TF graph has a max pool here (pytorch-fid's FIDInceptionE_2); flax
      # pads max pools with -inf, like F.max_pool2d.
      bp = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    bp = conv(192, (1, 1), name='branch_pool')(bp)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID Inception-v3 with its pool3 features and 1008-way logits.

  Call: x [B, H, W, 3] float in [0, 1] (pytorch-fid's input convention; any
  H, W when resize_input, else H, W >= 75). Returns (features [B, 2048] float32,
  the global average pool of Mixed_7c, i.e. FID's pool3; logits [B, 1008]
  float32, the fc layer on those features, whose softmax IS uses).

  Attributes:
    resize_input: bilinearly resize to 299x299 first, as pytorch-fid does.
    normalize_input: map [0, 1] to [-1, 1], as pytorch-fid does.
    precision: matmul precision of convs and fc; HIGHEST by default, because
      TPUs (bf16 passes) and GPUs (TF32) otherwise lose enough accuracy to move
      FID in the reported digits.
  """
  resize_input: bool = True
  normalize_input: bool = True
  precision: Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(x, jnp.float32)
    if self.resize_input:
      x = resize_bilinear_torch(x, (INPUT_SIZE, INPUT_SIZE))  # [B, 299, 299, 3]
    if self.normalize_input:
      x = 2 * x - 1
    conv = functools.partial(BasicConv2d, precision=self.precision)
    p = self.precision
    x = conv(32, (3, 3), strides=(2, 2), name='Conv2d_1a_3x3')(x)  # [B, 149, 149, 32]
    x = conv(32, (3, 3), name='Conv2d_2a_3x3')(x)  # [B, 147, 147, 32]
    x = conv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)  # [B, 147, 147, 64]
    x = nn.max_pool(x, (3, 3), (2, 2), padding='VALID')  # [B, 73, 73, 64]
    x = conv(80, (1, 1), name='Conv2d_3b_1x1')(x)  # [B, 73, 73, 80]
    x = conv(192, (3, 3), name='Conv2d_4a_3x3')(x)  # [B, 71, 71, 192]
    x = nn.max_pool(x, (3, 3), (2, 2), padding='VALID')  # [B, 35, 35, 192]
    x = FIDInceptionA(32, precision=p, name='Mixed_5b')(x)  # [B, 35, 35, 256]
    x = FIDInceptionA(64, precision=p, name='Mixed_5c')(x)  # [B, 35, 35, 288]
    x = FIDInceptionA(64, precision=p, name='Mixed_5d')(x)  # [B, 35, 35, 288]
    x = InceptionB(precision=p, name='Mixed_6a')(x)  # [B, 17, 17, 768]
    x = FIDInceptionC(128, precision=p, name='Mixed_6b')(x)
    x = FIDInceptionC(160, precision=p, name='Mixed_6c')(x)
    x = FIDInceptionC(160, precision=p, name='Mixed_6d')(x)
    x = FIDInceptionC(192, precision=p, name='Mixed_6e')(x)  # [B, 17, 17, 768]
    x = InceptionD(precision=p, name='Mixed_7a')(x)  # [B, 8, 8, 1280]
    x = FIDInceptionE('avg', precision=p, name='Mixed_7b')(x)  # [B, 8, 8, 2048]
    x = FIDInceptionE('max', precision=p, name='Mixed_7c')(x)  # [B, 8, 8, 2048]
    features = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    logits = nn.Dense(NUM_CLASSES, precision=p, name='fc')(features)  # [B, 1008]
    return features, logits


# ----------------------------------------------------------------------------
# Applying it to jaxgen images.


@functools.partial(jax.jit, static_argnames=('precision',))
def _apply(variables: Variables, x01: jax.Array, precision: Precision) -> tuple[jax.Array, jax.Array]:
  return InceptionV3(precision=precision).apply(variables, x01)


def inception_features(variables: Variables, images: Any, *,
                       precision: Precision = jax.lax.Precision.HIGHEST) -> tuple[jax.Array, jax.Array]:
  """FID features and IS logits of a batch of jaxgen images.

  Args:
    variables: {'params', 'batch_stats'} from `load_inception_params` (or
      `init_inception_params`).
    images: [B, H, W, C], C in {1, 3}: uint8 in [0, 255], or float in [-1, 1]
      (jaxgen's sample range). Any H, W: they are resized to 299x299 the way
      pytorch-fid does. One channel is repeated to three, which is what
      pytorch-fid's `Image.convert('RGB')` does to grayscale files.
    precision: conv/fc matmul precision (see `InceptionV3`).
  Returns:
    (features [B, 2048] float32, logits [B, 1008] float32). One compilation per
    (B, H, W) and per precision.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise JaxgenError(f'Inception takes NHWC images with 1 or 3 channels, got shape {tuple(images.shape)}.')
  if images.dtype == np.uint8:
    # pytorch-fid's ToTensor(): uint8 / 255.
    x01 = jnp.asarray(images, jnp.float32) / 255.0
  elif jnp.issubdtype(images.dtype, jnp.floating):
    if not isinstance(images, jax.core.Tracer):
      lo, hi = float(jnp.min(images)), float(jnp.max(images))
      # A little slack for samplers that overshoot before clipping.
      if lo < -1.01 or hi > 1.01:
        raise JaxgenError(f'float images must be in [-1, 1] (got values in [{lo:.3g}, {hi:.3g}]); '
                          'pass uint8 for [0, 255].')
    x01 = (jnp.asarray(images, jnp.float32) + 1.0) * 0.5
  else:
    raise JaxgenError(f'Inception images must be uint8 or float in [-1, 1], got dtype {images.dtype}.')
  if x01.shape[-1] == 1:
    x01 = jnp.repeat(x01, 3, axis=-1)
  return _apply(variables, x01, precision)


# ----------------------------------------------------------------------------
# Parameters: shapes, random init, the torch converter, .npz files, the loader.


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(collection, *module path, leaf): shape} of the variables, from an abstract init."""
  shapes = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes).items()}


def init_inception_params(seed: int = 0) -> Variables:
  """Random variables, for tests and shape checks (on the default device).

  Conv kernels are He-normal (fan-in), the fc N(0, 1/2048), biases 0, BN scale
  1, mean 0, var 1. Drawn with numpy from the abstract shapes: a jitted Flax
  `init` costs ~25 s of compilation on a CPU for the 95 initialisers.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in _expected_shapes().items():
    leaf = key[-1]
    if leaf == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      gain = 2.0 if len(shape) == 4 else 1.0  # convs feed ReLUs; the fc does not
      flat[key] = (rng.standard_normal(shape, np.float32) * np.sqrt(gain / fan_in)).astype(np.float32)
    elif leaf in ('scale', 'var'):
      flat[key] = np.ones(shape, np.float32)
    else:
      flat[key] = np.zeros(shape, np.float32)
  return jax.device_put(traverse_util.unflatten_dict(flat))


def _check_tree(flat: dict[tuple[str, ...], np.ndarray], source: str,
                namer: Any = '/'.join) -> None:
  """Raises JaxgenError unless `flat` has exactly the expected leaves and shapes.

  `namer` spells a Flax key in the message (the torch name, for the converter).
  """
  expected = _expected_shapes()
  missing = sorted(namer(k) for k in expected.keys() - flat.keys())
  extra = sorted(namer(k) for k in flat.keys() - expected.keys())
  bad = sorted(f'{namer(k)} {tuple(v.shape)} (want {expected[k]})'
               for k, v in flat.items() if k in expected and tuple(v.shape) != expected[k])
  if missing or extra or bad:
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing, e.g. {", ".join(missing[:3])}')
    if extra:
      parts.append(f'{len(extra)} unexpected, e.g. {", ".join(extra[:3])}')
    if bad:
      parts.append(f'{len(bad)} with wrong shapes, e.g. {", ".join(bad[:3])}')
    raise JaxgenError(f'{source} is not the pytorch-fid FID Inception ({"; ".join(parts)}); '
                      f'use {WEIGHTS_FILENAME} or its converted .npz.')


_BN_LEAVES = {
    'weight': ('params', 'scale'),
    'bias': ('params', 'bias'),
    'running_mean': ('batch_stats', 'mean'),
    'running_var': ('batch_stats', 'var'),
}


def convert_torch_state_dict(state_dict: dict[str, np.ndarray]) -> Variables:
  """pytorch-fid's FID Inception state_dict -> Flax {'params', 'batch_stats'} (numpy).

  Maps `<module>.conv.weight` [O, I, kh, kw] -> params/<module>/conv/kernel
  [kh, kw, I, O]; `<module>.bn.{weight, bias}` -> params/<module>/bn/{scale, bias};
  `<module>.bn.{running_mean, running_var}` -> batch_stats/<module>/bn/{mean, var};
  `fc.weight` [1008, 2048] -> params/fc/kernel [2048, 1008]; `fc.bias` ->
  params/fc/bias. `<module>` is the dotted torch path, e.g. `Mixed_5b.branch1x1`.
  `num_batches_tracked` counters are ignored. Anything else, anything missing,
  or a wrong shape raises JaxgenError.

  Args:
    state_dict: name -> array (numpy, or anything `np.asarray` takes, e.g. a CPU tensor).
  """
  flat: dict[tuple[str, ...], np.ndarray] = {}
  unknown = []
  for name, value in state_dict.items():
    parts = name.split('.')
    module, leaf = parts[:-1], parts[-1]
    if leaf == 'num_batches_tracked':
      continue  # BN's training-step counter: no effect at inference.
    value = np.asarray(value, np.float32)
    if module == ['fc'] and leaf == 'weight':
      key, value = ('params', 'fc', 'kernel'), value.T  # [out, in] -> [in, out]
    elif module == ['fc'] and leaf == 'bias':
      key = ('params', 'fc', 'bias')
    elif module and module[-1] == 'conv' and leaf == 'weight' and value.ndim == 4:
      key, value = ('params', *module, 'kernel'), value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif module and module[-1] == 'bn' and leaf in _BN_LEAVES:
      collection, flax_leaf = _BN_LEAVES[leaf]
      key = (collection, *module, flax_leaf)
    else:
      unknown.append(name)
      continue
    flat[key] = np.ascontiguousarray(value)
  if unknown:
    raise JaxgenError(f'the state_dict has {len(unknown)} entries that are not in pytorch-fid\'s FID '
                      f'Inception, e.g. {", ".join(sorted(unknown)[:3])}; use {WEIGHTS_FILENAME}.')
  _check_tree(flat, 'the state_dict', namer=torch_name)
  return traverse_util.unflatten_dict(flat)


_FLAX_TO_TORCH_LEAF = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias',
                       'mean': 'running_mean', 'var': 'running_var'}


def torch_name(key: tuple[str, ...]) -> str:
  """The pytorch-fid state_dict name of a Flax variable key, e.g.

  ('params', 'Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'.
  (Used in error messages; shapes differ: kernels are transposed.)
  """
  _, *module, leaf = key
  return '.'.join([*module, _FLAX_TO_TORCH_LEAF.get(leaf, leaf)])


def save_inception_params(path: str, variables: Variables) -> None:
  """Writes variables to an .npz (keys like 'params/Mixed_5b/branch1x1/conv/kernel'), atomically."""
  flat = {'/'.join(k): np.asarray(v, np.float32)
          for k, v in traverse_util.flatten_dict(jax.device_get(variables)).items()}

  def write(tmp: str) -> None:
    with open(tmp, 'wb') as f:
      np.savez(f, **flat)

  atomic_write(path, write)


def _load_npz(path: str) -> Variables:
  with np.load(path) as data:
    flat = {tuple(k.split('/')): data[k] for k in data.files}
  _check_tree(flat, path)
  return traverse_util.unflatten_dict(flat)


def _read_torch_file(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth state_dict with torch (imported here only: torch is no dependency of jaxgen)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise JaxgenError(f'reading {path} needs torch once (pip install torch; the CPU build is enough), '
                      'after which the converted .npz beside it is used instead.') from e
  # weights_only: the file is a plain state_dict, so refuse to unpickle code.
  state_dict = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items()}


def _npz_beside(pth_path: str) -> str:
  return os.path.splitext(pth_path)[0] + '.npz'


def _load_file(path: str) -> Variables:
  """Loads an .npz directly, or a .pth through its cached .npz (converting it the first time)."""
  if path.endswith('.npz'):
    return _load_npz(path)
  npz = _npz_beside(path)
  if os.path.exists(npz) and os.path.getmtime(npz) >= os.path.getmtime(path):
    return _load_npz(npz)
  variables = convert_torch_state_dict(_read_torch_file(path))
  try:
    save_inception_params(npz, variables)
  except OSError:
    pass  # A read-only directory only costs a reconversion next time.
  return variables


def default_cache_dir() -> str:
  """$JAXGEN_CACHE_DIR, by default ~/.cache/jaxgen (see `jaxgen.eval.cache`)."""
  return cache_dir()


def _download(url: str, dest: str) -> None:
  """Downloads url to dest atomically, checking the SHA-256 prefix in the file name."""

  def write(tmp: str) -> None:
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, 'wb') as f:
      while chunk := response.read(1 << 20):
        digest.update(chunk)
        f.write(chunk)
    if not digest.hexdigest().startswith(WEIGHTS_SHA256_PREFIX):
      raise JaxgenError(f'the download of {url} has SHA-256 {digest.hexdigest()[:8]}..., not '
                        f'{WEIGHTS_SHA256_PREFIX}...; retry, or fetch {WEIGHTS_FILENAME} by hand.')

  atomic_write(dest, write)


def load_inception_params(path: str | None = None, *, download: bool = True) -> Variables:
  """pytorch-fid's FID Inception weights as Flax variables (on the default device).

  Where they come from, first match wins:
    1. `path` (a .pth state_dict or a converted .npz);
    2. $JAXGEN_INCEPTION_WEIGHTS (same);
    3. the cache, `default_cache_dir()`: pt_inception-2015-12-05-6726825d.npz,
       else .pth; when neither is there and `download`, the .pth is downloaded
       from pytorch-fid's release (SHA-256 checked) into the cache.
  A .pth is converted once (needs torch) and the result cached as an .npz
  beside it, so later loads need no torch.

  Raises:
    JaxgenError: the file is missing and cannot be downloaded, a named path
      does not exist, or the file is not this network.
  """
  source = 'the path argument'
  if path is None and os.environ.get(WEIGHTS_ENV):
    path, source = os.environ[WEIGHTS_ENV], f'${WEIGHTS_ENV}'
  if path is not None:
    if not os.path.exists(path):
      raise JaxgenError(f'the Inception weights file {path} (from {source}) does not exist; point it at '
                        f'{WEIGHTS_FILENAME} (from {WEIGHTS_URL}) or its converted .npz.')
    return jax.device_put(_load_file(path))

  cache = default_cache_dir()
  pth = os.path.join(cache, WEIGHTS_FILENAME)
  if os.path.exists(_npz_beside(pth)) and not os.path.exists(pth):
    return jax.device_put(_load_npz(_npz_beside(pth)))
  if not os.path.exists(pth):
    why = 'could not be downloaded' if download else 'downloading is off'
    missing = (f'the FID Inception weights {WEIGHTS_FILENAME} are not in {cache} and {why}; '
               f'download {WEIGHTS_URL} into {cache}, or set ${WEIGHTS_ENV} to its path.')
    if not download:
      raise JaxgenError(missing)
    try:
      _download(WEIGHTS_URL, pth)
    except (OSError, http.client.HTTPException) as e:  # offline, DNS, HTTP errors, timeouts, cut-offs
      raise JaxgenError(missing) from e
  return jax.device_put(_load_file(pth))
