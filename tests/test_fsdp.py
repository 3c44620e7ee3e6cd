"""FSDP: parameters and optimizer state sharded over the 'fsdp' axis; elastic restore between meshes.

Every test runs on 8 simulated CPU devices (conftest).
"""

import jax
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen.errors import JaxgenError
from jaxgen.train import checkpoint, mesh as mesh_lib, trainer
from conftest import REPO

SMOKE = str(REPO / 'experiments' / 'ddpm_mnist.py') + ':smoke'


def random_batch(seed, n=8):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (n, 28, 28, 1)).astype(np.float32),
          'label': rng.integers(0, 10, (n,)).astype(np.int32)}


def two_steps(mesh):
  s = trainer.setup(config_lib.load_config(SMOKE), mesh)
  step = trainer.compile_train_step(s)
  state = s.init_state()
  losses = []
  for i in range(2):
    state, metrics = step(state, mesh_lib.global_batch(random_batch(i), mesh))
    losses.append(float(metrics['loss']))
  return state, losses


def sharded_fraction(tree) -> float:
  """Fraction of the elements of `tree` held in leaves split over 'fsdp'."""
  leaves = jax.tree.leaves(tree)
  split = sum(x.size for x in leaves if mesh_lib.FSDP in jax.tree.leaves(tuple(x.sharding.spec)))
  return split / sum(x.size for x in leaves)


def test_fsdp_spec_splits_the_largest_divisible_dimension():
  assert mesh_lib.fsdp_spec((3, 3, 32, 64), 8) == jax.sharding.PartitionSpec(None, None, None, 'fsdp')
  assert mesh_lib.fsdp_spec((48, 20), 4) == jax.sharding.PartitionSpec('fsdp')
  assert mesh_lib.fsdp_spec((3, 5), 4) == jax.sharding.PartitionSpec()  # nothing divides: replicated
  assert mesh_lib.fsdp_spec((), 8) == jax.sharding.PartitionSpec()
  assert mesh_lib.fsdp_spec((64,), 1) == jax.sharding.PartitionSpec()


def test_fsdp_gives_the_data_parallel_loss_and_update():
  fsdp = 4  # a 2 x 4 mesh: data and fsdp parallelism together
  dp_state, dp_losses = two_steps(mesh_lib.make_mesh())
  state, losses = two_steps(mesh_lib.make_mesh(fsdp=fsdp))
  assert dict(mesh_lib.make_mesh(fsdp=fsdp).shape) == {'data': 8 // fsdp, 'fsdp': fsdp}
  # Parameters, EMA and Adam moments really are split: each device holds 1/fsdp of them.
  for tree in (state.params, state.ema_params, state.opt_state):
    assert sharded_fraction(tree) > 0.99
  kernel = max(jax.tree.leaves(state.params), key=lambda x: x.size)
  assert kernel.addressable_shards[0].data.size == kernel.size // fsdp
  assert sharded_fraction(dp_state.params) == 0.0
  np.testing.assert_allclose(losses, dp_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(dp_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-6)


def test_fsdp_must_divide_the_device_count():
  with pytest.raises(JaxgenError, match=r'train.fsdp=3 must be a positive divisor of the device count 8'):
    trainer.setup(config_lib.load_config(SMOKE, ['train.fsdp=3']))


def leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow  # CI time: three meshes, ~100 s
def test_elastic_restore_between_mesh_shapes(mnist_env, tmp_path):
  overrides = ['train.num_steps=6', 'train.checkpoint_every=6', 'train.sample_every=0',
               'train.log_every=6']
  config = config_lib.load_config(SMOKE, overrides)
  one_device = mesh_lib.make_mesh(jax.devices()[:1])

  # Written by 8 devices (data parallel) ...
  eight = trainer.train_and_evaluate(config, str(tmp_path / 'eight'))
  for mesh, fsdp_split in ((one_device, False), (mesh_lib.make_mesh(fsdp=8), True)):
    # ... restored onto 1 device, and onto FSDP meshes.
    s = trainer.setup(config, mesh)
    restored = checkpoint.restore_latest(str(tmp_path / 'eight'), lambda _: s.abstract_state)
    assert restored.step == 6 and leaves_equal(restored.state, eight)
    leaf = max(jax.tree.leaves(restored.state.params), key=lambda x: x.size)
    assert leaf.sharding.mesh.devices.size == mesh.devices.size
    assert (sharded_fraction(restored.state.params) > 0.99) == fsdp_split

  # Written by 1 device, resumed on 8 devices with FSDP: continues where it stopped.
  trainer.train_and_evaluate(config, str(tmp_path / 'one'), mesh=one_device)
  longer = config_lib.load_config(SMOKE, overrides + ['train.num_steps=8'])
  resumed = trainer.train_and_evaluate(longer, str(tmp_path / 'one'),
                                       mesh=mesh_lib.make_mesh(fsdp=8))
  straight = trainer.train_and_evaluate(longer, str(tmp_path / 'eight'))  # the 8-device run, resumed
  assert int(resumed.step) == 8 and sharded_fraction(resumed.params) > 0.99
  # Different meshes add in different orders: equal up to float noise (a different
  # batch or a lost step would move parameters by ~lr = 2e-3).
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)
