"""Tests of the VQ-VAE quantiser and its EMA codebook (jaxgen.vae.vq)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxgen.vae import vq


def _random(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _laplace(cluster_size, eps):
  """Sonnet's Laplace-smoothed cluster sizes, in float64."""
  cluster_size = np.asarray(cluster_size, np.float64)
  n = cluster_size.sum()
  return (cluster_size + eps) / (n + len(cluster_size) * eps) * n


# ---------------------------------------------------------------- init_codebook


def test_init_codebook_shapes_and_state():
  state = vq.init_codebook(jax.random.PRNGKey(0), 16, 8)
  assert set(state) == {'codebook', 'cluster_size', 'embed_sum'}
  assert state['codebook'].shape == (16, 8) and state['codebook'].dtype == jnp.float32
  assert state['cluster_size'].shape == (16,) and state['cluster_size'].dtype == jnp.float32
  np.testing.assert_array_equal(state['cluster_size'], 1.0)
  np.testing.assert_array_equal(state['embed_sum'], state['codebook'])
  limit = np.sqrt(3.0 / 8)
  assert np.all(np.abs(np.asarray(state['codebook'])) <= limit)
  assert len(np.unique(np.asarray(state['codebook']))) == 16 * 8  # distinct codes
  other = vq.init_codebook(jax.random.PRNGKey(1), 16, 8)
  assert not np.allclose(other['codebook'], state['codebook'])


# ---------------------------------------------------------------- nearest_codes


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_nearest_codes_matches_brute_force(seed):
  codebook = _random(seed, (7, 5))
  z = _random(seed + 100, (3, 4, 6, 5))
  indices = vq.nearest_codes(jnp.asarray(codebook), jnp.asarray(z))
  assert indices.shape == (3, 4, 6) and indices.dtype == jnp.int32
  z64, e64 = z.astype(np.float64), codebook.astype(np.float64)
  brute = np.argmin(((z64[..., None, :] - e64) ** 2).sum(-1), axis=-1)  # [3, 4, 6]
  np.testing.assert_array_equal(np.asarray(indices), brute)


def test_nearest_codes_exact_codes_map_to_themselves():
  codebook = _random(3, (6, 4))
  order = np.array([5, 0, 3, 3, 1, 2, 4])
  indices = vq.nearest_codes(jnp.asarray(codebook), jnp.asarray(codebook[order]))
  np.testing.assert_array_equal(np.asarray(indices), order)


# ---------------------------------------------------------------- quantize


def _quantize_example():
  codebook = jnp.asarray(_random(10, (5, 3)))
  z = jnp.asarray(_random(11, (2, 4, 3)))
  return codebook, z


def test_quantize_forward_is_the_code():
  codebook, z = _quantize_example()
  z_q_st, indices, _ = vq.quantize(codebook, z)
  assert z_q_st.shape == z.shape and z_q_st.dtype == z.dtype
  np.testing.assert_array_equal(np.asarray(indices), np.asarray(vq.nearest_codes(codebook, z)))
  np.testing.assert_array_equal(np.asarray(z_q_st), np.asarray(codebook)[np.asarray(indices)])


def test_quantize_straight_through_gradient():
  codebook, z = _quantize_example()
  w = jnp.asarray(_random(12, z.shape))
  grad_linear = jax.grad(lambda z: jnp.sum(w * vq.quantize(codebook, z)[0]))(z)
  np.testing.assert_array_equal(np.asarray(grad_linear), np.asarray(w))
  # Nonlinear: d/dz f(z_q_st) = f'(z_q), the gradient at the quantised value.
  grad_sin = jax.grad(lambda z: jnp.sum(jnp.sin(vq.quantize(codebook, z)[0])))(z)
  z_q = np.asarray(codebook)[np.asarray(vq.nearest_codes(codebook, z))]
  np.testing.assert_allclose(np.asarray(grad_sin), np.cos(z_q), rtol=1e-6, atol=1e-7)


def test_commitment_loss_matches_numpy():
  codebook, z = _quantize_example()
  _, indices, loss = vq.quantize(codebook, z)
  assert loss.shape == () and loss.dtype == jnp.float32
  z_np = np.asarray(z, np.float64)
  e_np = np.asarray(codebook, np.float64)
  brute = np.argmin(((z_np[..., None, :] - e_np) ** 2).sum(-1), axis=-1)
  np.testing.assert_array_equal(np.asarray(indices), brute)
  expected = np.mean((z_np - e_np[brute]) ** 2)  # over all 2*4*3 elements
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  # Its gradient w.r.t. z is 2 (z - e) / numel.
  grad = jax.grad(lambda z: vq.quantize(codebook, z)[2])(z)
  np.testing.assert_allclose(np.asarray(grad), 2 * (z_np - e_np[brute]) / z_np.size,
                             rtol=1e-5, atol=1e-7)


