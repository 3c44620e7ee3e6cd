"""Latent diffusion with cross-attention: tokenizer, attention, text encoder, UNet, guidance, e2e.

Everything is tiny and jitted; the one end-to-end test trains the smoke KL
autoencoder and the smoke latent diffusion model on it through the CLI.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import cli, config as config_lib
from jaxgen.diffusion import guidance, model as model_lib, prompts
from jaxgen.diffusion.schedules import linear_schedule
from jaxgen.diffusion.unet import UNet, UNetConfig
from jaxgen.errors import JaxgenError
from jaxgen.nn.attention import Attention, SpatialTransformer
from jaxgen.nn.text import TextEncoder, decode_text, encode_text
from conftest import REPO

AE_SMOKE = str(REPO / 'experiments' / 'kl_autoencoder_mnist.py') + ':smoke'
LDM_SMOKE = str(REPO / 'experiments' / 'ldm_mnist.py') + ':smoke'
DDPM_SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'


def _normal(seed, shape):
  """Standard normal float32 [shape] from numpy (an eager jax.random.normal compiles for seconds)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _host_params(module, *args, scale=0.1, seed=0):
  """Random parameters of `module` called on `args`, drawn with numpy.

  Nothing is compiled but the test's own applies: a jitted init of a UNet
  (threefry bits for every parameter) compiles for longer than its forward pass.
  Zero-initialised layers get values too, so that every branch shows.
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


# ---------------------------------------------------------------- tokenizer and prompts


def test_tokenizer_round_trip_padding_and_errors():
  texts = ['a handwritten seven', 'the digit 7', '', 'café']
  tokens, mask = encode_text(texts, 24)
  assert tokens.shape == mask.shape == (4, 24) and tokens.dtype == np.int32 and mask.dtype == bool
  assert decode_text(tokens) == texts
  assert not mask[2].any() and not tokens[2].any()  # the empty prompt is all padding
  np.testing.assert_array_equal(mask.sum(1), [19, 11, 0, 5])  # bytes: 'é' is two
  np.testing.assert_array_equal(tokens[1, :3], np.frombuffer(b'the', np.uint8) + 1)
  assert (tokens[mask] >= 1).all() and (tokens[~mask] == 0).all()
  with pytest.raises(JaxgenError, match='max_len=8'):
    encode_text(['a handwritten seven'], 8)
  with pytest.raises(JaxgenError, match='list'):
    encode_text('seven', 8)


def test_prompt_templates_are_deterministic_per_key():
  labels = jnp.arange(64) % 10
  pick = jax.jit(lambda rng: prompts.random_prompts(labels, rng, 24))
  a, b, c = pick(jax.random.key(0)), pick(jax.random.key(0)), pick(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  texts = decode_text(a)
  assert len(set(texts)) > 10  # several templates
  for label, text in zip(np.asarray(labels), texts):
    assert text in {prompts.prompt(int(label), tpl) for tpl in prompts.TEMPLATES}
    assert prompts.label_of_prompt(text) == label
  assert prompts.prompt(7) == 'a handwritten seven'
  assert prompts.label_of_prompt('a cat') is None and prompts.label_of_prompt('3 or seven') is None


# ---------------------------------------------------------------- attention and the text encoder


def test_attention_mask_ignores_padded_keys_and_cross_attention_uses_context():
  x = _normal(0, (2, 5, 8))
  ctx = _normal(1, (2, 4, 6))
  mask = jnp.array([[True, True, False, False], [True, False, False, False]])
  attn = Attention(num_heads=2)
  params = _host_params(attn, x, ctx, mask, scale=0.5)
  apply = jax.jit(lambda c, m: attn.apply(params, x, c, m))
  out = apply(ctx, mask)
  assert out.shape == x.shape
  padded_changed = jnp.where(mask[..., None], ctx, 100.0)
  np.testing.assert_allclose(apply(padded_changed, mask), out, rtol=1e-6, atol=1e-6)
  real_changed = ctx.at[:, 0].add(1.0)
  assert not np.allclose(apply(real_changed, mask), out, atol=1e-3)  # the context matters
  # With every key real, the padded entries are attended to.
  all_real = jnp.ones_like(mask)
  assert not np.allclose(apply(padded_changed, all_real), apply(ctx, all_real), atol=1e-3)


def test_spatial_transformer_starts_as_identity_then_depends_on_context():
  x = _normal(0, (2, 3, 3, 32))
  ctx = _normal(1, (2, 4, 16))
  block = SpatialTransformer(num_heads=4, depth=1)
  # An rbg key: its init compiles in half the time of threefry's.
  params = jax.jit(block.init)(jax.random.key(2, impl='unsafe_rbg'), x, ctx)
  apply = jax.jit(block.apply)
  np.testing.assert_array_equal(apply(params, x, ctx), x)  # proj_out starts at zero
  params = _host_params(block, x, ctx)
  out = apply(params, x, ctx)
  assert out.shape == x.shape and np.isfinite(np.asarray(out)).all()
  assert not np.allclose(out, apply(params, x, ctx + 1.0), atol=1e-3)


def test_text_encoder_ignores_padding():
  enc = TextEncoder(width=32, num_layers=2, num_heads=4, max_len=16)
  short, mask_short = encode_text(['seven', 'a 7'], 8)
  long, _ = encode_text(['seven', 'a 7'], 16)
  params = _host_params(enc, long, scale=0.3)
  apply = jax.jit(enc.apply)
  out_short, m_short = apply(params, short)
  out_long, m_long = apply(params, long)
  assert out_short.shape == (2, 9, 32) and out_long.shape == (2, 17, 32)
  np.testing.assert_array_equal(m_short[:, 1:], mask_short)
  assert m_short[:, 0].all() and m_long[:, 0].all()  # the start token is never masked
  real = np.asarray(m_short)
  np.testing.assert_allclose(np.asarray(out_short)[real], np.asarray(out_long)[:, :9][real],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(out_short[0, :6], out_short[1, :6], atol=1e-3)  # prompts differ


# ---------------------------------------------------------------- the UNet with a context

TINY = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                  num_classes=10, pad_to_fit=True, num_heads=2, text_width=16, text_layers=1,
                  text_max_len=12)


@pytest.mark.parametrize('conditioning', ['class', 'text'])
def test_unet_with_context_on_odd_latents(conditioning):
  cfg = dataclasses.replace(TINY, context_dim=32, conditioning=conditioning)
  unet = UNet(cfg)
  x = _normal(0, (2, 7, 7, 4))  # padded to 8x8 inside
  t = jnp.array([3, 500])
  if conditioning == 'text':
    y, other = (jnp.asarray(encode_text(p, 12)[0]) for p in (['seven', 'a 1'], ['two', '']))
  else:
    y, other = jnp.array([7, 1]), jnp.array([2, 10])
  params = _host_params(unet, x, t, y, scale=0.2)['params']
  assert ('text_encoder' in params) == (conditioning == 'text')
  assert 'label_emb' not in params and 'SpatialTransformer_0' in params and 'AttnBlock_0' not in params
  apply = jax.jit(lambda y: unet.apply({'params': params}, x, t, y))
  out = apply(y)
  assert out.shape == x.shape and out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
  change = np.abs(np.asarray(apply(other) - out)).max()
  assert change > 1e-3 * np.abs(np.asarray(out)).max()  # the conditioning changes the prediction


def test_context_dim_zero_keeps_the_ddpm_parameter_tree():
  x, t, y = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
  shapes = lambda cfg: jax.tree.map(lambda a: a.shape, jax.eval_shape(
      lambda: UNet(cfg).init(jax.random.key(0), x, t, y)))
  plain = UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_classes=10)
  # The new fields do nothing without a context.
  assert shapes(plain) == shapes(dataclasses.replace(plain, num_heads=8, transformer_depth=3,
                                                     text_layers=5, pad_to_fit=True))
  with pytest.raises(ValueError, match='pad_to_fit'):
    UNet(plain).init(jax.random.key(0), jnp.zeros((1, 7, 7, 3)), t, y)


# ---------------------------------------------------------------- guidance with prompts


class _FakeTextNet(nn.Module):
  """Stands in for a text UNet: output = x * (1 + sum of the tokens / 1000) + w."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x, t, y=None, *, train=False):
    w = self.param('w', nn.initializers.ones, ())
    y = jnp.zeros((x.shape[0], 1), jnp.int32) if y is None else y
    return x * (1.0 + y.sum(-1) / 1000.0)[:, None, None, None] + w


