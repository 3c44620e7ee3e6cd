"""The FID Inception port: shapes, input handling, resize, the torch converter, the loader.

The torch-free tests run everywhere (batch 2: Inception costs ~6 GFLOP per
image at 299x299). The equivalence test against pytorch-fid itself runs only
where torch and pytorch_fid import (not in CI); see
benchmarks/inception_port_check.py for the same check as a script.
"""

import importlib.util
import os
import pathlib
import sys
import urllib.error

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxgen.errors import JaxgenError
from jaxgen.eval import inception

REPO = pathlib.Path(__file__).resolve().parents[1]
HAS_TORCH = all(importlib.util.find_spec(m) for m in ('torch', 'torchvision', 'pytorch_fid'))

# pytorch-fid's fid_inception_v3() has 94 BasicConv2d (conv weight + 4 BN
# tensors each) and the fc: 472 state_dict entries, ignoring BN step counters.
NUM_TORCH_ENTRIES = 94 * 5 + 2
# Parameter + running-stat count of that network: conv weights and BN
# (4 per channel) plus the 2048x1008 fc, as counted from pytorch-fid's state_dict.
NUM_NUMBERS = 23_885_392


@pytest.fixture(scope='module')
def random_variables():
  return inception.init_inception_params(0)


def _randomize_bn(variables, seed=0):
  """Random BN scale/shift/mean/var (var > 0), so that the test outputs depend on all of them."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(jax.device_get(variables))
  for k, v in flat.items():
    if k[-1] in ('scale', 'var'):
      flat[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    elif k[-1] in ('bias', 'mean') and k[-2] == 'bn':
      flat[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


# ---------------------------------------------------------------- torch-free


def test_shapes_dtypes_and_input_conventions(random_variables):
  variables = _randomize_bn(random_variables)
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  feats, logits = inception.inception_features(variables, u8)
  assert feats.shape == (2, 2048) and feats.dtype == np.float32
  assert logits.shape == (2, 1008) and logits.dtype == np.float32
  assert np.all(np.isfinite(feats)) and np.all(np.isfinite(logits))
  assert np.all(np.asarray(feats) >= 0)  # an average of ReLU outputs
  assert not np.allclose(feats[0], feats[1])
  # jaxgen's float range: x = u8 / 127.5 - 1 is the same image (same compiled network).
  f2, l2 = inception.inception_features(variables, u8.astype(np.float32) / 127.5 - 1)
  np.testing.assert_allclose(f2, feats, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(l2, logits, rtol=1e-4, atol=1e-4)
  # Grayscale is repeated to RGB, like pytorch-fid's Image.convert('RGB').
  gray = u8[..., :1]
  f3, _ = inception.inception_features(variables, gray)
  f4, _ = inception.inception_features(variables, np.repeat(gray, 3, axis=-1))
  np.testing.assert_allclose(f3, f4, rtol=1e-6, atol=1e-6)


def test_bad_images_raise_one_sentence(random_variables):
  for bad in (np.zeros((2, 32, 32, 3), np.float32) + 3.0,  # [0, 255] floats
              np.zeros((2, 32, 32, 4), np.uint8),
              np.zeros((32, 32, 3), np.uint8),
              np.zeros((2, 32, 32, 3), np.int32)):
    with pytest.raises(JaxgenError) as e:
      inception.inception_features(random_variables, bad)
    assert '\n' not in str(e.value) and str(e.value).endswith('.')


def _torch_resize_reference(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """F.interpolate(bilinear, align_corners=False) written out per pixel (float64), NHWC."""
  _, h, w, _ = x.shape
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for oy in range(out_h):
    sy = max((oy + 0.5) * h / out_h - 0.5, 0.0)
    y0 = int(sy)
    y1 = min(y0 + 1, h - 1)
    ly = sy - y0
    for ox in range(out_w):
      sx = max((ox + 0.5) * w / out_w - 0.5, 0.0)
      x0 = int(sx)
      x1 = min(x0 + 1, w - 1)
      lx = sx - x0
      out[:, oy, ox] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                        + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
  return out


@pytest.mark.parametrize('in_hw,out_hw', [((5, 7), (13, 11)), ((13, 11), (5, 7)), ((6, 6), (6, 6)),
                                          ((1, 3), (4, 2))])
def test_resize_matches_torch_formula(in_hw, out_hw):
  x = np.random.default_rng(0).random((2, *in_hw, 3), dtype=np.float32)
  ours = np.asarray(inception.resize_bilinear_torch(x, out_hw))
  # aten computes the source coordinates in float32, hence ~1e-6 from the float64 reference.
  np.testing.assert_allclose(ours, _torch_resize_reference(x, *out_hw), atol=1e-5)


def test_resize_vs_jax_image_resize():
  """Same as jax.image.resize when upsampling (32 -> 299); different when downsampling (> 299).

  jax.image.resize antialiases on the way down (a wider triangle kernel), and
  PyTorch's F.interpolate (pytorch-fid) does not; ours follows PyTorch.
  """
  rng = np.random.default_rng(0)
  up = rng.random((2, 32, 32, 3), dtype=np.float32)
  np.testing.assert_allclose(inception.resize_bilinear_torch(up, (299, 299)),
                             jax.image.resize(up, (2, 299, 299, 3), 'bilinear'), atol=1e-5)
  down = rng.random((1, 512, 512, 3), dtype=np.float32)
  ours = np.asarray(inception.resize_bilinear_torch(down, (299, 299)))
  jir = np.asarray(jax.image.resize(down, (1, 299, 299, 3), 'bilinear'))
  assert np.abs(ours - jir).max() > 0.05
  # Without antialiasing, noise keeps more of its variance: the two are not the same filter.
  assert ours.std() > jir.std() * 1.1
  # Downsampling by a non-integer factor (like 512 -> 299), small enough for the per-pixel loop.
  small = down[:, :64, :64]
  np.testing.assert_allclose(inception.resize_bilinear_torch(small, (37, 37)),
                             _torch_resize_reference(small, 37, 37), atol=1e-5)


def _fake_state_dict(expected):
  """A pytorch-fid-style state_dict built from our own tree: each entry holds a distinct ramp.

  The name and torch layout are spelt out here independently of the converter.
  """
  state_dict, want = {}, {}
  offset = 0.0
  for key, shape in expected.items():
    collection, *module, leaf = key
    n = int(np.prod(shape))
    flax_value = (offset + np.arange(n, dtype=np.float64)).reshape(shape).astype(np.float32)
    offset += n
    if leaf == 'kernel' and len(shape) == 4:  # conv: HWIO -> OIHW
      name, torch_value = 'weight', flax_value.transpose(3, 2, 0, 1)
    elif leaf == 'kernel':  # fc: [in, out] -> [out, in]
      name, torch_value = 'weight', flax_value.T
    else:
      name = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}[leaf]
      torch_value = flax_value
    assert (collection == 'batch_stats') == (name.startswith('running_'))
    state_dict['.'.join([*module, name])] = np.ascontiguousarray(torch_value)
    want[key] = flax_value
  return state_dict, want


def test_converter_fills_every_leaf_exactly_once():
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), np.float32))
  expected = {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}
  state_dict, want = _fake_state_dict(expected)
  assert len(state_dict) == NUM_TORCH_ENTRIES
  assert sum(v.size for v in state_dict.values()) == NUM_NUMBERS
  # Names and torch shapes of the real file, written out by hand.
  for name, shape in {'Conv2d_1a_3x3.conv.weight': (32, 3, 3, 3),
                      'Conv2d_4a_3x3.bn.running_var': (192,),
                      'Mixed_5b.branch_pool.conv.weight': (32, 192, 1, 1),
                      'Mixed_6b.branch7x7_2.conv.weight': (128, 128, 1, 7),
                      'Mixed_6e.branch7x7dbl_2.conv.weight': (192, 192, 7, 1),
                      'Mixed_7a.branch7x7x3_4.conv.weight': (192, 192, 3, 3),
                      'Mixed_7b.branch3x3_2b.conv.weight': (384, 384, 3, 1),
                      'Mixed_7c.branch_pool.conv.weight': (192, 2048, 1, 1),
                      'Mixed_7c.branch3x3dbl_3a.bn.running_mean': (384,),
                      'fc.weight': (1008, 2048), 'fc.bias': (1008,)}.items():
    assert state_dict[name].shape == shape, name
  # BN step counters (torch >= 0.4 adds them) are ignored.
  with_counters = {**state_dict, 'Conv2d_1a_3x3.bn.num_batches_tracked': np.array(7)}
  got = traverse_util.flatten_dict(inception.convert_torch_state_dict(with_counters))
  assert got.keys() == want.keys()
  for key, value in want.items():  # distinct ramps: each leaf got its own entry, transposed right
    np.testing.assert_array_equal(got[key], value, err_msg='/'.join(key))


def test_converter_rejects_wrong_state_dicts():
  shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), np.float32))
  state_dict, _ = _fake_state_dict({k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()})
  missing = {k: v for k, v in state_dict.items() if k != 'Mixed_6c.branch7x7_3.bn.running_mean'}
  extra = {**state_dict, 'AuxLogits.fc.weight': np.zeros((1008, 768), np.float32)}
  wrong = {**state_dict, 'fc.weight': np.zeros((1000, 2048), np.float32)}
  for bad, needle in ((missing, 'Mixed_6c.branch7x7_3.bn.running_mean'), (extra, 'AuxLogits.fc.weight'),
                      (wrong, 'fc.weight')):
    with pytest.raises(JaxgenError) as e:
      inception.convert_torch_state_dict(bad)
    assert needle in str(e.value) and '\n' not in str(e.value)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
  monkeypatch.setenv('JAXGEN_CACHE_DIR', str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def _assert_one_sentence_naming_file(message: str):
  assert inception.WEIGHTS_FILENAME in message
  assert '\n' not in message and message.endswith('.')
  # One sentence: no full stop followed by a space (the file name and URL have dots inside words).
  assert '. ' not in message


def test_missing_weights_offline_is_one_sentence(empty_cache, monkeypatch):
  with pytest.raises(JaxgenError) as e:
    inception.load_inception_params(download=False)
  _assert_one_sentence_naming_file(str(e.value))
  assert str(empty_cache) in str(e.value)

  def offline(*args, **kwargs):
    raise urllib.error.URLError('no network')

  monkeypatch.setattr(inception.urllib.request, 'urlopen', offline)
  with pytest.raises(JaxgenError) as e:
    inception.load_inception_params()
  _assert_one_sentence_naming_file(str(e.value))
  assert not os.path.exists(empty_cache / inception.WEIGHTS_FILENAME)  # no partial file left


def test_missing_explicit_path(empty_cache, monkeypatch, tmp_path):
  monkeypatch.setenv(inception.WEIGHTS_ENV, str(tmp_path / 'nope.pth'))
  with pytest.raises(JaxgenError) as e:
    inception.load_inception_params()
  assert 'nope.pth' in str(e.value) and inception.WEIGHTS_ENV in str(e.value)
  _assert_one_sentence_naming_file(str(e.value))


def test_npz_round_trip_and_cache(random_variables, empty_cache, monkeypatch, tmp_path):
  path = str(tmp_path / 'inception.npz')
  inception.save_inception_params(path, random_variables)
  want = traverse_util.flatten_dict(jax.device_get(random_variables))

  def assert_loaded(variables):
    got = traverse_util.flatten_dict(jax.device_get(variables))
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])

  assert_loaded(inception.load_inception_params(path))
  monkeypatch.setenv(inception.WEIGHTS_ENV, path)
  assert_loaded(inception.load_inception_params())
  # The converted cache file alone (no .pth, no torch) is found in the cache dir.
  monkeypatch.delenv(inception.WEIGHTS_ENV)
  cached = empty_cache / inception.WEIGHTS_FILENAME.replace('.pth', '.npz')
  inception.save_inception_params(str(cached), random_variables)
  assert_loaded(inception.load_inception_params(download=False))


def test_pth_without_torch_says_install_torch(empty_cache, monkeypatch, tmp_path):
  pth = tmp_path / inception.WEIGHTS_FILENAME
  pth.write_bytes(b'not read')
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(JaxgenError) as e:
    inception.load_inception_params(str(pth))
  assert 'torch' in str(e.value) and '\n' not in str(e.value) and '. ' not in str(e.value)


# ---------------------------------------------------------------- against pytorch-fid

needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason='needs torch, torchvision and pytorch_fid (not jaxgen dependencies)')


@pytest.fixture(scope='module')
def pytorch_fid_random():
  """(check module, wrapper, net, numpy state_dict) of pytorch-fid's network with random weights."""
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  from benchmarks import inception_port_check as check  # pylint: disable=g-import-not-at-top
  wrapper, net = check.build_pytorch_fid(seed=0)
  state_dict = {k: v.numpy() for k, v in net.state_dict().items()}
  return check, wrapper, net, state_dict


