"""Tests of diffusion editing: inpainting, SDEdit, DDIM inversion and interpolation, and `jaxgen edit`.

The exact tests use Gaussian data x0 ~ N(mu, var) per pixel and its exact
noise predictor (`test_samplers.gaussian_eps_fn`), with clip_x0 off, so that
DDIM inversion and decoding are maps of the same probability-flow ODE. Each
test compiles one program (a jit over several outputs) to stay fast.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from jaxgen import cli
from jaxgen.diffusion import editing, samplers
from jaxgen.diffusion.schedules import linear_schedule
from jaxgen.errors import JaxgenError
from test_samplers import gaussian_eps_fn

T = 1000
SCHEDULE = linear_schedule(T)
SHAPE = (4, 4, 2)  # H, W, C of the tiny images
_RS = np.random.RandomState(0)
MU = (0.6 * np.sin(np.arange(np.prod(SHAPE)))).reshape(SHAPE).astype(np.float32)
STD = _RS.uniform(0.3, 0.5, SHAPE).astype(np.float32)
EPS = gaussian_eps_fn(SCHEDULE, MU, STD ** 2)


def _data(n: int, seed: int = 1) -> np.ndarray:
  """n draws [n, H, W, C] of the Gaussian data, clipped to the image range (numpy: no eager jax ops)."""
  z = np.random.RandomState(seed).randn(n, *SHAPE).astype(np.float32)
  return np.clip(MU + STD * z, -1.0, 1.0)


def test_inpaint_keeps_known_pixels_exactly():
  images = _data(3)  # [3, H, W, C]
  masks = np.zeros((3, *SHAPE), bool)
  masks[0, :, :2, :] = True  # left half known
  masks[0, :, :, 0] = True  # channel 0 known everywhere: per-channel masks
  masks[1] = True  # everything known
  rng = jax.random.key(0)

  @jax.jit
  def run(rng, images, masks):
    painted = editing.inpaint(EPS, SCHEDULE, rng, images, masks, num_steps=20, clip_x0=False)
    sampled = samplers.ddim_sample(EPS, SCHEDULE, rng, images.shape, num_steps=20, eta=1.0,
                                   clip_x0=False)
    return painted, sampled

  painted, sampled = map(np.asarray, run(rng, images, masks))
  assert painted.shape == images.shape and np.all(np.isfinite(painted))
  np.testing.assert_array_equal(painted[masks], images[masks])  # known pixels: the image, exactly
  np.testing.assert_array_equal(painted[1], images[1])  # a full mask returns the image
  unknown = ~masks[0]
  assert unknown.sum() == 8  # channel 1 of the right half
  assert np.all(np.abs(painted[0][unknown] - images[0][unknown]) > 1e-3)
  # An empty mask is plain DDIM sampling with the same key (same x_T and step noise).
  np.testing.assert_allclose(painted[2], sampled[2], rtol=1e-5, atol=1e-5)


def test_inversion_then_decoding_reconstructs_and_improves_with_steps():
  images = _data(8)

  @jax.jit
  def round_trips(images):
    out = {}
    for k in (10, 100):
      latents = editing.ddim_invert(EPS, SCHEDULE, images, num_steps=k)
      out[k] = (latents, editing.ddim_decode(EPS, SCHEDULE, latents, num_steps=k))
    return out

  out = round_trips(images)
  err = {k: float(np.abs(np.asarray(rec) - images).max()) for k, (_, rec) in out.items()}
  # Measured 0.47 and 0.048 (max over 256 values): first order in 1 / num_steps.
  assert err[100] < 0.08 and err[10] < 0.7
  assert err[100] < err[10] / 5
  # The latents are the data mapped to x_{T-1} ~ N(~0, ~1): nothing like the images.
  latents = np.asarray(out[100][0])
  assert 0.7 < latents.std() < 1.3 and abs(latents.mean()) < 0.25


def test_interpolation_endpoints_are_the_reconstructions_and_one_scan_decodes_the_path():
  a, b = _data(2, seed=2)
  num = 5
  interpolate = functools.partial(editing.interpolate, EPS, SCHEDULE, num=num, num_steps=20)

  @jax.jit
  def run(a, b):
    latents = editing.ddim_invert(EPS, SCHEDULE, jnp.stack([a, b]), num_steps=20)
    return interpolate(a, b), editing.ddim_decode(EPS, SCHEDULE, latents, num_steps=20)

  path, recon = map(np.asarray, run(a, b))
  assert path.shape == (num, *SHAPE) and np.all(np.isfinite(path))
  np.testing.assert_allclose(path[0], recon[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(path[-1], recon[1], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(path[[0, -1]], np.stack([a, b]), atol=0.35)  # inversion error, 0.24 at K = 20
  assert np.abs(path[2] - path[0]).max() > 0.1 and np.abs(path[2] - path[-1]).max() > 0.1
  # Two scans: the inversion of [a, b] and the decoding of all num points in one batch.
  jaxpr = jax.make_jaxpr(interpolate)(a, b).jaxpr
  scans = [e for e in jaxpr.eqns if e.primitive.name == 'scan']
  assert sorted(e.outvars[0].aval.shape[0] for e in scans) == [2, num]


def test_img2img_small_strength_stays_close_and_eta0_is_deterministic():
  images = _data(4, seed=3)
  edit = functools.partial(editing.img2img, EPS, SCHEDULE, num_steps=50, clip_x0=False)

  @jax.jit
  def run(rng, images):
    return (edit(rng, images, strength=0.02), edit(rng, images, strength=1.0),
            samplers.ddim_sample(EPS, SCHEDULE, rng, images.shape, num_steps=50, clip_x0=False))

  rng = jax.random.key(4)
  weak, strong, sampled = map(np.asarray, run(rng, images))
  weak2, _, _ = run(rng, images)
  other, _, _ = run(jax.random.key(5), images)
  np.testing.assert_array_equal(weak, weak2)  # eta = 0: a function of the key and the images
  assert np.abs(np.asarray(other) - weak).max() > 1e-3  # ... whose noise comes from the key
  # RMS change measured 0.07 at strength 0.02 (t0 = 20, noise std 0.08), 0.55 at strength 1.
  rms = lambda x: float(np.sqrt(np.mean(np.square(x - images))))
  assert rms(weak) < 0.12 and rms(strong) > 0.4
  # Strength 1 starts at T - 1 from sqrt(abar) x + sqrt(1 - abar) z ~ z: DDIM sampling.
  np.testing.assert_allclose(strong, sampled, atol=0.02)


def test_img2img_timesteps():
  timesteps, prev = editing.img2img_timesteps(T, 50, 1.0)
  full, full_prev = samplers.ddim_timesteps(T, 50)
  np.testing.assert_array_equal(timesteps, full)
  np.testing.assert_array_equal(prev, full_prev)
  for strength in (0.01, 0.1, 0.37, 0.6, 0.99):
    timesteps, prev = editing.img2img_timesteps(T, 50, strength)
    # The grid timestep nearest strength (T - 1), then the rest of the grid.
    assert abs(timesteps[0] - strength * (T - 1)) <= (T - 1) / 49 / 2 + 1
    np.testing.assert_array_equal(timesteps, full[-len(timesteps):])
    assert prev[-1] == -1 and abs(len(timesteps) - strength * 49) <= 1.5


@pytest.mark.parametrize('call, match', [
    (lambda x, m: editing.img2img(EPS, SCHEDULE, jax.random.key(0), x, strength=0.0, num_steps=5),
     'strength'),
    (lambda x, m: editing.img2img(EPS, SCHEDULE, jax.random.key(0), x, strength=1.5, num_steps=5),
     'strength'),
    (lambda x, m: editing.img2img(EPS, SCHEDULE, jax.random.key(0), x, strength=True, num_steps=5),
     'strength'),
    (lambda x, m: editing.inpaint(EPS, SCHEDULE, jax.random.key(0), x, m[..., :1, :], num_steps=5),
     'masks'),
    (lambda x, m: editing.inpaint(EPS, SCHEDULE, jax.random.key(0), x,
                                  np.concatenate([m, m[..., :1]], -1), num_steps=5), 'masks'),
    (lambda x, m: editing.inpaint(EPS, SCHEDULE, jax.random.key(0), x, m[:1], num_steps=5), 'masks'),
    (lambda x, m: editing.inpaint(EPS, SCHEDULE, jax.random.key(0), x, m, num_steps=0), 'steps'),
    (lambda x, m: editing.ddim_invert(EPS, SCHEDULE, x[0], num_steps=5), r'\[B, H, W, C\]'),
    (lambda x, m: editing.interpolate(EPS, SCHEDULE, x[0], x[1], num=1, num_steps=5), 'num'),
    (lambda x, m: editing.interpolate(EPS, SCHEDULE, x[0], x[1, :2], num=3, num_steps=5), 'a and b'),
])
def test_bad_arguments_raise(call, match):
  x = _data(2)
  with pytest.raises(JaxgenError, match=match):
    call(x, np.ones_like(x))


def test_model_methods_with_labels_and_guidance():
  # Shapes only (jax.eval_shape traces, nothing compiles): a class model guided with scale 2.
  from jaxgen import config as config_lib
  from jaxgen.diffusion import model as model_lib
  config = config_lib.load_config(str(REPO / 'experiments' / 'ddpm_cfg_mnist.py') + ':smoke',
                                  ['model.ch_mult=(1,)', 'model.attn_resolutions=()'])
  model = model_lib.build(config, (28, 28, 1))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), {'image': jnp.zeros((1, 28, 28, 1))}))
  x, one = (jax.ShapeDtypeStruct(s, jnp.float32) for s in ((3, 28, 28, 1), (28, 28, 1)))
  rng = jax.random.key(0)
  opts = dict(guidance=2.0, steps=3)
  assert jax.eval_shape(lambda p, x: model.inpaint(p, rng, x, x, **opts), params, x).shape == x.shape
  assert jax.eval_shape(lambda p, x: model.img2img(p, rng, x, strength=0.5, label=3, **opts),
                        params, x).shape == x.shape
  assert jax.eval_shape(lambda p, a, b: model.interpolate(p, a, b, num=4, label=3, **opts),
                        params, one, one).shape == (4, 28, 28, 1)
  with pytest.raises(JaxgenError, match='--label'):  # one class for the whole path
    model.interpolate(params, np.zeros((28, 28, 1)), np.zeros((28, 28, 1)), num=4)
  with pytest.raises(JaxgenError, match=r'\[B, 28, 28, 1\]'):
    model.img2img(params, rng, np.zeros((2, 28, 28, 3)), strength=0.5)


@pytest.fixture(scope='module')
def smoke_run(mnist_env, tmp_path_factory):
  """A 2-step ddpm_mnist smoke run (unconditional, T = 100) with a one-level UNet (fast compiles)."""
  workdir = str(tmp_path_factory.mktemp('edit') / 'run')
  assert cli.main(['train', '--config', str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke',
                   '--workdir', workdir, '--config.train.num_steps=2', '--config.train.sample_every=0',
                   '--config.train.checkpoint_every=2', '--config.model.ch_mult=(1,)',
                   '--config.model.attn_resolutions=()']) == 0
  return workdir


def test_cli_edit(smoke_run, tmp_path, capsys):
  base = ['edit', '--workdir', smoke_run, '--image', 'mnist:test:0,1', '--steps', '5',
          '--params', 'raw']
  out = tmp_path / 'inpaint.npz'
  assert cli.main(base + ['--task', 'inpaint', '--box', '8,8,20,20', '--num', '2',
                          '--out', str(out)]) == 0
  painted = np.load(out)['images']  # [2 images x 2 results, 28, 28, 1] uint8
  assert painted.shape == (4, 28, 28, 1) and painted.dtype == np.uint8
  from jaxgen import data as data_lib
  import ml_collections
  source = data_lib.prepare_for(ml_collections.ConfigDict(dict(name='mnist'))).as_data_source('test')
  originals = np.repeat(np.stack([source[i]['image'] for i in (0, 1)]), 2, axis=0)
  keep = np.ones((28, 28), bool)
  keep[8:20, 8:20] = False
  np.testing.assert_array_equal(painted[:, keep], originals[:, keep])
  assert np.any(painted[:, ~keep] != originals[:, ~keep])

  out = tmp_path / 'img2img.png'
  assert cli.main(base + ['--task', 'img2img', '--strength', '0.5', '--num', '3',
                          '--out', str(out)]) == 0
  assert Image.open(out).size == (4 * 30 + 2, 2 * 30 + 2)  # rows: original, 3 results

  out = tmp_path / 'interpolate.png'
  assert cli.main(base + ['--task', 'interpolate', '--num', '4', '--out', str(out)]) == 0
  assert Image.open(out).size == (6 * 30 + 2, 30 + 2)  # a, 4 path points, b
  assert 'Wrote interpolate (4 images)' in capsys.readouterr().out

  bad = [
      ['--task', 'img2img', '--strength', '1.5'],
      ['--task', 'img2img', '--box', '0,0,4,4'],
      ['--task', 'inpaint'],
      ['--task', 'inpaint', '--box', '8,8,4,20'],
      ['--task', 'inpaint', '--box', '0,0,29,10'],  # past the 28x28 image: found after loading
      ['--task', 'interpolate', '--num', '1'],
      ['--task', 'interpolate', '--image2', 'mnist:test:2'],  # --image holds two
      ['--task', 'img2img', '--image', 'mnist:test:x'],
  ]
  for flags in bad:
    out = tmp_path / 'bad.png'
    capsys.readouterr()
    assert cli.main(base + flags + ['--out', str(out)]) == 2, flags
    err = capsys.readouterr().err
    assert err.startswith('jaxgen: error: ') and err.count('\n') == 1, err
    assert not out.exists()
  assert cli.main(base + ['--task', 'img2img', '--out', str(tmp_path / 'x.jpg')]) == 2
  assert sorted(os.listdir(tmp_path)) == ['img2img.png', 'inpaint.npz', 'interpolate.png']