def test_guided_eps_with_prompts_is_conditional_at_one_and_empty_prompt_at_zero():
  cfg = dataclasses.replace(TINY, context_dim=32, conditioning='text', text_max_len=24)
  m = model_lib.DiffusionModel(_FakeTextNet(cfg), linear_schedule(100), model_lib.SampleConfig(),
                               (2, 2, 1), model_lib.DiffusionConfig(label_dropout=0.1))
  assert m.text_conditioned
  tokens = jnp.asarray(encode_text(['a handwritten seven', 'two', ''], 20)[0])
  x = _normal(0, (3, 2, 2, 1))
  t = jnp.array([0, 50, 99])
  params = {'w': jnp.float32(0.5)}
  eps_y = lambda x, t, y: m.unet.apply({'params': params}, x, t, y)

  @jax.jit
  def run(x, t, tokens):
    plain = eps_y(x, t, tokens), eps_y(x, t, jnp.zeros_like(tokens))
    direct = [guidance.guided_eps_fn(eps_y, tokens, 0, w)(x, t) for w in (1.0, 0.0, 3.0)]
    model = [m.eps_fn(params, tokens, guidance=w)(x, t) for w in (0.0, 3.0)]
    return plain, direct, model

  (cond, uncond), (g1, g0, g3), (m0, m3) = run(x, t, tokens)
  np.testing.assert_array_equal(g1, cond)
  np.testing.assert_array_equal(g0, uncond)
  np.testing.assert_allclose(g3, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m0, uncond, rtol=1e-6)
  np.testing.assert_allclose(m3, g3, rtol=1e-6)
  # The model's prompt tokens: a template per label with a key, the null class as the empty prompt.
  got = m.prompt_tokens(jnp.array([7, 10]))
  assert decode_text(got) == ['a handwritten seven', '']


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope='module')
def ldm_runs(mnist_env, tmp_path_factory):
  """The smoke KL autoencoder and the smoke text-conditioned latent diffusion model trained on it."""
  root = tmp_path_factory.mktemp('ldm')
  ae, ldm = str(root / 'kl_ae'), str(root / 'ldm')
  # Two steps and no sample grid: compiling the autoencoder is the cost, not training it.
  assert cli.main(['train', '--config', AE_SMOKE, '--workdir', ae, '--config.train.num_steps=2',
                   '--config.train.sample_every=0']) == 0
  assert cli.main(['train', '--config', LDM_SMOKE, '--workdir', ldm,
                   f'--config.diffusion.autoencoder={ae}']) == 0
  return ae, ldm


