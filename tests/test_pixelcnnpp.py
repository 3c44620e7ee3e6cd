"""PixelCNN++: output shapes, the autoregressive property checked by exact gradients, class
conditioning, dropout, and the refusals.

Tiny models (ch=8, at most one gated resnet per stage, 2 mixture components). On a 2-core CPU
compiling is what they cost, so: `init` is only traced (the parameters are numpy draws), each
model's forward pass and input gradients compile as one program, with `quick_jit`, and the
module runs with the non-partitionable threefry, as in test_vae."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.autoregressive.pixelcnnpp import PixelCNNPP
from jaxgen.errors import JaxgenError
from jaxgen.nn.distributions import discretized_logistic_mixture_log_prob

LEVELS = np.asarray(-1.0 + 2.0 * np.arange(256) / 255.0, np.float32)


@pytest.fixture(scope='module', autouse=True)
def _quick_prng_compiles():
  partitionable = getattr(jax, 'threefry_partitionable', None)
  with partitionable(False) if partitionable is not None else contextlib.nullcontext():
    yield


def quick_jit(fun, **kwargs):
  """jax.jit, compiled without LLVM's optimisations: for programs that run once or twice."""
  return jax.jit(fun, compiler_options={'xla_backend_optimization_level': 0}, **kwargs)


def random_images(shape, seed=0) -> jax.Array:
  return jnp.asarray(LEVELS[np.random.default_rng(seed).integers(0, 256, shape)])