@needs_torch
def test_matches_pytorch_fid_with_random_weights(pytorch_fid_random):
  import torch  # pylint: disable=g-import-not-at-top
  check, wrapper, net, state_dict = pytorch_fid_random
  entries = {k: v for k, v in state_dict.items() if 'num_batches_tracked' not in k}
  assert len(entries) == NUM_TORCH_ENTRIES
  assert sum(v.size for v in entries.values()) == NUM_NUMBERS
  variables = jax.device_put(inception.convert_torch_state_dict(state_dict))
  for size, (ours, _) in check.resize_check().items():
    assert ours < 1e-5, size
  rng = np.random.default_rng(1)
  for s in (32, 299, 512):
    images = rng.integers(0, 256, (4, s, s, 3), dtype=np.uint8)
    feats, logits = inception.inception_features(variables, images)
    ref_f, ref_l = check.torch_forward(wrapper, net, images)
    f64_f, f64_l = check.torch_forward(wrapper, net, images, dtype=torch.float64)
    for ours, ref, ref64 in ((feats, ref_f, f64_f), (logits, ref_l, f64_l)):
      d = check.diff_stats(ours, ref)
      assert d['max_rel'] < 1e-4 and d['rel_l2'] < 1e-4, (s, d)
      # Against float64 torch, our float32 error is that of float32 torch.
      ours64, torch64 = check.diff_stats(ours, ref64)['max_abs'], check.diff_stats(ref, ref64)['max_abs']
      assert ours64 < 3 * torch64 + 1e-6, (s, ours64, torch64)


@needs_torch
def test_load_pth_converts_once_then_needs_no_torch(pytorch_fid_random, empty_cache, monkeypatch):
  import torch  # pylint: disable=g-import-not-at-top
  _, _, net, state_dict = pytorch_fid_random
  empty_cache.mkdir(parents=True)
  pth = empty_cache / inception.WEIGHTS_FILENAME
  torch.save(net.state_dict(), pth)
  first = traverse_util.flatten_dict(jax.device_get(inception.load_inception_params(download=False)))
  assert (empty_cache / inception.WEIGHTS_FILENAME.replace('.pth', '.npz')).exists()
  monkeypatch.setitem(sys.modules, 'torch', None)  # the cached .npz is used from now on
  again = traverse_util.flatten_dict(jax.device_get(inception.load_inception_params(download=False)))
  want = traverse_util.flatten_dict(inception.convert_torch_state_dict(state_dict))
  for k in want:
    np.testing.assert_array_equal(first[k], want[k])
    np.testing.assert_array_equal(again[k], want[k])
