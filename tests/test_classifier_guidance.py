"""Classifier guidance (jaxgen.diffusion.classifier): the guided eps against closed forms, samplers
moved towards a class, the noise-conditional classifier and its training, the model's options and
the CLI end to end (train, train-classifier, sample --classifier-scale)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import cli, config as config_lib
from jaxgen.diffusion import classifier as clf_lib, guidance, model as model_lib, samplers
from jaxgen.diffusion.schedules import linear_schedule
from jaxgen.errors import JaxgenError
from conftest import REPO, optimised_jit

SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'
SCHEDULE = linear_schedule(100)


def linear_log_probs(w: np.ndarray, b: np.ndarray):
  """log_prob_fn of logits = x.reshape(B, D) @ w + b, with w [D, K], b [K]."""
  def fn(x, t):
    del t
    return jax.nn.log_softmax(x.reshape(x.shape[0], -1) @ jnp.asarray(w) + jnp.asarray(b), axis=-1)
  return fn


def linear_grad(x: np.ndarray, labels: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """grad_x log softmax(x w + b)_y = w[:, y] - sum_k p_k w[:, k], in float64 [B, *x.shape[1:]]."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  logits = flat @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)  # [B, K]
  return (w[:, labels].T - p @ w.T).reshape(x.shape)


def toy_eps(x, t):
  return 0.5 * x + 0.01 * t[:, None, None, None].astype(jnp.float32)


# ---------------------------------------------------------------- the guided eps


def test_guided_eps_matches_the_closed_form_gradient():
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=(4, 3)), rng.normal(size=3)  # D = 2 * 2 * 1 pixels, K = 3 classes
  x = rng.normal(size=(5, 2, 2, 1)).astype(np.float32)
  t = np.array([0, 10, 50, 90, 99], np.int32)
  labels = np.array([0, 1, 2, 1, 0], np.int32)
  scale = 2.5
  eps = clf_lib.classifier_guided_eps_fn(toy_eps, linear_log_probs(w, b), labels, scale, SCHEDULE)
  got = np.asarray(jax.jit(eps)(x, t))
  sigma = np.sqrt(1.0 - np.asarray(SCHEDULE.alphas_cumprod, np.float64)[t])[:, None, None, None]
  want = np.asarray(toy_eps(x, t), np.float64) - scale * sigma * linear_grad(x, labels, w, b)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  # Scale 0: the unguided eps itself, and exactly its numbers when the scale is traced.
  assert clf_lib.classifier_guided_eps_fn(toy_eps, linear_log_probs(w, b), labels, 0.0, SCHEDULE) is toy_eps
  traced = jax.jit(lambda s, x, t: clf_lib.classifier_guided_eps_fn(
      toy_eps, linear_log_probs(w, b), labels, s, SCHEDULE)(x, t))
  np.testing.assert_array_equal(np.asarray(traced(0.0, x, t)), np.asarray(toy_eps(x, t)))


