"""Tests of the ImageGPT-style transformer and its KV cache (jaxgen.autoregressive.transformer)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.autoregressive.transformer import CausalTransformer
from jaxgen.errors import JaxgenError

B, T, V = 2, 16, 8


class _Setup:
  """A tiny model, random parameters and its jitted functions, built once per configuration.

  The parameters are N(0, 0.2) draws (LayerNorm scales 1 + N(0, 0.2)) in the
  structure `model.init` gives (read with `jax.eval_shape`, which traces init
  without running it): larger than the init, so that every path carries weight.
  Every function is jitted once: op-by-op dispatch would compile each small op.
  """

  def __init__(self, num_classes=0, dropout=0.0, dtype=jnp.float32):
    self.label = _label(num_classes)
    self.model = CausalTransformer(vocab_size=V, seq_len=T, num_layers=2, num_heads=4, dim=32,
                                   dropout=dropout, num_classes=num_classes, dtype=dtype)
    self.shapes = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), _tokens(), self.label)
    rng = np.random.default_rng(num_classes)

    def draw(path, leaf):
      noise = 0.2 * rng.standard_normal(leaf.shape).astype(np.float32)
      return jnp.asarray(noise + (1.0 if path[-1].key == 'scale' else 0.0), leaf.dtype)

    self.params = jax.tree_util.tree_map_with_path(draw, self.shapes)
    self.apply = jax.jit(self.model.apply)
    self.train = jax.jit(functools.partial(self.model.apply, train=True))
    self.decode = jax.jit(functools.partial(self.model.apply, method=CausalTransformer.decode))


_setup = functools.lru_cache(maxsize=None)(_Setup)


def _tokens(seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, T)), jnp.int32)


def _label(num_classes):
  return jnp.array([0, 2], jnp.int32) if num_classes else None


# ---------------------------------------------------------------- shapes


def test_shapes_dtypes_and_parameters():
  setup = _setup(3)
  logits = setup.apply(setup.params, _tokens(), setup.label)
  assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
  p = setup.shapes['params']
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p))
  assert p['token_embed'].shape == (V, 32) and p['pos_embed'].shape == (T, 32)
  assert p['start'].shape == (32,) and p['class_embed'].shape == (3, 32)
  assert set(p) == {'token_embed', 'pos_embed', 'start', 'class_embed', 'block_0', 'block_1',
                    'ln_out', 'head'}
  assert p['block_0']['qkv']['kernel'].shape == (32, 3, 4, 8)
  assert p['head']['kernel'].shape == (32, V)
  assert 'class_embed' not in _setup(0).shapes['params']


def test_init_cache_needs_no_params():
  setup = _setup(0)
  model = setup.model
  cache = model.init_cache(B)  # unbound module
  assert set(cache) == {'block_0', 'block_1'}
  for layer in cache.values():
    assert set(layer) == {'key', 'value'}
    for x in layer.values():
      assert x.shape == (B, T, 4, 8) and x.dtype == jnp.float32
      np.testing.assert_array_equal(np.asarray(x), 0.0)
  via_apply = model.apply(setup.params, B, method=CausalTransformer.init_cache)
  via_apply_no_params = model.apply({}, B, method=CausalTransformer.init_cache)
  for other in (via_apply, via_apply_no_params):
    assert jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(cache)
    assert all(x.shape == (B, T, 4, 8) for x in jax.tree_util.tree_leaves(other))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  setup = _setup(0, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(setup.shapes))
  cache = setup.model.init_cache(B)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(cache))
  logits, cache = setup.decode(setup.params, _tokens()[:, 0], jnp.int32(0), cache)
  assert logits.shape == (B, V) and logits.dtype == jnp.float32
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(cache))
  logits = setup.apply(setup.params, _tokens())
  assert logits.shape == (B, T, V) and logits.dtype == jnp.float32


def test_one_hot_input_gives_the_same_logits():
  setup = _setup(3)
  tokens = _tokens(4)
  np.testing.assert_allclose(
      np.asarray(setup.apply(setup.params, jax.nn.one_hot(tokens, V), setup.label)),
      np.asarray(setup.apply(setup.params, tokens, setup.label)), rtol=1e-6, atol=1e-6)


def test_bad_input_raises():
  setup = _setup(3)
  with pytest.raises(JaxgenError, match='tokens must be'):
    setup.apply(setup.params, _tokens()[:, :8], setup.label)
  with pytest.raises(JaxgenError, match='one-hot tokens'):
    setup.apply(setup.params, jax.nn.one_hot(_tokens(), V + 1), setup.label)
  with pytest.raises(JaxgenError, match='pass a label'):
    setup.apply(setup.params, _tokens())
  unconditional = _setup(0)
  with pytest.raises(JaxgenError, match='drop the label'):
    unconditional.apply(unconditional.params, _tokens(), jnp.zeros((B,), jnp.int32))
  with pytest.raises(JaxgenError, match='must divide dim'):
    jax.eval_shape(CausalTransformer(vocab_size=V, seq_len=T, num_heads=3, dim=32).init,
                   jax.random.PRNGKey(0), _tokens())


# ---------------------------------------------------------------- autoregressive property


@pytest.mark.parametrize('num_classes', [0, 3])
def test_logits_depend_only_on_earlier_tokens(num_classes):
  setup = _setup(num_classes)
  one_hot = jax.nn.one_hot(_tokens(5), V)  # [B, T, V]
  jac = jax.jit(jax.jacrev(lambda x: setup.model.apply(setup.params, x, setup.label)))(one_hot)
  assert jac.shape == (B, T, V, B, T, V)
  # sensitivity[b, t, c, s]: how much logits[b, t] move with input[c, s].
  sensitivity = np.abs(np.asarray(jac)).sum(axis=(2, 5))  # [B, T, B, S]
  for b in range(B):
    for c in range(B):
      if b != c:
        np.testing.assert_array_equal(sensitivity[b, :, c], 0.0)  # no mixing across the batch
    own = sensitivity[b, :, b]  # [T, S]
    for t in range(T):
      np.testing.assert_array_equal(own[t, t:], 0.0, err_msg=f't={t}')  # exactly zero, s >= t
      assert np.all(own[t, :t] > 0), f't={t}'  # every earlier token matters
    # The cases of the spec spelled out: t = 0 sees no token, a middle t and the last t
    # see the tokens before them and not their own.
    assert own[0].max() == 0.0
    assert own[T // 2, T // 2 - 1] > 0 and own[T // 2, 0] > 0 and own[T // 2, T // 2] == 0.0
    assert own[T - 1, T - 2] > 0 and own[T - 1, 0] > 0 and own[T - 1, T - 1] == 0.0


# ---------------------------------------------------------------- cached decoding


@pytest.mark.parametrize('num_classes', [0, 3])
def test_decode_loop_reproduces_the_logits(num_classes):
  setup = _setup(num_classes)
  tokens = _tokens(7)
  full = np.asarray(setup.apply(setup.params, tokens, setup.label))  # [B, T, V]
  cache = setup.model.init_cache(B)
  for t in range(T):
    prev = tokens[:, t - 1] if t > 0 else jnp.full((B,), -1, jnp.int32)  # ignored at t == 0
    logits, cache = setup.decode(setup.params, prev, jnp.int32(t), cache, setup.label)
    assert logits.shape == (B, V) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-5, atol=1e-5,
                               err_msg=f't={t}')
    for leaf in jax.tree_util.tree_leaves(cache):  # [B, T, H, D]: filled up to t, zero after
      np.testing.assert_array_equal(np.asarray(leaf[:, t + 1:]), 0.0)
      assert np.all(np.any(np.asarray(leaf[:, :t + 1]) != 0, axis=(2, 3)))


@pytest.mark.parametrize('num_classes', [0, 3])
def test_decode_under_jit_and_scan(num_classes):
  setup = _setup(num_classes)
  tokens = _tokens(8)
  full = np.asarray(setup.apply(setup.params, tokens, setup.label))

  @jax.jit
  def teacher_forced(params, tokens, label):
    prev = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), tokens[:, :-1]], axis=1).T  # [T, B]

    def step(cache, xs):
      t, prev_token = xs  # t: the traced loop index
      logits, cache = setup.model.apply(params, prev_token, t, cache, label,
                                        method=CausalTransformer.decode)
      return cache, logits

    _, logits = jax.lax.scan(step, setup.model.init_cache(B),
                             (jnp.arange(T, dtype=jnp.int32), prev))
    return jnp.swapaxes(logits, 0, 1)  # [B, T, V]

  got = teacher_forced(setup.params, tokens, setup.label)
  assert got.shape == (B, T, V)
  np.testing.assert_allclose(np.asarray(got), full, rtol=1e-5, atol=1e-5)


def test_decode_depends_on_the_prefix_only():
  setup = _setup(0)
  tokens = _tokens(9)
  other = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % V)  # the same first 5 tokens
  out = {}
  for name, seq in (('a', tokens), ('b', other)):
    cache, rows = setup.model.init_cache(B), []
    for t in range(T):
      logits, cache = setup.decode(setup.params, seq[:, max(t - 1, 0)], jnp.int32(t), cache)
      rows.append(np.asarray(logits))
    out[name] = np.stack(rows, axis=1)  # [B, T, V]
  np.testing.assert_array_equal(out['a'][:, :6], out['b'][:, :6])  # t <= 5 sees tokens < 5
  assert np.all(np.abs(out['a'][:, 6:] - out['b'][:, 6:]).max(axis=-1) > 0)


# ---------------------------------------------------------------- label and dropout


def test_label_changes_the_logits():
  setup = _setup(3)
  tokens = _tokens(10)
  label_a, label_b = jnp.array([0, 1], jnp.int32), jnp.array([2, 1], jnp.int32)
  a = np.asarray(setup.apply(setup.params, tokens, label_a))
  b = np.asarray(setup.apply(setup.params, tokens, label_b))
  assert np.all(np.abs(a[0] - b[0]).max(axis=-1) > 1e-4)  # every position of example 0
  np.testing.assert_array_equal(a[1], b[1])  # example 1 kept its label
  cache = setup.model.init_cache(B)
  first_a, _ = setup.decode(setup.params, tokens[:, 0], jnp.int32(0), cache, label_a)
  first_b, _ = setup.decode(setup.params, tokens[:, 0], jnp.int32(0), cache, label_b)
  np.testing.assert_allclose(np.asarray(first_a), a[:, 0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(first_b), b[:, 0], rtol=1e-5, atol=1e-5)


def test_dropout_only_in_train_mode():
  setup = _setup(0, dropout=0.5)
  params, tokens = setup.params, _tokens(11)
  evaluated = np.asarray(setup.apply(params, tokens))  # train=False: no dropout rng needed
  train_1 = np.asarray(setup.train(params, tokens, rngs={'dropout': jax.random.PRNGKey(1)}))
  train_1b = np.asarray(setup.train(params, tokens, rngs={'dropout': jax.random.PRNGKey(1)}))
  train_2 = np.asarray(setup.train(params, tokens, rngs={'dropout': jax.random.PRNGKey(2)}))
  np.testing.assert_array_equal(train_1, train_1b)
  assert np.abs(train_1 - evaluated).max() > 1e-4 and np.abs(train_1 - train_2).max() > 1e-4
  # The same parameters without dropout: train mode changes nothing.
  plain = _setup(0)
  np.testing.assert_array_equal(
      np.asarray(plain.train(params, tokens, rngs={'dropout': jax.random.PRNGKey(1)})),
      np.asarray(plain.apply(params, tokens)))
  np.testing.assert_array_equal(np.asarray(plain.apply(params, tokens)), evaluated)
