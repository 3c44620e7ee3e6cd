"""Masked convolutions, PixelCNN and the gated PixelCNN: masks by hand, the autoregressive
property by gradients (with the channel order inside a pixel), and the cached per-pixel /
per-row evaluation against the whole-image one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.autoregressive.pixelcnn import GatedPixelCNN, PixelCNN
from jaxgen.nn import masked_conv
from jaxgen.nn.masked_conv import WindowConv, causal_mask

H, W = 5, 6


def test_causal_mask_by_hand():
  # 2x3 window anchored at (1, 1): the row above and the pixel to the left are visible.
  m = causal_mask((2, 3), (1, 1), 3, 3, 'A', groups=3)
  assert (m[0] == 1).all() and (m[1, 0] == 1).all() and (m[1, 2] == 0).all()
  np.testing.assert_array_equal(m[1, 1], [[0, 1, 1], [0, 0, 1], [0, 0, 0]])  # in R G B -> out R G B
  mb = causal_mask((2, 3), (1, 1), 3, 3, 'B', groups=3)
  np.testing.assert_array_equal(mb[1, 1], [[1, 1, 1], [0, 1, 1], [0, 0, 1]])
  # One group (grayscale): mask A hides the anchor, B shows it.
  assert causal_mask((1, 1), (0, 0), 2, 2, 'A').sum() == 0
  assert causal_mask((1, 1), (0, 0), 2, 2, 'B').sum() == 4
  # Groups are f % C: features 0 and 3 are R when C = 3.
  m6 = causal_mask((1, 1), (0, 0), 6, 6, 'B', groups=3)[0, 0]
  assert m6[3, 0] == 1 and m6[1, 3] == 0


def test_window_conv_matches_its_formula():
  """out[i, j] = b + sum x[i + dy - top, j + dx - left] K[dy, dx], computed by loops."""
  conv = WindowConv(2, 3, (2, 3), (1, 2))
  x = jax.random.normal(jax.random.PRNGKey(0), (1, H, W, 2))
  params = conv.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda a: a + 0.5, params)
  out = np.asarray(conv.apply(params, x))
  k, b = np.asarray(params['params']['kernel']), np.asarray(params['params']['bias'])
  xn = np.asarray(x)[0]
  want = np.zeros((H, W, 3)) + b
  for i in range(H):
    for j in range(W):
      for dy in range(2):
        for dx in range(3):
          y, z = i + dy - 1, j + dx - 2
          if 0 <= y < H and 0 <= z < W:
            want[i, j] += xn[y, z] @ k[dy, dx]
  np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
  pad = (1, 2, 0)
  cache = masked_conv.pad_cache(x, pad)
  np.testing.assert_allclose(conv.apply(params, cache, 3, 4, pad, method='at')[0], want[3, 4],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(conv.apply(params, cache, 2, W, pad, method='row')[0], want[2],
                             rtol=1e-5, atol=1e-5)


def _net(cls, channels, values, classes=0):
  kw = dict(num_layers=2) if cls is PixelCNN else dict(num_layers=3)
  return cls(channels=channels, values=values, features=2 * channels * 3, head=12,
             num_classes=classes, **kw)


@functools.partial(jax.jit, static_argnums=0)  # one compiled program, not an eager op per leaf
def _params(net, x, label):
  params = net.init(jax.random.PRNGKey(0), x, label)
  # Non-zero everywhere (biases and class embeddings start at zero) so that no
  # dependence is hidden by a zero weight.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


def _jacobian(net, params, x):
  """|d out[i, j, c] / d x[i', j', c']| summed over the K values: [H, W, C, H, W, C]."""
  jac = jax.jit(jax.jacrev(lambda x: net.apply(params, x[None])[0].sum(-1)))(x[0])
  return np.abs(np.asarray(jac))


@pytest.mark.parametrize('cls,channels', [(PixelCNN, 3), (GatedPixelCNN, 3), (GatedPixelCNN, 1)])
def test_autoregressive_property_by_gradients(cls, channels):
  """Output (i, j, c) depends on no input at a later pixel, nor on channels >= c of its own
  pixel; and (except the very first sub-pixel) on something earlier."""
  net = _net(cls, channels, values=2)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, H, W, channels), minval=-1, maxval=1)
  jac = _jacobian(net, _params(net, x, None), x)
  order = np.arange(H * W).reshape(H, W)
  for i in range(H):
    for j in range(W):
      for c in range(channels):
        grad = jac[i, j, c]  # [H, W, C]
        assert grad[order > order[i, j]].max(initial=0.0) == 0.0, (i, j, c)
        assert grad[i, j, c:].max() == 0.0, (i, j, c)
        if (i, j, c) != (0, 0, 0):
          before = np.concatenate([grad[order < order[i, j]].ravel(), grad[i, j, :c]])
          assert before.max() > 0, (i, j, c)


def test_gated_stack_has_no_blind_spot():
  """The gated network's output at (4, 3) sees the whole row above, right edge included, and
  the current row up to the pixel: no blind spot (with 4 layers of 3-wide windows)."""
  net = GatedPixelCNN(channels=1, values=1, features=4, head=4, num_layers=4, kernel=3, kernel_rest=3)
  x = jnp.zeros((1, 7, 7, 1))
  grad = _jacobian(net, _params(net, x, None), x)[4, 3, 0, ..., 0]  # [H, W]
  assert (grad[:4] > 0).all()  # rows 0-3, every column
  assert (grad[4, :3] > 0).all() and (grad[4, 3:] == 0).all() and (grad[5:] == 0).all()


# PixelCNN's per-pixel path is also checked by the sampler test (cached == naive).
@pytest.mark.parametrize('cls,channels,values,classes', [(GatedPixelCNN, 3, 4, 0)])
def test_cached_evaluation_equals_whole_image(cls, channels, values, classes):
  net = _net(cls, channels, values, classes)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, H, W, channels), minval=-1, maxval=1)
  label = jnp.array([0, 2]) if classes else None
  params = _params(net, x, label)
  full = np.asarray(net.apply(params, x, label))  # [B, H, W, C, K]
  cache = net.apply(params, 2, H, W, method='init_cache')
  at_pixel = jax.jit(lambda c, i, j: net.apply(params, c, i, j, label, method='at_pixel'))
  for i in range(H):
    cache = net.apply(params, cache, i, label, method='start_row')
    for j in range(W):
      for c in range(channels):  # channels < c written, the rest still zero
        known = jnp.where(jnp.arange(channels) < c, x[:, i, j], 0.0)
        cache['image'] = masked_conv.write_pixel(cache['image'], known, i, j, net.pad)
        logits, cache = at_pixel(cache, i, j)
        np.testing.assert_allclose(logits[:, c], full[:, i, j, c], rtol=1e-4, atol=1e-4)
      cache['image'] = masked_conv.write_pixel(cache['image'], x[:, i, j], i, j, net.pad)


def test_class_conditioning_changes_the_output():
  net = _net(GatedPixelCNN, 1, 1, classes=3)
  x = jnp.zeros((2, H, W, 1))
  params = _params(net, x, jnp.array([0, 0]))
  apply = jax.jit(net.apply)
  a = apply(params, x, jnp.array([0, 0]))
  b = apply(params, x, jnp.array([0, 1]))
  np.testing.assert_array_equal(a[0], b[0])
  assert np.abs(np.asarray(a[1] - b[1])).max() > 1e-3
