"""Data parallelism on 8 simulated CPU devices: same loss and update as one device; one compile."""

import chex
import jax
import numpy as np

from jaxgen import config as config_lib
from jaxgen.train import mesh as mesh_lib, trainer
from conftest import REPO

SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'


def random_batch(seed, n=8):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, 10, (n,)).astype(np.int32)}


def one_step(mesh, batch):
  s = trainer.setup(config_lib.load_config(SMOKE), mesh)
  step = trainer.compile_train_step(s)
  state, metrics = step(s.init_state(), mesh_lib.global_batch(batch, mesh))
  return jax.device_get(state), jax.device_get(metrics)


def test_eight_devices_match_one_device():
  assert jax.device_count() == 8, 'conftest sets 8 simulated CPU devices'
  batch = random_batch(0)
  state1, metrics1 = one_step(mesh_lib.make_mesh(jax.devices()[:1]), batch)
  state8, metrics8 = one_step(mesh_lib.make_mesh(), batch)
  np.testing.assert_allclose(metrics8['loss'], metrics1['loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics8['grad_norm'], metrics1['grad_norm'], rtol=1e-4)
  for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_batch_is_sharded_and_step_compiles_once():
  mesh = mesh_lib.make_mesh()
  s = trainer.setup(config_lib.load_config(SMOKE), mesh)
  step = trainer.compile_train_step(s, wrap=chex.assert_max_traces(n=1))
  state = s.init_state()
  for i in range(3):
    batch = mesh_lib.global_batch(random_batch(i), mesh)
    assert len(batch['image'].sharding.device_set) == 8
    state, metrics = step(state, batch)
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))
