"""The DDPM UNet: the paper's parameter count, shapes, conditioning, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.diffusion.unet import UNet, UNetConfig
from jaxgen.nn.embeddings import timestep_embedding


def count_params(cfg, shape=(32, 32, 3)):
  unet = UNet(cfg)
  params = jax.eval_shape(lambda: unet.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)),
                                            jnp.zeros((1,), jnp.int32)))
  return sum(x.size for x in jax.tree.leaves(params))


def test_paper_cifar10_unet_has_35_7m_parameters():
  # Ho et al. 2020's CIFAR-10 network; the reference implementation counts 35,746,307.
  assert count_params(UNetConfig()) == 35_746_307


def test_timestep_embedding_closed_form():
  t = jnp.array([0, 1, 10, 999])
  emb = np.asarray(timestep_embedding(t, 8))
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)
  want = np.concatenate([np.sin(np.outer([0, 1, 10, 999], freqs)),
                         np.cos(np.outer([0, 1, 10, 999], freqs))], axis=1)
  np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)


TINY = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)


@pytest.mark.parametrize('num_classes', [0, 10])
def test_shapes_and_dropout(num_classes):
  cfg = UNetConfig(**{**TINY.__dict__, 'num_classes': num_classes})
  unet = UNet(cfg)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  t = jnp.array([3, 500])
  y = jnp.array([1, 2]) if num_classes else None
  # Compiled, not op by op: an eager UNet compiles every distinct op once (most of this test's time).
  params = jax.jit(unet.init)(jax.random.PRNGKey(1), x, t, y)['params']
  # The last layer starts at zero (identity residual branches), so perturb params.
  params = jax.jit(lambda ps: jax.tree.map(lambda p: p + 0.01, ps))(params)  # one program
  apply = jax.jit(lambda p, x, t, y, train=False, rng=None: unet.apply(
      {'params': p}, x, t, y, train=train, rngs={'dropout': rng} if train else None),
      static_argnames='train')
  out = apply(params, x, t, y)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  again = apply(params, x, t, y)
  np.testing.assert_array_equal(out, again)  # eval mode is deterministic
  train = apply(params, x, t, y, train=True, rng=jax.random.PRNGKey(2))
  assert not np.allclose(out, train)  # dropout is on in training
  if num_classes:
    other = apply(params, x, t, jnp.array([5, 6]))
    assert not np.allclose(out, other)  # labels change the prediction


def test_bfloat16_compute_keeps_float32_params():
  cfg = UNetConfig(**{**TINY.__dict__, 'dtype': 'bfloat16'})
  unet = UNet(cfg)
  x = jnp.ones((1, 8, 8, 3))
  params = jax.jit(unet.init)(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))['params']
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  out = jax.jit(lambda p: unet.apply({'params': p}, x, jnp.zeros((1,), jnp.int32)))(params)
  assert out.dtype == jnp.float32


def test_image_size_must_divide():
  unet = UNet(TINY)
  with pytest.raises(ValueError, match='divisible'):
    unet.init(jax.random.PRNGKey(0), jnp.ones((1, 7, 7, 3)), jnp.zeros((1,), jnp.int32))


def test_upsample_is_nearest_neighbour_resize():
  from jaxgen.nn.blocks import upsample_nearest_2x
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 3))
  want = jax.image.resize(x, (2, 10, 14, 3), method='nearest')
  np.testing.assert_array_equal(upsample_nearest_2x(x), want)
  np.testing.assert_array_equal(upsample_nearest_2x(x)[:, 1::2, ::2], x)


def test_upsample_conv_is_a_convolution_of_the_nearest_upsampling():
  # Values and both gradients of the transposed form against the 3x3 convolution of the
  # up-sampled input; odd sizes and I != O, so a mixed-up axis or boundary would show.
  from jaxgen.nn.blocks import upsample_nearest_2x, upsample_nearest_conv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 3))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (2, 10, 14, 4))

  def ref(x, kernel):
    return jax.lax.conv_general_dilated(upsample_nearest_2x(x), kernel, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  want, want_vjp = jax.vjp(ref, x, kernel)
  got, got_vjp = jax.vjp(upsample_nearest_conv, x, kernel)
  assert got.shape == (2, 10, 14, 4)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(got_vjp(cotangent), want_vjp(cotangent)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
  half = upsample_nearest_conv(x.astype(jnp.bfloat16), kernel)
  assert half.dtype == jnp.bfloat16
  np.testing.assert_allclose(half.astype(jnp.float32), want, rtol=0.05, atol=0.1)


def test_upsample_conv_is_transposed_on_gpus_only():
  from jaxgen.nn.blocks import upsample_conv
  x = jax.ShapeDtypeStruct((1, 4, 4, 2), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 2, 2), jnp.float32)
  for platform, transposed in [('cuda', True), ('cpu', False), ('tpu', False)]:
    text = jax.jit(upsample_conv).trace(x, kernel).lower(lowering_platforms=(platform,)).as_text()
    assert ('lhs_dilate = [2, 2]' in text) == transposed, platform


def test_upsample_keeps_the_parameters_of_a_conv_after_the_upsampling():
  import flax.linen as nn
  from jaxgen.nn.blocks import Upsample, default_init, upsample_nearest_2x

  class Before(nn.Module):  # the module as it was written first
    @nn.compact
    def __call__(self, x):
      return nn.Conv(x.shape[-1], (3, 3), kernel_init=default_init)(upsample_nearest_2x(x))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 6))
  params = Before().init(jax.random.PRNGKey(1), x)
  ours = Upsample().init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(np.shape, ours) == jax.tree.map(np.shape, params)
  jax.tree.map(np.testing.assert_array_equal, ours, params)
  params = jax.tree.map(lambda a: a + 0.1, params)  # a bias that is not zero
  want = Before().apply(params, x)
  np.testing.assert_allclose(Upsample().apply(params, x), want, rtol=1e-5, atol=1e-5)
  y, bias = Upsample(bias_apart=True).apply(params, x)
  np.testing.assert_allclose(y + bias, want, rtol=1e-5, atol=1e-5)


def test_attention_block_is_single_head_softmax_attention():
  from jaxgen.nn.blocks import AttnBlock
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  block = AttnBlock()
  params = block.init(jax.random.PRNGKey(1), x)
  # proj_out starts at zero (identity block); give it and the biases values so the test sees them.
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
  p = params['params']
  h = np.asarray(x, np.float64).reshape(2, 16, 32)
  mean = h.reshape(2, 16, 32, 1).mean(axis=(1, 3), keepdims=True)  # 32 groups of one channel
  var = h.reshape(2, 16, 32, 1).var(axis=(1, 3), keepdims=True)
  g = ((h.reshape(2, 16, 32, 1) - mean) / np.sqrt(var + 1e-6)).reshape(2, 16, 32)
  g = g * np.asarray(p['GroupNorm_0']['scale']) + np.asarray(p['GroupNorm_0']['bias'])
  kernel, bias = np.asarray(p['qkv']['kernel']), np.asarray(p['qkv']['bias'])
  q, k, v = (g @ kernel[:, i] + bias[i] for i in range(3))
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(32)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = (weights @ v) @ np.asarray(p['proj_out']['kernel']) + np.asarray(p['proj_out']['bias'])
  want = h + out
  np.testing.assert_allclose(np.asarray(block.apply(params, x)).reshape(2, 16, 32), want,
                             rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- speed options: the same function


@pytest.mark.parametrize('silu', [False, True])
def test_group_norm_matches_flax_forward_and_gradients(silu):
  import flax.linen as nn
  from jaxgen.nn.norm import GroupNorm
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 6, 64)) * 2 + 0.7  # groups of 2 channels
  w = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  ref, ours = nn.GroupNorm(num_groups=32, epsilon=1e-6), GroupNorm(silu=silu)
  params = ref.init(jax.random.PRNGKey(1), x)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
  assert jax.tree.structure(params) == jax.tree.structure(ours.init(jax.random.PRNGKey(1), x))

  def loss(module, act):
    def f(p, x):
      y = module.apply(p, x)
      return jnp.sum((nn.silu(y) if act else y) * w)
    return jax.value_and_grad(f, argnums=(0, 1))(params, x)
  (want, (want_p, want_x)), (got, (got_p, got_x)) = loss(ref, silu), loss(ours, False)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got_x, want_x, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(got_p), jax.tree.leaves(want_p)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_group_norm_shift_is_the_norm_of_the_sum_with_its_gradient():
  """GroupNorm(x, shift) == flax GroupNorm(x + shift at every position), values and all gradients."""
  import flax.linen as nn
  from jaxgen.nn.norm import GroupNorm
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 6, 64)) * 2 + 0.7
  shift = jax.random.normal(jax.random.PRNGKey(5), (3, 64)) * 1.5
  w = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  ref, ours = nn.GroupNorm(num_groups=32, epsilon=1e-6), GroupNorm(silu=True)
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.PRNGKey(2), a.shape),
                        ref.init(jax.random.PRNGKey(1), x))

  def want_fn(p, x, shift):
    return jnp.sum(nn.silu(ref.apply(p, x + shift[:, None, None, :])) * w)

  def got_fn(p, x, shift):
    return jnp.sum(ours.apply(p, x, shift) * w)
  want, want_g = jax.value_and_grad(want_fn, argnums=(0, 1, 2))(params, x, shift)
  got, got_g = jax.value_and_grad(got_fn, argnums=(0, 1, 2))(params, x, shift)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'shift must have shape \(3, 64\)'):
    ours.apply(params, x, shift[:, :32])


def test_group_norm_of_parts_is_the_norm_of_their_concatenation():
  """Parts of 12 and 20 channels in groups of 8 (one group straddles them): the same output,
  and the gradients of the parts, shift, scale and bias, as the norm of the concatenation."""
  from jaxgen.nn.norm import GroupNorm
  a = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 12)) * 2 + 0.5
  b = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 5, 20)) - 0.3
  shift = jax.random.normal(jax.random.PRNGKey(2), (2, 32))
  w = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 5, 32))
  norm = GroupNorm(num_groups=4, silu=True)
  params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.PRNGKey(4), p.shape),
                        norm.init(jax.random.PRNGKey(5), jnp.concatenate([a, b], -1)))

  def loss(p, a, b, shift, split, concat=True):
    x = (a, b) if split else jnp.concatenate([a, b], -1)
    out = norm.apply(p, x, shift, concat=concat)
    return jnp.sum((out if concat else jnp.concatenate(out, -1)) * w)
  want, want_g = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(params, a, b, shift, False)
  # The parts' normalisations given apart (concat=False): the same values and gradients.
  for concat in (True, False):
    got, got_g = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(params, a, b, shift, True, concat)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  apart = norm.apply(params, (a, b), shift, concat=False)
  assert [o.shape for o in apart] == [a.shape, b.shape]
  with pytest.raises(ValueError, match='agree in all but their channels'):
    norm.apply(params, (a, b[:, :2]))


def test_qkv_projection_is_dense_general_with_the_same_init():
  import flax.linen as nn
  from jaxgen.nn.blocks import QKVProjection, default_init
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 24))
  ref, ours = nn.DenseGeneral((3, 16), kernel_init=default_init), QKVProjection(16)
  params = ref.init(jax.random.PRNGKey(1), x)
  # The same parameter tree and initial values: a checkpoint does not see the difference.
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.PRNGKey(1), x), params)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
  want = ref.apply(params, x)  # [2, 5, 3, 16]
  for j, got in enumerate(ours.apply(params, x)):
    np.testing.assert_allclose(got, want[:, :, j], rtol=1e-5, atol=1e-6)


def test_conv_bias_apart_is_conv_with_the_same_init():
  import flax.linen as nn
  from jaxgen.nn.blocks import ConvBiasApart, default_init
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 8))
  ref, ours = nn.Conv(16, (3, 3), kernel_init=default_init), ConvBiasApart(16)
  params = ref.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.PRNGKey(1), x), params)
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(2), a.shape), params)
  y, bias = ours.apply(params, x)
  np.testing.assert_allclose(y + bias, ref.apply(params, x), rtol=1e-5, atol=1e-5)


def test_parts_dense_is_dense_on_the_concatenation():
  import flax.linen as nn
  from jaxgen.nn.blocks import PartsDense, default_init
  a = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 12))
  b = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 20))
  dense = nn.Dense(8, kernel_init=default_init)
  params = dense.init(jax.random.PRNGKey(2), jnp.concatenate([a, b], -1))
  params = jax.tree.map(lambda p: p + 0.1, params)
  parts = PartsDense(8)
  assert jax.tree.map(jnp.shape, parts.init(jax.random.PRNGKey(2), (a, b))) == jax.tree.map(jnp.shape, params)
  want = dense.apply(params, jnp.concatenate([a, b], -1))
  np.testing.assert_allclose(parts.apply(params, (a, b)), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(parts.apply(params, (jnp.concatenate([a, b], -1),)), want, rtol=1e-6)
  shift = jax.random.normal(jax.random.PRNGKey(3), (32,))  # folded into the bias
  np.testing.assert_allclose(parts.apply(params, (a, b), shift=shift),
                             dense.apply(params, jnp.concatenate([a, b], -1) + shift),
                             rtol=1e-5, atol=1e-5)


def test_res_block_split_conv_and_in_shift_are_the_block_of_the_shifted_concatenation():
  """ResBlock((a, b), in_shift=s) with its first convolution split over the parts is the
  block of concat(a, b) + s: values and the gradients of the parameters, parts and shift,
  with a skip projection (48 + 16 -> 32 channels) and without one (48 + 16 -> 64)."""
  from jaxgen.nn.blocks import ResBlock
  a = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 48))
  b = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 16))
  emb = jax.random.normal(jax.random.PRNGKey(2), (2, 16))
  in_shift = jax.random.normal(jax.random.PRNGKey(3), (64,))
  for out_ch in (32, 64):
    ref, ours = ResBlock(out_ch), ResBlock(out_ch, split_conv=True)
    params = ref.init(jax.random.PRNGKey(4), jnp.concatenate([a, b], -1), emb, False)
    assert jax.tree.structure(ours.init(jax.random.PRNGKey(4), (a, b), emb, False,
                                        in_shift)) == jax.tree.structure(params)
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(5), p.shape),
                          params)
    w = jax.random.normal(jax.random.PRNGKey(6), (2, 4, 4, out_ch))

    def loss(p, a, b, s, block, split):
      x = (a, b) if split else jnp.concatenate([a, b], -1) + s
      out = block.apply(p, x, emb, False, s if split else None)
      return jnp.sum(out * w)
    args = (params, a, b, in_shift)
    grad = lambda block, split: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda *args: loss(*args, block, split), argnums=(0, 1, 2, 3)))
    want, want_g = grad(ref, False)(*args)
    got, got_g = grad(ours, True)(*args)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match=r'in_shift must have shape \(64,\)'):
    ours.apply(params, (a, b), emb, False, in_shift[:8])


def test_split_skip_with_up_sampling_computes_the_same_function():
  """Two levels: the up-sampling's bias is added inside the next block and that block, which
  narrows 64 + 32 channels to 32, splits its first convolution (also under remat); against
  the concatenating UNet (split_skip=False) with the same parameters."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  t = jnp.array([3, 500])
  cfg = {**TINY.__dict__, 'dropout': 0.0}
  unet = UNet(UNetConfig(**cfg))
  params = jax.jit(unet.init)(jax.random.PRNGKey(1), x, t)['params']
  params = jax.jit(lambda ps: jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), ps))(params)
  results = []
  for options in ({'split_skip': False}, {}, {'remat': True}):
    net = UNet(UNetConfig(**{**cfg, **options}))
    results.append(jax.jit(jax.value_and_grad(
        lambda p, net=net: jnp.sum(net.apply({'params': p}, x, t) ** 2)))(params))
  (want, want_grads), others = results[0], results[1:]
  for value, grads in others:
    np.testing.assert_allclose(value, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_split_skips_and_remat_compute_the_same_function():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  t = jnp.array([3, 500])
  # One level (skips, residual blocks and attention, no resampling): three gradients to compile.
  one_level = {**TINY.__dict__, 'ch_mult': (1,)}
  results = []
  for options in ({}, {'split_skip': False}, {'remat': True}):
    unet = UNet(UNetConfig(**{**one_level, **options}))
    params = jax.jit(unet.init)(jax.random.PRNGKey(1), x, t)['params']
    params = jax.jit(lambda ps: jax.tree.map(  # one program, not one eager normal per shape
        lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), ps))(params)

    def loss(p, unet=unet):
      out = unet.apply({'params': p}, x, t, train=True, rngs={'dropout': jax.random.PRNGKey(4)})
      return jnp.sum(out ** 2)
    results.append((params, *jax.jit(jax.value_and_grad(loss))(params)))
  (params, value, grads), others = results[0], results[1:]
  for other_params, other_value, other_grads in others:
    # The same parameter tree and values (a checkpoint serves every option), loss and gradients.
    assert jax.tree.structure(other_params) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, other_params, params)
    np.testing.assert_allclose(other_value, value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(other_grads), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_attention_kernel_choice():
  from jaxgen.nn.kernels import pick_attention
  bf16 = jnp.bfloat16
  assert pick_attention('auto', bf16, 256, compute_capability=None) is None  # CPU, TPU: XLA
  assert pick_attention('auto', bf16, 256, compute_capability=9.0) == 'cudnn'  # Hopper: up to 256
  assert pick_attention('auto', bf16, 256, compute_capability=8.0) is None  # Ampere: up to 128
  assert pick_attention('auto', bf16, 128, compute_capability=8.0) == 'cudnn'
  assert pick_attention('auto', jnp.float32, 64, compute_capability=9.0) is None  # 16-bit only
  assert pick_attention('auto', bf16, 60, compute_capability=9.0) is None  # multiple of 8
  assert pick_attention('xla', bf16, 64, compute_capability=9.0) is None
  assert pick_attention('cudnn', jnp.float32, 64, compute_capability=None) == 'cudnn'  # forced
  with pytest.raises(ValueError, match='attention must be one of'):
    pick_attention('flash', bf16, 64, compute_capability=9.0)
  with pytest.raises(ValueError, match='model.attention'):
    UNetConfig(attention='flash')


@pytest.mark.parametrize('options', [{}, {'context_dim': 16, 'conditioning': 'text', 'text_layers': 1,
                                          'text_max_len': 8, 'num_heads': 2}])
def test_matmul_params_cast_once_give_the_same_bfloat16_outputs(options):
  """Casting conv and dense parameters before the call (as samplers do, outside their loop)
  changes nothing: those layers cast them to the compute dtype anyway; norms stay float32."""
  from jaxgen.nn.blocks import cast_matmul_params
  unet = UNet(UNetConfig(**{**TINY.__dict__, 'dtype': 'bfloat16', **options}))
  x, t = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3)), jnp.array([3, 500])
  y = jnp.array([[72, 105, 0, 0], [0, 0, 0, 0]], jnp.int32) if options else None
  params = jax.jit(unet.init)(jax.random.PRNGKey(1), x, t, y)['params']
  params = jax.jit(lambda ps: jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(3), p.shape), ps))(params)
  cast = cast_matmul_params(params, jnp.bfloat16)
  flat = jax.tree_util.tree_flatten_with_path(cast)[0]
  dtypes = {jax.tree_util.keystr(k): v.dtype for k, v in flat}
  assert dtypes["['conv_in']['kernel']"] == dtypes["['ResBlock_0']['Dense_0']['bias']"] == jnp.bfloat16
  assert dtypes["['ResBlock_0']['GroupNorm_0']['scale']"] == jnp.float32
  assert cast_matmul_params(params, jnp.float32) is params
  apply = jax.jit(lambda p: unet.apply({'params': p}, x, t, y))
  np.testing.assert_array_equal(apply(cast), apply(params))
