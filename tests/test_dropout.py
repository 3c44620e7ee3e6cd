"""The hashed dropout mask: its keep rate, independence, determinism and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.nn.dropout import Dropout, dropout, keep_mask

SEED = jnp.array([12345, 678910], jnp.uint32)


def test_keep_rate_and_independence():
  n = 1 << 20
  keep = np.asarray(keep_mask((n,), SEED, 0.1), np.float64)
  sigma = np.sqrt(0.9 * 0.1 / n)
  assert abs(keep.mean() - 0.9) < 5 * sigma
  # Neighbours (in a row, in a column of 128 channels, across rows) are uncorrelated.
  centred = keep - keep.mean()
  for lag in (1, 2, 128, 1024):
    corr = np.mean(centred[:-lag] * centred[lag:]) / centred.var()
    assert abs(corr) < 5 / np.sqrt(n), lag
  # Another seed, even one differing in one bit, gives an unrelated mask.
  other = np.asarray(keep_mask((n,), SEED ^ jnp.array([1, 0], jnp.uint32), 0.1), np.float64)
  corr = np.mean(centred * (other - other.mean())) / centred.var()
  assert abs(corr) < 5 / np.sqrt(n)


def test_extreme_rates_and_bad_rate():
  x = jnp.ones((64, 64))
  np.testing.assert_array_equal(dropout(x, 0.0, SEED), x)
  assert float(jnp.mean(keep_mask((4096,), SEED, 0.999))) < 0.01
  with pytest.raises(ValueError, match=r'in \[0, 1\)'):
    dropout(x, 1.0, SEED)


def test_values_gradient_and_determinism():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 16), jnp.bfloat16)
  y = dropout(x, 0.25, SEED)
  keep = keep_mask(x.shape, SEED, 0.25)
  assert y.dtype == x.dtype
  np.testing.assert_array_equal(y, jnp.where(keep, x * jnp.bfloat16(1 / 0.75), 0))
  np.testing.assert_array_equal(dropout(x, 0.25, SEED), y)  # a pure function of the seed
  g = jax.grad(lambda v: jnp.sum(dropout(v, 0.25, SEED).astype(jnp.float32) * 3.0))(x)
  np.testing.assert_array_equal(g, jnp.where(keep, jnp.bfloat16(3.0 / 0.75), 0).astype(x.dtype))


def test_module_draws_from_the_dropout_rng():
  x = jnp.ones((2, 4, 4, 8))
  layer = Dropout(0.5)
  a = layer.apply({}, x, rngs={'dropout': jax.random.PRNGKey(1)})
  b = layer.apply({}, x, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, layer.apply({}, x, rngs={'dropout': jax.random.PRNGKey(1)}))
  np.testing.assert_array_equal(Dropout(0.5, deterministic=True).apply({}, x), x)


def test_the_mask_is_the_same_on_any_mesh():
  """A batch sharded over 8 devices, or over 4 x 2, gets the mask of the unsharded array."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 16))
  want = dropout(x, 0.3, SEED)
  devices = np.array(jax.devices()[:8])
  meshes = ((Mesh(devices, ('data',)), P('data')),
            (Mesh(devices.reshape(4, 2), ('data', 'model')), P('data', None, None, 'model')))
  for mesh, spec in meshes:
    sharded = jax.device_put(x, NamedSharding(mesh, spec))
    got = jax.jit(lambda v: dropout(v, 0.3, SEED))(sharded)
    np.testing.assert_array_equal(got, want)