def test_guidance_composes_with_classifier_free_guidance():
  rng = np.random.default_rng(1)
  w, b = rng.normal(size=(4, 3)), rng.normal(size=3)
  x = rng.normal(size=(3, 2, 2, 1)).astype(np.float32)
  t, labels = np.array([5, 40, 80], np.int32), np.array([2, 0, 1], np.int32)
  eps_y = lambda x, t, y: toy_eps(x, t) + 0.1 * y[:, None, None, None].astype(jnp.float32)
  cfg = guidance.guided_eps_fn(eps_y, jnp.asarray(labels), 3, 2.0)  # null class 3, w = 2
  eps = clf_lib.classifier_guided_eps_fn(cfg, linear_log_probs(w, b), labels, 1.5, SCHEDULE)
  sigma = np.sqrt(1.0 - np.asarray(SCHEDULE.alphas_cumprod, np.float64)[t])[:, None, None, None]
  base = np.asarray(toy_eps(x, t), np.float64)
  cfg_want = -1.0 * (base + 0.3) + 2.0 * (base + 0.1 * labels[:, None, None, None])
  want = cfg_want - 1.5 * sigma * linear_grad(x, labels, w, b)
  np.testing.assert_allclose(np.asarray(jax.jit(eps)(x, t)), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('sampler', ['ddim', 'dpmpp2m'])
def test_guidance_moves_samples_towards_the_class(sampler):
  # Data N(0, 1) on one pixel: x_t ~ N(0, 1) too and the exact eps is sqrt(1 - abar_t) x_t.
  # A 2-class classifier with logits (0, 2 x): class 1 lies at x > 0, class 0 at x < 0.
  eps_fn = lambda x, t: SCHEDULE.sqrt_one_minus_alphas_cumprod[t][:, None, None, None] * x
  log_probs = linear_log_probs(np.array([[0.0, 2.0]]), np.zeros(2))
  labels = jnp.arange(512) % 2  # [512]: 0, 1, 0, 1, ...

  @jax.jit
  def draw(scale):
    eps = clf_lib.classifier_guided_eps_fn(eps_fn, log_probs, labels, scale, SCHEDULE)
    return samplers.sample(eps, SCHEDULE, jax.random.PRNGKey(0), (512, 1, 1, 1), sampler=sampler,
                           steps=10, clip_x0=False)[:, 0, 0, 0]

  plain, guided = np.asarray(draw(0.0)), np.asarray(draw(3.0))
  assert abs(plain.mean()) < 0.15
  assert guided[1::2].mean() > plain[1::2].mean() + 0.5  # towards class 1: up
  assert guided[0::2].mean() < plain[0::2].mean() - 0.5  # towards class 0: down


# ---------------------------------------------------------------- the classifier


TINY = clf_lib.ClassifierConfig(width=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


def numpy_params(module, x, t, seed=0):
  """Parameters of `module` drawn with numpy: fan-in scaled normal kernels, zero biases, unit scales.

  The same tree as `module.init`, without compiling its random number generation (most of an
  init's time on CPU; the CLI test below runs the real one).
  """
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x, t)['params']
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = path[-1].key
    if name == 'kernel':
      return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(np.float32)
    return (np.ones if name == 'scale' else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_classifier_shapes():
  # An odd latent-like grid (7 -> 4 -> 2) with attention at 4x4.
  module = clf_lib.NoisyClassifier(3, TINY)
  x, t = jnp.ones((2, 7, 7, 3)), jnp.array([0, 99], jnp.int32)
  params = numpy_params(module, x, t)
  assert set(params) >= {'conv_in', 'norm_out', 'logits', 'AttnBlock_0', 'Downsample_0'}
  logits = jax.jit(module.apply)({'params': params}, x, t)
  assert logits.shape == (2, 3) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def test_classifier_config_errors():
  for bad, match in [(dict(width=48), 'multiple of 32'), (dict(steps=0), '--num-steps'),
                     (dict(ch_mult=()), 'ch_mult')]:
    with pytest.raises(JaxgenError, match=match):
      dataclasses.replace(clf_lib.ClassifierConfig(), **bad).check()


def test_classifier_loss_decreases_on_separable_data():
  module = clf_lib.NoisyClassifier(2, clf_lib.ClassifierConfig(width=32, ch_mult=(1,)))
  labels = jnp.arange(16) % 2  # [16]
  # Class 1: bright top half, dark bottom half; class 0 the reverse (a contrast GroupNorm keeps).
  top = jnp.where(jnp.arange(8) < 4, 0.8, -0.8)[None, :, None, None]  # [1, 8, 1, 1]
  noise = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 1))
  images = jnp.where(labels[:, None, None, None] == 1, top, -top) + noise  # [16, 8, 8, 1]
  params = numpy_params(module, images, labels)
  optimizer = optax.adam(3e-3)
  loss_fn = lambda p, rng: clf_lib.classifier_loss(p, images, labels, rng, SCHEDULE, module=module)

  @optimised_jit
  def train(params):
    def step(carry, i):
      params, opt_state = carry
      grads, _ = jax.grad(loss_fn, has_aux=True)(params, jax.random.PRNGKey(i))
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    return jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(20))[0][0]

  rng_eval = jax.random.PRNGKey(123)
  before, _ = jax.jit(loss_fn)(params, rng_eval)
  after, metrics = jax.jit(loss_fn)(train(params), rng_eval)
  assert after < 0.5 * before and metrics['accuracy'] > 0.9


# ---------------------------------------------------------------- the model's options


@dataclasses.dataclass(frozen=True, eq=False)
class ToyClassifier:
  num_classes: int = 10

  def log_probs(self, x, t):
    del t
    return jax.nn.log_softmax(jnp.zeros((x.shape[0], self.num_classes)) + x.mean(), axis=-1)


def smoke_model() -> model_lib.DiffusionModel:
  return model_lib.build(config_lib.load_config(SMOKE, []), (28, 28, 1))


