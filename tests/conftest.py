"""Test setup: 8 simulated CPU devices for every test, and the shared MNIST files.

The suite runs in two worker processes (`pytest -n 2 --dist loadfile`, the
README's command): a file's tests share a worker, so a module fixture (a
trained smoke run) is built once.

XLA_FLAGS must be set before jax is imported anywhere, hence here. A
persistent compilation cache, fresh for each test session and inherited by
the tests' subprocesses, compiles the smoke models once instead of once per
test and process.
"""

import fcntl
import os
import pathlib
import subprocess
import sys
import tempfile

DEVICES_FLAG = '--xla_force_host_platform_device_count=8'
# Optimisation level 0 of XLA's CPU backend: the suite is compile-bound (tiny shapes), and LLVM's
# optimisation passes were about 40% of its time.
os.environ.setdefault('XLA_FLAGS', f'{DEVICES_FLAG} --xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='jaxgen-test-jit-'))

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def optimised_jit(fun, **kwargs):
  """jax.jit at XLA's optimisation level 2, for programs that run long (many steps, big sums)
  rather than once: level 0, the suite's (for compile time), makes them several times slower."""
  import jax  # pylint: disable=g-import-not-at-top (XLA_FLAGS first)
  return jax.jit(fun, compiler_options={'xla_backend_optimization_level': 2}, **kwargs)


def manual_dir() -> pathlib.Path | None:
  """Where the original MNIST files are: $JAXGEN_MANUAL_DIR or ../shared/data."""
  for candidate in (os.environ.get('JAXGEN_MANUAL_DIR'), REPO.parent / 'shared' / 'data'):
    if candidate and (pathlib.Path(candidate) / 'mnist' / 'train-images-idx3-ubyte.gz').exists():
      return pathlib.Path(candidate)
  return None


@pytest.fixture(scope='session')
def mnist_env(tmp_path_factory):
  """Points JAXGEN_MANUAL_DIR/JAXGEN_DATA_DIR at the shared MNIST files and a session data dir."""
  md = manual_dir()
  if md is None:
    message = 'MNIST files not found (set JAXGEN_MANUAL_DIR or put them in ../shared/data/mnist).'
    if os.environ.get('CI'):
      pytest.fail(message)  # CI always has them: a skip there would hide the end-to-end tests
    pytest.skip(message)
  data_dir = os.environ.get('JAXGEN_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))
  worker = os.environ.get('PYTEST_XDIST_WORKER')
  if worker:  # pytest -n: each worker prepares its own copy (two writers would race)
    data_dir = os.path.join(data_dir, worker)
  saved = {k: os.environ.get(k) for k in ('JAXGEN_MANUAL_DIR', 'JAXGEN_DATA_DIR')}
  os.environ['JAXGEN_MANUAL_DIR'] = str(md)
  os.environ['JAXGEN_DATA_DIR'] = data_dir
  yield {'manual_dir': str(md), 'data_dir': data_dir}
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope='session')
def mnist_features(mnist_env, tmp_path_factory) -> str:
  """A JAXGEN_CACHE_DIR holding an MNIST feature network of 80 steps (~0.96 test accuracy) and
  its reference statistics of mnist:train (60,000 images).

  Made once per test session, by whichever worker asks first (the others wait on a lock): the
  network by the public command `jaxgen eval train-features`, the statistics by
  `evaluate.reference`, in subprocesses at XLA's optimisation level 1, since both are bound by
  run time, which level 0 (the suite's, for compile time) doubles. Tests only read them. The
  sharded training path itself is the trainer's, tested on eight devices in test_sharding.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # the session's directory, above each worker's own
  cache = root / 'shared_cache'
  with open(root / 'shared_cache.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not (cache / 'complete').exists():
      level1 = '--xla_backend_optimization_level=1'
      reference = ('from jaxgen.eval import evaluate; '
                   "evaluate.reference('mnist:train', evaluate.get_extractor('mnist'))")
      # The training on one device (its batch of 128 split eight ways costs 50% more CPU here,
      # and gives the same network: 0.9588 either way); the extraction on eight (20% faster).
      for command, flags in ((['-m', 'jaxgen.cli', 'eval', 'train-features', '--dataset', 'mnist',
                               '--num-steps', '80'], level1),
                             (['-c', reference], f'{DEVICES_FLAG} {level1}')):
        env = dict(os.environ, JAXGEN_CACHE_DIR=str(cache), XLA_FLAGS=flags)
        result = subprocess.run([sys.executable, *command], env=env, capture_output=True,
                                text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
      (cache / 'complete').touch()
  return str(cache)