def test_codebook_gets_no_gradient():
  codebook, z = _quantize_example()
  w = jnp.asarray(_random(13, z.shape))
  grad_commit = jax.grad(lambda e: vq.quantize(e, z)[2])(codebook)
  grad_st = jax.grad(lambda e: jnp.sum(w * vq.quantize(e, z)[0]))(codebook)
  assert grad_commit.shape == codebook.shape
  np.testing.assert_array_equal(np.asarray(grad_commit), 0.0)
  np.testing.assert_array_equal(np.asarray(grad_st), 0.0)


def test_quantize_keeps_bfloat16_inputs():
  codebook, z = _quantize_example()
  z_q_st, _, loss = vq.quantize(codebook, z.astype(jnp.bfloat16))
  assert z_q_st.dtype == jnp.bfloat16 and loss.dtype == jnp.float32


# ---------------------------------------------------------------- ema_update

# K=3 codes, D=2; codes 0 and 1 get two vectors each, code 2 none.
_STATE = {
    'codebook': np.array([[0.5, 0.5], [2.0, 0.0], [0.0, 8.0]], np.float32),
    'cluster_size': np.array([2.0, 1.0, 0.5], np.float32),
    'embed_sum': np.array([[1.0, 1.0], [2.0, 0.0], [0.0, 4.0]], np.float32),
}
_Z = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [-1.0, -1.0]], np.float32)
_INDICES = np.array([0, 0, 1, 1], np.int32)


@pytest.mark.parametrize('eps', [1e-5, 0.1])
def test_ema_update_hand_example(eps):
  new = vq.ema_update({k: jnp.asarray(v) for k, v in _STATE.items()}, jnp.asarray(_Z),
                      jnp.asarray(_INDICES), decay=0.9, eps=eps)
  assert set(new) == set(_STATE)
  # n_k = [2, 2, 0]; s_0 = [1,0] + [3,2] = [4, 2]; s_1 = [0,1] + [-1,-1] = [-1, 0]; s_2 = 0.
  # cluster_size = 0.9 * [2, 1, 0.5] + 0.1 * [2, 2, 0]
  cluster_size = np.array([2.0, 1.1, 0.45])
  # embed_sum = 0.9 * [[1,1],[2,0],[0,4]] + 0.1 * [[4,2],[-1,0],[0,0]]; code 2 only decays.
  embed_sum = np.array([[1.3, 1.1], [1.7, 0.0], [0.0, 3.6]])
  # Laplace smoothing, written out: n = 3.55, size_k = (N_k + eps) / (n + 3 eps) * n.
  n = 3.55
  size = (cluster_size + eps) / (n + 3 * eps) * n
  np.testing.assert_allclose(size, _laplace(cluster_size, eps))
  codebook = embed_sum / size[:, None]
  for key, expected in (('cluster_size', cluster_size), ('embed_sum', embed_sum),
                        ('codebook', codebook)):
    assert new[key].dtype == jnp.float32 and new[key].shape == _STATE[key].shape, key
    np.testing.assert_allclose(np.asarray(new[key]), expected, rtol=1e-6, atol=1e-7, err_msg=key)


def test_ema_update_unused_code_keeps_decaying():
  state = {k: jnp.asarray(v) for k, v in _STATE.items()}
  z, indices = jnp.asarray(_Z), jnp.asarray(_INDICES)
  for step in range(1, 4):
    state = vq.ema_update(state, z, indices, decay=0.9)
    np.testing.assert_allclose(float(state['cluster_size'][2]), 0.5 * 0.9 ** step, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state['embed_sum'][2]), [0.0, 4.0 * 0.9 ** step],
                               rtol=1e-6)


