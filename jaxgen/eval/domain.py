"""A small CNN classifier trained on the dataset itself: the domain feature extractor.

Inception features mean little on 28x28 grayscale digits, so "FID (MNIST
features)" and the classifier-based Inception-Score analogue use this network
instead: its penultimate activations are the features, its logits the class
posterior. It is trained once per machine and cached:

    jaxgen eval train-features --dataset mnist   # -> $JAXGEN_CACHE_DIR/features/mnist

and loaded with `load_domain_extractor`. A trained directory holds

    params/     Orbax checkpoint of the Flax variables {'params': ...}
    info.json   {dataset, test_accuracy, num_steps, feature_dim, ...}

`info.json` is written last and removed first when retraining, so it marks a
complete network: a directory without it counts as untrained.
"""

import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from jaxgen import data as data_lib
from jaxgen import images as images_lib
from jaxgen.errors import JaxgenError
from jaxgen.eval.cache import cache_dir
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.state import (OptimConfig, TrainState, create_train_state, make_optimizer,
                                make_train_step)

PyTree = Any
# images float32 [B, H, W, C] in [-1, 1] -> (features [B, F], logits [B, num_classes])
ExtractorFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]

# Datasets with a domain network; the architecture is sized for 28x28 grayscale digits.
SUPPORTED_DATASETS = ('mnist',)
FEATURE_DIM = 256
# About two epochs of MNIST at batch 128 (60000 * 2 / 128 = 937.5).
DEFAULT_NUM_STEPS = 940
PARAMS_SUBDIR = 'params'
INFO_FILE = 'info.json'
# Images per global eval batch (rounded up to a multiple of the device count).
EVAL_BATCH_SIZE = 1000