def random_variables(model: PixelCNNPP, images: jax.Array, labels: jax.Array | None,
                     seed: int = 0) -> dict:
  """Variables of `model`'s structure (from `init`, traced only) filled with numpy draws: kernels
  and embeddings N(0, 1 / fan-in), biases N(0, 0.1^2) so that no path starts at exactly zero.
  Compiling `init` (a threefry draw per parameter) would cost more than all the tests."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images, labels)
  rng = np.random.default_rng(seed)

  def draw(leaf):
    scale = 0.1 if len(leaf.shape) == 1 else 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree.map(draw, shapes)


def run_model(model: PixelCNNPP, variables: dict, images: jax.Array, labels: jax.Array | None,
              pixels: list[tuple[int, int]]) -> dict:
  """The outputs and input gradients the tests look at, as one compiled program.

  'out': the eval pass (train=False);
  'grads' [P, B, H, W, C]: d(sum of the output at pixel p of image 0) / d(images) for each
  of the pixels p.
  """
  pixels_i = jnp.asarray([p[0] for p in pixels])
  pixels_j = jnp.asarray([p[1] for p in pixels])

  @quick_jit
  def run(variables, images, labels):
    out, vjp = jax.vjp(lambda x: model.apply(variables, x, labels), images)

    def grad_at(i, j):
      return vjp(jnp.zeros_like(out).at[0, i, j].set(1.0))[0]

    return {'out': out, 'grads': jax.vmap(grad_at)(pixels_i, pixels_j),
            'log_prob': discretized_logistic_mixture_log_prob(images, out, model.num_mixtures)}

  return run(variables, images, labels)


# Pixels of a 28 x 28 and a 32 x 32 image: the first, the first row, the first column, the
# last, the ends of rows, pixels on and off the stride-2 grid.
GRAY_PIXELS = [(0, 0), (0, 5), (0, 27), (5, 0), (1, 1), (2, 3), (13, 14), (14, 27), (27, 27)]
RGB_PIXELS = [(0, 0), (0, 1), (0, 31), (1, 0), (7, 9), (16, 16), (17, 31), (31, 0), (31, 31)]


@pytest.fixture(scope='module')
def gray():
  """A class-conditional model on 28 x 28 x 1 (MNIST-like). The batch is [x0, x1, x0] with
  labels [3, 7, 4]: the same image under two labels."""
  model = PixelCNNPP(ch=8, num_resnets=1, num_mixtures=2, dropout=0.5, num_classes=10)
  x0, x1 = random_images((2, 28, 28, 1), 1)
  images, labels = jnp.stack([x0, x1, x0]), jnp.asarray([3, 7, 4], jnp.int32)
  variables = random_variables(model, images, labels)
  result = run_model(model, variables, images, labels, GRAY_PIXELS)
  return model, variables, images, labels, result, GRAY_PIXELS


@pytest.fixture(scope='module')
def rgb():
  """An unconditional model on 32 x 32 x 3 (CIFAR-like), batch of 2."""
  model = PixelCNNPP(ch=8, num_resnets=1, num_mixtures=2, dropout=0.5)
  images = random_images((2, 32, 32, 3), 2)
  variables = random_variables(model, images, None, seed=1)
  result = run_model(model, variables, images, None, RGB_PIXELS)
  return model, variables, images, None, result, RGB_PIXELS


@pytest.mark.parametrize('name, num_params', [('gray', 2 * (1 + 2)), ('rgb', 2 * (1 + 6 + 3))])
def test_output_shape_dtype_and_finiteness(name, num_params, request):
  model, variables, images, _, result, _ = request.getfixturevalue(name)
  b, h, w, _ = images.shape
  out = result['out']
  assert out.shape == (b, h, w, num_params) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  assert np.abs(np.asarray(out)).max() > 0
  log_prob = np.asarray(result['log_prob'])
  assert log_prob.shape == (b, h, w) and np.isfinite(log_prob).all() and (log_prob <= 1e-6).all()
  # Parameters only (no batch statistics), all float32.
  assert set(variables) == {'params'}
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


@pytest.mark.parametrize('name', ['gray', 'rgb'])
def test_each_output_sees_only_the_pixels_before_it_in_raster_order(name, request):
  _, _, images, _, result, pixels = request.getfixturevalue(name)
  _, h, w, _ = images.shape
  grads = np.asarray(result['grads'])  # [P, B, H, W, C]
  assert grads.shape == (len(pixels), *images.shape)
  for (i, j), grad in zip(pixels, grads):
    # The other images of the batch never matter.
    assert not grad[1:].any(), (i, j)
    seen = np.abs(grad[0]).sum(-1).reshape(-1)  # [H W] in raster order, all channels
    k = i * w + j
    later = np.flatnonzero(seen[k:]) + k
    leaks = [divmod(int(p), w) for p in later[:5]]
    assert later.size == 0, f'the output at {(i, j)} depends on the later pixels {leaks}'
    if (i, j) != (0, 0):
      assert seen[:k].any(), (i, j)
    # The two streams reach the nearest pixels above (u) and to the left (ul).
    if i > 0:
      assert seen[(i - 1) * w + j] > 0, ('above', i, j)
    if j > 0:
      assert seen[k - 1] > 0, ('left', i, j)


def test_class_conditioning_changes_the_output(gray):
  out = np.asarray(gray[4]['out'])
  # The same image under labels 3 and 4 (batch entries 0 and 2): different at every pixel (the
  # bias enters every gated resnet, and the first pixel has no other input).
  assert (np.abs(out[0] - out[2]).max(-1) > 1e-3).all()


def test_dropout_only_with_train():
  # A smaller model of its own (no down-pass resnets, 8 x 8), so that it compiles quickly.
  model = PixelCNNPP(ch=8, num_resnets=0, num_mixtures=2, dropout=0.5, num_classes=10)
  images, labels = random_images((2, 8, 8, 3), 3), jnp.asarray([1, 2], jnp.int32)
  variables = random_variables(model, images, labels, seed=2)

  @quick_jit
  def run(variables, key_a, key_b):
    apply = lambda key, train: model.apply(variables, images, labels, train=train,
                                           rngs={'dropout': key})
    return apply(key_a, False), apply(key_b, False), apply(key_a, True), apply(key_b, True)

  key_a, key_b = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  eval_a, eval_b, train_a, train_b = run(variables, key_a, key_b)
  np.testing.assert_array_equal(eval_a, eval_b)  # train=False: the dropout rng is not used
  assert np.abs(np.asarray(train_a - eval_a)).max() > 1e-2
  assert np.abs(np.asarray(train_a - train_b)).max() > 1e-2
  assert np.isfinite(np.asarray(train_a)).all() and np.isfinite(np.asarray(train_b)).all()
  # Deterministic given the rng.
  np.testing.assert_array_equal(run(variables, key_a, key_b)[2], train_a)


def test_refusals_in_one_sentence():
  images = jnp.zeros((1, 28, 28, 1))
  cases = [
      (PixelCNNPP(ch=4, num_resnets=0, num_mixtures=1), jnp.zeros((1, 30, 28, 1)), None,
       r'divisible by 4, got 30x28'),
      (PixelCNNPP(ch=4, num_resnets=0, num_mixtures=1), jnp.zeros((28, 28, 1)), None,
       r'takes images \[B, H, W, C\], got shape \(28, 28, 1\)'),
      (PixelCNNPP(ch=4, num_resnets=0, num_mixtures=1, num_classes=10), images, None,
       r'num_classes=10, so pass labels of shape \(1,\) int32, got None'),
      (PixelCNNPP(ch=4, num_resnets=0, num_mixtures=1, num_classes=10), images,
       jnp.zeros((1, 1), jnp.int32), r'got \(1, 1\)'),
      (PixelCNNPP(ch=4, num_resnets=0, num_mixtures=0), images, None, r'num_mixtures >= 1'),
  ]
  for model, x, labels, match in cases:
    with pytest.raises(JaxgenError, match=match) as e:
      jax.eval_shape(model.init, jax.random.PRNGKey(0), x, labels)
    assert '\n' not in str(e.value) and str(e.value).endswith('.')