def test_ema_update_decay_zero_moves_codes_to_means():
  rng = np.random.default_rng(5)
  k, d = 6, 3
  state = vq.init_codebook(jax.random.PRNGKey(0), k, d)
  z = _random(6, (4, 5, d))
  indices = rng.integers(0, 4, size=(4, 5)).astype(np.int32)  # codes 4, 5 unused
  indices[0, :4] = [0, 1, 2, 3]  # each of codes 0..3 used at least once
  new = vq.ema_update(state, jnp.asarray(z), jnp.asarray(indices), decay=0.0, eps=1e-12)
  flat_z, flat_i = z.reshape(-1, d), indices.reshape(-1)
  for code in range(4):
    members = flat_z[flat_i == code]
    np.testing.assert_allclose(np.asarray(new['codebook'][code]), members.mean(0),
                               rtol=1e-5, atol=1e-6)
    assert float(new['cluster_size'][code]) == len(members)
  np.testing.assert_array_equal(np.asarray(new['cluster_size'][4:]), 0.0)
  np.testing.assert_array_equal(np.asarray(new['codebook'][4:]), 0.0)  # 0 / eps


def test_ema_update_on_a_sharded_batch_matches_single_device():
  devices = np.array(jax.devices())
  mesh = Mesh(devices, ('data',))
  k, d = 5, 4
  state = vq.init_codebook(jax.random.PRNGKey(2), k, d)
  z = jnp.asarray(_random(7, (2 * len(devices), 3, d)))
  indices = vq.nearest_codes(state['codebook'], z)
  expected = vq.ema_update(state, z, indices, decay=0.8)
  z_sharded = jax.device_put(z, NamedSharding(mesh, P('data')))
  i_sharded = jax.device_put(indices, NamedSharding(mesh, P('data')))
  state_rep = jax.device_put(state, NamedSharding(mesh, P()))
  update = jax.jit(vq.ema_update, static_argnames=('decay',))
  got = update(state_rep, z_sharded, i_sharded, decay=0.8)
  for key in expected:
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(expected[key]),
                               rtol=1e-5, atol=1e-6, err_msg=key)


# ---------------------------------------------------------------- codebook_usage


def test_codebook_usage_hand_example():
  usage, perplexity = vq.codebook_usage(jnp.array([0, 0, 1, 1]), 4)
  assert usage.dtype == jnp.float32 and perplexity.dtype == jnp.float32
  assert float(usage) == 0.5
  np.testing.assert_allclose(float(perplexity), 2.0, rtol=1e-6)


def test_codebook_usage_extremes_and_uneven_histogram():
  usage, perplexity = vq.codebook_usage(jnp.full((2, 3), 2), 5)
  assert float(usage) == pytest.approx(0.2)
  assert float(perplexity) == pytest.approx(1.0)
  usage, perplexity = vq.codebook_usage(jnp.arange(8).reshape(2, 4), 8)
  assert float(usage) == 1.0
  assert float(perplexity) == pytest.approx(8.0, rel=1e-6)
  # p = [1/2, 1/4, 1/4, 0]: entropy = 1.5 ln 2, perplexity = 2^1.5.
  usage, perplexity = vq.codebook_usage(jnp.array([0, 0, 1, 2]), 4)
  assert float(usage) == 0.75
  assert float(perplexity) == pytest.approx(2 ** 1.5, rel=1e-6)


# ---------------------------------------------------------------- jit


def test_functions_give_the_same_result_under_jit():
  state = vq.init_codebook(jax.random.PRNGKey(3), 6, 4)
  codebook = state['codebook']
  z = jnp.asarray(_random(8, (3, 5, 4), scale=0.5))

  np.testing.assert_array_equal(np.asarray(jax.jit(vq.nearest_codes)(codebook, z)),
                                np.asarray(vq.nearest_codes(codebook, z)))

  eager, jitted = vq.quantize(codebook, z), jax.jit(vq.quantize)(codebook, z)
  np.testing.assert_array_equal(np.asarray(jitted[0]), np.asarray(eager[0]))
  np.testing.assert_array_equal(np.asarray(jitted[1]), np.asarray(eager[1]))
  np.testing.assert_allclose(float(jitted[2]), float(eager[2]), rtol=1e-6)

  indices = eager[1]
  eager_state = vq.ema_update(state, z, indices, decay=0.9)
  jitted_state = jax.jit(vq.ema_update)(state, z, indices, 0.9)  # traced decay and eps
  for key in eager_state:
    np.testing.assert_allclose(np.asarray(jitted_state[key]), np.asarray(eager_state[key]),
                               rtol=1e-6, atol=1e-7, err_msg=key)

  usage = jax.jit(vq.codebook_usage, static_argnums=1)(indices, 6)
  np.testing.assert_allclose(np.asarray(usage), np.asarray(vq.codebook_usage(indices, 6)),
                             rtol=1e-6)