class DomainCNN(nn.Module):
  """conv32 -> pool -> conv64 -> pool -> conv128 -> dense `feature_dim` -> dense `num_classes`.

  Convolutions are 3x3, SAME, ReLU; pools are 2x2 max; 1.70M parameters,
  9.1M multiply-adds per image. Pooling before the wider convolutions needs
  3.4x fewer multiply-adds than convolving 64 channels at full resolution,
  which is what fits two epochs into ~2.5 minutes on a 2-core CPU; that run
  reaches 99.1-99.3% MNIST test accuracy (benchmarks/results/mnist_features.md).
  """

  num_classes: int = 10
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images float [B, 28, 28, 1] in [-1, 1] -> (features [B, feature_dim], logits [B, num_classes])."""
    x = nn.relu(nn.Conv(32, (3, 3), name='conv1')(images))  # [B, 28, 28, 32]
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 14, 14, 32]
    x = nn.relu(nn.Conv(64, (3, 3), name='conv2')(x))  # [B, 14, 14, 64]
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 7, 7, 64]
    x = nn.relu(nn.Conv(128, (3, 3), name='conv3')(x))  # [B, 7, 7, 128]
    x = x.reshape(x.shape[0], -1)  # [B, 6272]
    # Post-ReLU penultimate activations: the features FID compares.
    features = nn.relu(nn.Dense(self.feature_dim, name='features')(x))  # [B, F]
    logits = nn.Dense(self.num_classes, name='logits')(features)  # [B, num_classes]
    return features, logits


def _check_dataset(dataset: str) -> data_lib.DatasetSpec:
  if dataset not in SUPPORTED_DATASETS:
    raise JaxgenError(f'no domain feature network for dataset {dataset!r}; supported datasets '
                      f'are {", ".join(SUPPORTED_DATASETS)}.')
  return data_lib.dataset_spec(_data_config(dataset))


def _data_config(dataset: str) -> ml_collections.ConfigDict:
  # No flips: a mirrored digit is a different (or no) digit.
  return ml_collections.ConfigDict(dict(name=dataset, random_flip=False))


def make_model(dataset: str = 'mnist') -> DomainCNN:
  """The domain network for `dataset` (JaxgenError if it has none)."""
  spec = _check_dataset(dataset)
  return DomainCNN(num_classes=spec.num_classes)


def features_and_logits(params: PyTree, images: jax.Array,
                        model: DomainCNN | None = None) -> tuple[jax.Array, jax.Array]:
  """Features [B, F] and logits [B, num_classes] of images float [B, 28, 28, 1] in [-1, 1].

  `params` is the whole Flax variable dict ({'params': ...}), as trained and
  saved. Pure and jit-able.
  """
  return (model or DomainCNN()).apply(params, images)


def default_features_dir(dataset: str = 'mnist') -> str:
  """$JAXGEN_CACHE_DIR/features/<dataset>, the cache dir defaulting to ~/.cache/jaxgen."""
  _check_dataset(dataset)
  return cache_dir('features', dataset)


# ---------------------------------------------------------------------------- training


def _optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
  """Adam with a short warm-up and a cosine decay to zero over the run, unclipped: in a run
  of only two epochs, annealing the step size is what settles the weights, with no EMA."""
  warmup = min(100, num_steps // 10)
  return make_optimizer(OptimConfig(lr=learning_rate, warmup_steps=warmup,
                                    decay_steps=max(num_steps, warmup + 1), grad_clip=0.0))


def _loss_fn(model: DomainCNN):
  """Softmax cross-entropy: (params, batch, rng) -> (loss, {'loss', 'accuracy'})."""

  def loss_fn(params: PyTree, batch: dict[str, jax.Array], rng: jax.Array):
    del rng  # no dropout, no augmentation
    _, logits = model.apply(params, batch['image'])  # [b, num_classes]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
    accuracy = (jnp.argmax(logits, -1) == batch['label']).mean()
    return loss, {'loss': loss, 'accuracy': accuracy}

  return loss_fn


def evaluate_accuracy(params: PyTree, dataset: str = 'mnist', *, split: str = 'test',
                      model: DomainCNN | None = None, mesh: jax.sharding.Mesh | None = None,
                      batch_size: int = EVAL_BATCH_SIZE) -> tuple[float, int]:
  """(accuracy, number of examples) of `params` over the whole `split`, padding masked out."""
  model = model or make_model(dataset)
  mesh = mesh or mesh_lib.make_mesh()
  # Any batch size works: eval_batches pads the last batch and masks the padding.
  n = mesh.devices.size
  batch_size = -(-batch_size // n) * n
  replicated = mesh_lib.replicated(mesh)

  @jax.jit
  def eval_step(params: PyTree, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    _, logits = model.apply(params, batch['image'])  # [b, num_classes]
    correct = (jnp.argmax(logits, -1) == batch['label']) & batch['mask']
    return correct.sum(), batch['mask'].sum()

  params = jax.device_put(params, replicated)
  correct = total = 0
  for local in data_lib.eval_batches(_data_config(dataset), batch_size=batch_size, split=split):
    c, t = eval_step(params, mesh_lib.global_batch(local, mesh))
    # Device scalars: summing them queues work without waiting on each batch.
    correct, total = correct + c, total + t
  correct, total = int(jax.device_get(correct)), int(jax.device_get(total))
  return correct / max(total, 1), total


def fit_domain_classifier(dataset: str = 'mnist', *, num_steps: int = DEFAULT_NUM_STEPS,
                          batch_size: int = 128, seed: int = 0, learning_rate: float = 1e-3,
                          mesh: jax.sharding.Mesh | None = None,
                          progress: bool = True) -> tuple[PyTree, dict[str, Any]]:
  """Trains the domain network and measures its test accuracy; writes nothing.

  Returns (variables {'params': ...} as host numpy arrays, info) with info =
  {dataset, test_accuracy, num_test_examples, num_steps, batch_size, seed,
  feature_dim, num_classes, image_shape, train_seconds}. The batch is sharded
  over the 'data' axis of `mesh` (default: all devices); the state is replicated.
  """
  spec = _check_dataset(dataset)
  if num_steps < 1:
    raise JaxgenError(f'num_steps must be at least 1, got {num_steps}.')
  mesh = mesh or mesh_lib.make_mesh()
  mesh_lib.check_batch_size(batch_size, mesh)
  data_config = _data_config(dataset)
  data_lib.prepare_for(data_config)  # JaxgenError now, before any work, if the data cannot be had

  model = DomainCNN(num_classes=spec.num_classes)
  optimizer = _optimizer(learning_rate, num_steps)
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(seed))
  replicated = mesh_lib.replicated(mesh)

  def init_fn() -> TrainState:
    params = model.init(rng_init, jnp.zeros((1, *spec.image_shape), jnp.float32))
    return create_train_state(params, optimizer, rng_train)

  state = jax.jit(init_fn, out_shardings=replicated)()
  # ema_decay=0: the EMA copy just tracks the params; the cosine decay already
  # settles the weights, and evaluating the final params keeps one set to save.
  step_fn = mesh_lib.jit_train_step(make_train_step(_loss_fn(model), optimizer, ema_decay=0.0), mesh)
  batches = data_lib.train_batches(data_config, global_batch_size=batch_size, seed=seed)

  is_main = jax.process_index() == 0
  log_every = max(1, min(100, num_steps // 10))
  t0 = time.perf_counter()
  with tqdm.tqdm(total=num_steps, unit='step', desc=f'train {dataset} features',
                 disable=not (progress and is_main), dynamic_ncols=True) as bar:
    for step in range(num_steps):
      state, metrics = step_fn(state, mesh_lib.global_batch(next(batches), mesh))
      bar.update(1)
      if (step + 1) % log_every == 0 or step + 1 == num_steps:
        m = jax.device_get(metrics)  # only here: fetching every step would stall the pipeline
        if not np.isfinite(m['loss']):
          raise FloatingPointError(f'domain classifier loss became {m["loss"]} at step {step + 1}.')
        bar.set_postfix(loss=f'{m["loss"]:.4f}', acc=f'{m["accuracy"]:.3f}', refresh=False)
  params = state.params
  jax.block_until_ready(params)
  train_seconds = time.perf_counter() - t0

  accuracy, num_test = evaluate_accuracy(params, dataset, model=model, mesh=mesh)
  info = dict(dataset=dataset, test_accuracy=accuracy, num_test_examples=num_test,
              num_steps=num_steps, batch_size=batch_size, seed=seed,
              feature_dim=model.feature_dim, num_classes=model.num_classes,
              image_shape=list(spec.image_shape), train_seconds=round(train_seconds, 1))
  return jax.device_get(params), info


def save_domain_extractor(out_dir: str, params: PyTree, info: dict[str, Any]) -> None:
  """Writes `out_dir`/params (Orbax) and `out_dir`/info.json, replacing an earlier network.

  Collective over processes (Orbax saves from all); JSON from process 0 only.
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  info_path = os.path.join(out_dir, INFO_FILE)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(out_dir, exist_ok=True)
    # Unmark first: a crash while the params are rewritten must not leave an old info beside them.
    if os.path.exists(info_path):
      os.remove(info_path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(out_dir, PARAMS_SUBDIR), params, force=True)
    ckptr.wait_until_finished()
  if is_main:
    images_lib.atomic_write(info_path, lambda tmp: open(tmp, 'w').write(
        json.dumps(info, indent=2, sort_keys=True) + '\n'))


