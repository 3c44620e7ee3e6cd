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
  params = unet.init(jax.random.PRNGKey(1), x, t, y)['params']
  # The last layer starts at zero (identity residual branches), so perturb params.
  params = jax.tree.map(lambda p: p + 0.01 * jnp.ones_like(p), params)
  out = unet.apply({'params': params}, x, t, y)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  again = unet.apply({'params': params}, x, t, y)
  np.testing.assert_array_equal(out, again)  # eval mode is deterministic
  train = unet.apply({'params': params}, x, t, y, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(out, train)  # dropout is on in training
  if num_classes:
    other = unet.apply({'params': params}, x, t, jnp.array([5, 6]))
    assert not np.allclose(out, other)  # labels change the prediction


def test_bfloat16_compute_keeps_float32_params():
  cfg = UNetConfig(**{**TINY.__dict__, 'dtype': 'bfloat16'})
  unet = UNet(cfg)
  x = jnp.ones((1, 8, 8, 3))
  params = unet.init(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))['params']
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype('float32')}
  assert unet.apply({'params': params}, x, jnp.zeros((1,), jnp.int32)).dtype == jnp.float32


def test_image_size_must_divide():
  unet = UNet(TINY)
  with pytest.raises(ValueError, match='divisible'):
    unet.init(jax.random.PRNGKey(0), jnp.ones((1, 7, 7, 3)), jnp.zeros((1,), jnp.int32))