def test_model_options_and_errors(tmp_path):
  model = smoke_model()
  assert model.sample_options()['classifier_scale'] == 0.0 and model.requested_labels(4) is None
  with pytest.raises(JaxgenError, match='needs a noise-conditional classifier: train one with '
                                        '`jaxgen train-classifier'):
    model.sample_options(classifier_scale=2.0)
  with pytest.raises(JaxgenError, match='--classifier-scale must be a number >= 0'):
    model.sample_options(classifier_scale=-1.0)
  with pytest.raises(JaxgenError, match='--label needs a conditional model'):
    model.sample_options(label=3)

  guided = dataclasses.replace(model, classifier=ToyClassifier())
  assert guided.sample_options(classifier_scale=2.0, label=3)['label'] == 3  # unconditional + classifier
  np.testing.assert_array_equal(guided.requested_labels(4, classifier_scale=2.0, label=3), [3] * 4)
  np.testing.assert_array_equal(guided.requested_labels(12, classifier_scale=2.0), np.arange(12) % 10)
  assert guided.requested_labels(4, label=-1) is None  # scale 0: no class is drawn
  with pytest.raises(JaxgenError, match='class below 10'):
    guided.sample_options(classifier_scale=2.0, label=10)
  with pytest.raises(JaxgenError, match='--label needs'):
    guided.sample_options(label=3)  # the classifier is there but not used
  conditional = model_lib.build(config_lib.load_config(SMOKE, ['model.num_classes=5']), (28, 28, 1))
  with pytest.raises(JaxgenError, match='knows 10 classes and the model 5'):
    dataclasses.replace(conditional, classifier=ToyClassifier()).sample_options(classifier_scale=1.0)
  with pytest.raises(JaxgenError, match='train it with `jaxgen train-classifier --workdir'):
    clf_lib.load_classifier(str(tmp_path))


@pytest.mark.parametrize('section, key, value, match', [
    ('sample', 'classifier_scale', 1.0, 'sample.classifier_scale must be 0 in a config'),
    ('classifier', 'widht', 32, 'unknown config key classifier.widht'),
    ('classifier', 'width', 48, 'multiple of 32'),
])
def test_config_errors_at_build(section, key, value, match):
  config = config_lib.load_config(SMOKE, [])
  with config.unlocked():
    config[section][key] = value
  with pytest.raises(JaxgenError, match=match):
    model_lib.build(config, (28, 28, 1))


# ---------------------------------------------------------------- end to end


def test_cli_train_classifier_and_sample_guided(mnist_env, tmp_path, capsys, monkeypatch):
  workdir = str(tmp_path / 'ddpm')
  # The smoke UNet without its 14x14 level and attention (the smoke classifier has one level):
  # compiling them is most of the time.
  assert cli.main(['train', '--config', SMOKE, '--workdir', workdir, '--config.train.num_steps=2',
                   '--config.train.sample_every=0', '--config.model.ch_mult=(1,)',
                   '--config.model.attn_resolutions=()']) == 0
  out = str(tmp_path / 'x.png')
  sample = ['sample', '--workdir', workdir, '--steps', '5', '--num', '4', '--out', out]
  capsys.readouterr()
  assert cli.main(sample + ['--classifier-scale', '2', '--label', '3']) == 2
  assert 'jaxgen train-classifier --workdir' in capsys.readouterr().err
  assert cli.main(['train-classifier', '--workdir', workdir, '--num-steps', '5', '--batch', '8',
                   '--eval-num', '16']) == 0
  directory = clf_lib.classifier_dir(workdir)
  with open(os.path.join(directory, clf_lib.ACCURACY_FILE)) as f:
    result = json.load(f)
  assert sorted(result['accuracy']) == ['t=0', 't=25', 't=50'] and result['num_examples'] == 16
  assert result['split'] == 'test' and all(0 <= a <= 1 for a in result['accuracy'].values())

  assert cli.main(sample + ['--classifier-scale', '2', '--label', '3']) == 0
  assert os.path.getsize(out) > 0
  edit = ['edit', '--workdir', workdir, '--task', 'inpaint', '--image', 'mnist:test:0',
          '--box', '0,0,14,28', '--steps', '3', '--num', '2', '--classifier-scale', '2']
  edited = str(tmp_path / 'edited.npz')
  capsys.readouterr()
  assert cli.main(edit + ['--out', edited]) == 2  # an unconditional model: which class?
  assert '--label' in capsys.readouterr().err and not os.path.exists(edited)
  assert cli.main(edit + ['--label', '3', '--out', edited]) == 0
  assert np.load(edited)['images'].shape == (2, 28, 28, 1)

  # A failed retraining leaves the classifier as it was: bad input before any work, and a crash
  # while saving.
  clf = clf_lib.load_classifier(workdir)
  assert cli.main(['train-classifier', '--workdir', workdir, '--batch', '3']) == 2

  class Failing:
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def save(self, *args, **kwargs):
      raise OSError('disk full')

  monkeypatch.setattr(clf_lib.ocp, 'StandardCheckpointer', Failing)
  with pytest.raises(OSError, match='disk full'):
    clf_lib._save(directory, jax.tree.map(jnp.zeros_like, clf.params), clf.info, {})  # pylint: disable=protected-access
  monkeypatch.undo()
  again = clf_lib.load_classifier(workdir)
  assert jax.tree.all(jax.tree.map(np.array_equal, again.params, clf.params))
  with open(os.path.join(directory, clf_lib.ACCURACY_FILE)) as f:
    assert json.load(f) == result