def train_domain_classifier(dataset: str = 'mnist', *, out_dir: str,
                            num_steps: int = DEFAULT_NUM_STEPS, batch_size: int = 128,
                            seed: int = 0, progress: bool = True) -> dict[str, Any]:
  """Trains the domain network of `dataset`, saves it in `out_dir`, returns its info.

  The backend of `jaxgen eval train-features`. Bad input (unknown dataset, a
  batch size not divisible by the device count, missing data) raises
  JaxgenError before anything is written. Returns {dataset, test_accuracy,
  num_test_examples, num_steps, batch_size, seed, feature_dim, num_classes,
  image_shape, train_seconds}, the contents of `out_dir`/info.json.
  """
  params, info = fit_domain_classifier(dataset, num_steps=num_steps, batch_size=batch_size,
                                       seed=seed, progress=progress)
  save_domain_extractor(out_dir, params, info)
  return info


# ---------------------------------------------------------------------------- loading


def load_domain_extractor(dataset: str = 'mnist',
                          directory: str | None = None) -> tuple[ExtractorFn, dict[str, Any]]:
  """(fn, info) of the trained domain network in `directory` (default: `default_features_dir`).

  fn(images float [B, 28, 28, 1] in [-1, 1]) -> (features float32 [B, 256],
  logits float32 [B, 10]) is jitted. The parameters are uncommitted device
  arrays, so fn runs wherever its input lives (host numpy, one device, or a
  batch sharded over a mesh). JaxgenError, naming the command that trains it,
  when no trained network is there.
  """
  spec = _check_dataset(dataset)
  model = DomainCNN(num_classes=spec.num_classes)
  directory = os.path.abspath(os.path.expanduser(directory or default_features_dir(dataset)))
  info_path = os.path.join(directory, INFO_FILE)
  params_path = os.path.join(directory, PARAMS_SUBDIR)
  train_cmd = f'jaxgen eval train-features --dataset {dataset}'
  if not (os.path.isfile(info_path) and os.path.isdir(params_path)):
    raise JaxgenError(f'no trained {dataset} feature network in {directory}; '
                      f'run `{train_cmd}` first.')
  with open(info_path) as f:
    info = json.load(f)
  if info.get('dataset') != dataset or info.get('feature_dim') != model.feature_dim:
    raise JaxgenError(f'{directory} holds a feature network for {info.get("dataset")!r} with '
                      f'{info.get("feature_dim")} features, not {dataset!r}; run `{train_cmd}` '
                      f'to retrain it.')

  # ShapeDtypeStructs without shardings: Orbax restores host numpy arrays,
  # independent of how many devices the saving run had.
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, *spec.image_shape), jnp.float32))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(params_path, abstract)
  params = jax.device_put(params)  # uncommitted: moved to wherever the images are

  apply = jax.jit(model.apply)

  def fn(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    if tuple(images.shape[1:]) != spec.image_shape or not jnp.issubdtype(images.dtype, jnp.floating):
      raise JaxgenError(f'the {dataset} feature network takes float images [B, '
                        f'{", ".join(map(str, spec.image_shape))}] in [-1, 1], got '
                        f'{images.dtype} {tuple(images.shape)}; scale uint8 images with x / 127.5 - 1.')
    return apply(params, images)

  return fn, info