def test_latent_text_diffusion_trains_and_samples_a_prompt(ldm_runs, tmp_path):
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
  _, ldm = ldm_runs
  run = load_run(ldm)
  assert run.model.image_shape == (28, 28, 1) and run.model.diffusion_shape == (14, 14, 2)
  assert run.params['conv_in']['kernel'].shape[2] == 2  # the UNet runs on the latents
  assert run.model.forward_flops() > 0
  out = tmp_path / 'seven.npz'
  assert cli.main(['sample', '--workdir', ldm, '--num', '4', '--out', str(out), '--batch', '8',
                   '--prompt', 'a handwritten seven', '--guidance', '3', '--steps', '5']) == 0
  data = np.load(out)
  images = data['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
  assert images.min() >= 0 and images.max() <= 255 and images.std() > 0
  # The file holds the digit each image was asked for, for `jaxgen eval --fake --metrics accuracy`.
  np.testing.assert_array_equal(data['labels'], [7, 7, 7, 7])


def test_latent_text_diffusion_errors(ldm_runs, tmp_path, capsys):
  from jaxgen.run import load_run  # pylint: disable=g-import-not-at-top
  ae, ldm = ldm_runs
  model = load_run(ldm).model
  with pytest.raises(JaxgenError, match='max_len=24'):
    model.sample_options(prompt='a handwritten seven, thick and slanted')
  with pytest.raises(JaxgenError, match='--prompt and --label'):
    model.sample_options(prompt='seven', label=7)
  assert cli.main(['sample', '--workdir', ldm, '--num', '1', '--out', str(tmp_path / 'x.png'),
                   '--prompt', 'x' * 30]) == 2
  assert 'max_len' in capsys.readouterr().err
  class_config = config_lib.load_config(DDPM_SMOKE, ['model.num_classes=10'])
  class_model = model_lib.build(class_config, (28, 28, 1))
  with pytest.raises(JaxgenError, match='text-conditioned'):
    class_model.sample_options(prompt='a handwritten seven')
  for autoencoder, message in ((str(tmp_path / 'missing'), 'not a directory'),
                               (ldm, 'not a KL-autoencoder')):
    config = config_lib.load_config(LDM_SMOKE, [f'diffusion.autoencoder={autoencoder}'])
    with pytest.raises(JaxgenError, match=message):
      model_lib.build(config, (28, 28, 1))
  for bad, message in ((['model.conditioning=words'], 'conditioning'),
                       (['model.context_dim=0'], 'context_dim'),
                       (['model.num_classes=5'], 'num_classes=10'),
                       (['model.text_max_len=8'], 'max_len=8'),
                       (['model.num_heads=3'], 'num_heads'),
                       (['diffusion.latent_scale=0.0'], 'latent_scale')):
    with pytest.raises(JaxgenError, match=message):
      model_lib.build(config_lib.load_config(LDM_SMOKE, bad), (28, 28, 1))
