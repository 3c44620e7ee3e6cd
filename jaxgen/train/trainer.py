"""The training loop shared by every family: `train_and_evaluate(config, workdir)`.

One jit-compiled step over a device mesh (state donated and, with
`train.fsdp > 1`, sharded; batch split over all devices), metrics fetched to
the host only every `log_every` steps, sample grids from the EMA parameters,
asynchronous Orbax checkpoints, a save on SIGTERM (and SIGINT in one process),
and resumption from the newest readable checkpoint when the same command runs
again. The checkpoint holds the input position (examples consumed), so a
resumed run sees exactly the examples an uninterrupted run would.
"""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen import families
from jaxgen import images as images_lib
from jaxgen.errors import JaxgenError
from jaxgen.train import checkpoint, mesh as mesh_lib
from jaxgen.train.state import OptimConfig, TrainState, create_train_state, make_optimizer, make_train_step
from jaxgen.train.writers import MetricWriter

# Top-level config keys the trainer itself reads; each family checks its own sections.
TOP_LEVEL_KEYS = ('family', 'seed', 'data', 'optim', 'train')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The `config.train` section."""
  batch_size: int = 128  # global, over all devices and processes
  num_steps: int = 800_000
  ema_decay: float = 0.9999
  log_every: int = 100
  checkpoint_every: int = 5000
  keep_checkpoints: int = 3
  sample_every: int = 10_000  # 0: no sample grids during training
  num_grid: int = 64  # images in each sample grid
  eval_every: int = 0  # 0: no evaluation during training
  eval_num: int = 1000  # samples per evaluation
  eval_metrics: str = 'fid'  # comma-separated: fid,kid,is,pr
  eval_features: str = ''  # 'inception' | 'mnist'; '' picks by dataset
  keep_best: str = ''  # metric whose best checkpoint is kept in WORKDIR/best ('fid', 'is', ...)
  fsdp: int = 1  # devices that share each parameter (the mesh's 'fsdp' axis); 1: data parallel
  nonfinite: str = 'stop'  # NaN/inf loss or gradients: 'stop' the run, or 'skip' the step and count it


def example_batch(image_shape: tuple[int, ...], batch_size: int = 1) -> dict[str, jax.Array]:
  """A zero batch with the shapes the models are built for."""
  return {'image': jnp.zeros((batch_size, *image_shape), jnp.float32),
          'label': jnp.zeros((batch_size,), jnp.int32)}


@dataclasses.dataclass
class Setup:
  """Everything a run needs, built and checked before anything is written."""
  config: ml_collections.ConfigDict
  train: TrainConfig
  model: families.Model
  mesh: jax.sharding.Mesh
  init_state: Any  # jitted () -> TrainState, born with its shardings on the mesh
  abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings
  state_sharding: Any  # TrainState of NamedShardings (mesh_lib.state_shardings)
  step_fn: Any  # the pure train_step(state, batch) -> (state, metrics), before jit


def setup(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None) -> Setup:
  """Validates `config` and builds the model, mesh and state constructors (no writes).

  `mesh` defaults to a ('data', 'fsdp') mesh over every device with
  `train.fsdp` devices on the 'fsdp' axis; a given mesh decides the sharding.
  """
  unknown = sorted(set(config.keys()) - set(TOP_LEVEL_KEYS) - set(families.config_sections(config)))
  if unknown:
    raise JaxgenError(f'unknown config key {unknown[0]!r}; top-level keys are '
                      f'{", ".join(sorted(set(TOP_LEVEL_KEYS) | set(families.config_sections(config))))}.')
  spec = data_lib.dataset_spec(config.data)
  model = families.build(config, spec.image_shape)
  train_cfg = config_lib.section(config, 'train', TrainConfig)
  if train_cfg.nonfinite not in ('stop', 'skip'):
    raise JaxgenError(f'train.nonfinite={train_cfg.nonfinite!r} must be stop or skip.')
  skip = train_cfg.nonfinite == 'skip'
  mesh = mesh or mesh_lib.make_mesh(fsdp=train_cfg.fsdp)
  if hasattr(model, 'train_fns'):  # a family with its own step (a GAN: two players, two optimizers)
    create_state, step_fn = model.train_fns(train_cfg.ema_decay, skip)
  else:
    # Without an 'fsdp' axis the gradients are not sharded: their norm can be one reduction.
    fused = dict(mesh.shape).get('fsdp', 1) == 1
    optimizer = make_optimizer(config_lib.section(config, 'optim', OptimConfig), fused_norm=fused)
    create_state = functools.partial(create_train_state, optimizer=optimizer)
    step_fn = make_train_step(model.loss, optimizer, train_cfg.ema_decay, skip_nonfinite=skip,
                              fused_norm=fused)
  mesh_lib.check_batch_size(train_cfg.batch_size, mesh)
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(config.seed))

  def init_fn() -> TrainState:
    params = model.init(rng_init, example_batch(spec.image_shape))
    return create_state(params, rng=rng_train)

  shapes = jax.eval_shape(init_fn)
  shardings = mesh_lib.state_shardings(shapes, mesh)
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          shapes, shardings)
  return Setup(config, train_cfg, model, mesh, jax.jit(init_fn, out_shardings=shardings),
               abstract, shardings, step_fn)


def compile_train_step(s: Setup, wrap=lambda f: f):
  """The jitted `train_step(state, batch)`: state donated (sharded as `s.state_sharding`), batch split.

  `wrap` decorates the pure step before jit (tests pass a trace counter).
  """
  return mesh_lib.jit_train_step(wrap(s.step_fn), s.mesh, s.state_sharding)


@contextlib.contextmanager
def _stop_requests() -> Iterator[Callable[[int], bool]]:
  """Yields `should_stop(step)`: True once SIGTERM (or, in one process, SIGINT) has arrived.

  In one process a handler records the signal. With several processes, JAX's
  preemption service catches SIGTERM on any of them and every process reaches
  the same step at which to stop (`reached_preemption_sync_point`), so that
  they save the same checkpoint together.
  """
  if jax.process_count() > 1:
    yield multihost_utils.reached_preemption_sync_point
    return
  received: list[int] = []
  previous = {}
  for sig in (signal.SIGTERM, signal.SIGINT):
    try:
      previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread: no handlers, nothing to restore
      pass
  try:
    yield lambda step: bool(received)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def _restore(s: Setup, workdir: str) -> checkpoint.Restored | None:
  """The newest readable checkpoint of `workdir`, checked to be of this model, on this mesh."""

  def abstract_state(saved: ml_collections.ConfigDict):
    checkpoint.check_same_model(saved, s.config, workdir)
    return s.abstract_state

  return checkpoint.restore_latest(workdir, abstract_state)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       mesh: jax.sharding.Mesh | None = None) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest readable checkpoint; returns the final state.

  Checks everything (config, checkpoints, data) before the first write.
  """
  s = setup(config, mesh)
  is_main = jax.process_index() == 0
  restored = _restore(s, workdir)
  data_lib.prepare_for(config.data)  # raises, before any write, if the data cannot be had
  evaluator = Evaluator.create(s, workdir) if s.train.eval_every else None
  if jax.process_count() > 1:
    # Every process has looked at the workdir before any process writes to it;
    # otherwise they can see different checkpoint states and take different
    # (collective) Orbax paths.
    multihost_utils.sync_global_devices('jaxgen:checked-workdir')

  os.makedirs(workdir, exist_ok=True)
  if is_main:
    if restored and restored.damaged:
      checkpoint.set_aside(workdir, restored.damaged)
    images_lib.atomic_write(os.path.join(workdir, 'config.json'),
                            lambda tmp: open(tmp, 'w').write(config_lib.to_json(config)))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('jaxgen:set-aside')  # before any manager lists the steps
  mngr = checkpoint.open_manager(workdir, max_to_keep=s.train.keep_checkpoints)
  mesh, tc = s.mesh, s.train
  if restored is None:
    state, examples_seen = s.init_state(), 0
  else:
    state, examples_seen = restored.state, restored.examples_seen
    print(f'Resuming from step {restored.step} in {workdir}.', flush=True)
  start = int(jax.device_get(state.step))
  skipped = int(jax.device_get(state.skipped))

  step_fn = compile_train_step(s)
  # Replicated output, so every process can fetch the grid (process 0 writes it).
  grid_fn = jax.jit(lambda params, rng: s.model.sample(params, rng, tc.num_grid),
                    out_shardings=mesh_lib.replicated(mesh))
  batches = data_lib.train_batches(config.data, global_batch_size=tc.batch_size,
                                   seed=config.seed, start_example=examples_seen)
  writer = MetricWriter(workdir, enabled=is_main)
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  last_saved = start
  last_flush = time.perf_counter()
  bar = tqdm.tqdm(total=tc.num_steps, initial=start, unit='step', disable=not is_main,
                  dynamic_ncols=True, desc='train')

  def flush(step: int) -> None:
    """Fetches pending metrics, stops on NaN/inf (or counts skipped steps), logs the interval's mean."""
    nonlocal last_flush, skipped
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending.clear()
    good = []
    for at, metrics in fetched:
      was_skipped = metrics.pop('skipped', 0) > 0  # reported by steps built with skip_nonfinite
      bad = sorted((k for k, v in metrics.items() if not np.isfinite(v)), key=lambda k: k != 'loss')
      if was_skipped:
        skipped += 1
        if is_main:
          bar.write(f'jaxgen: warning: {bad[0] if bad else "a value"} was not finite at step {at}; '
                    f'the step was skipped ({skipped} so far).', file=sys.stderr)
      elif bad:
        raise JaxgenError(f'{bad[0]} became {metrics[bad[0]]} at step {at}; training stopped and '
                          f'the last checkpoint (step {last_saved}) in {workdir} is kept.')
      else:
        good.append(metrics)
    mean = {k: float(np.mean([m[k] for m in good])) for k in fetched[-1][1]} if good else {}
    now = time.perf_counter()
    mean['steps_per_sec'] = len(fetched) / max(now - last_flush, 1e-9)
    if tc.nonfinite == 'skip':
      mean['skipped_steps'] = skipped
    last_flush = now
    writer.scalars(step, mean)
    bar.set_postfix(loss=f"{mean.get('loss', float('nan')):.4f}", refresh=False)

  def save(step: int) -> None:
    nonlocal last_saved
    flush(step)
    checkpoint.save(mngr, state, config, examples_seen)
    last_saved = step

  try:
    with _stop_requests() as should_stop:
      for step in range(start, tc.num_steps):
        if should_stop(step):
          print(f'Received a stop request: saving step {step} and exiting.', flush=True)
          break
        batch = mesh_lib.global_batch(next(batches), mesh)
        state, metrics = step_fn(state, batch)
        examples_seen += tc.batch_size
        pending.append((step, metrics))
        done = step + 1
        bar.update(1)
        if done % tc.log_every == 0:
          flush(done)
        if done % tc.checkpoint_every == 0:
          save(done)
        if tc.sample_every and done % tc.sample_every == 0:
          write_grid(workdir, done, grid_fn, state, writer)
        if evaluator and done % tc.eval_every == 0:
          flush(done)
          evaluator(state, done, writer, config, examples_seen)
      done = int(jax.device_get(state.step))
      if done != last_saved:
        save(done)
  finally:
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    if evaluator:
      evaluator.close()
    writer.close()
  return state


def write_grid(workdir: str, step: int, grid_fn, state: TrainState, writer: MetricWriter) -> None:
  """Samples from the EMA parameters and writes `WORKDIR/samples/step_XXXXXXX.png`."""
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0x5A3)
  images = images_lib.to_uint8(jax.device_get(grid_fn(state.ema_params, rng)))
  if writer.enabled:
    images_lib.save_grid(os.path.join(workdir, 'samples', f'step_{step:07d}.png'), images)
    writer.image(step, 'samples', images_lib.make_grid(images))


# Metrics where larger is better; the others (FID, KID) are minimised.
HIGHER_IS_BETTER = ('is', 'precision', 'recall')


@dataclasses.dataclass
class Evaluator:
  """Evaluates the EMA parameters during training and keeps the best checkpoint.

  Samples `train.eval_num` images in fixed-shape batches (one compile), streams
  them through the feature network and logs the metrics as `eval/<name>`.
  With `train.keep_best`, the state with the best value so far is saved to
  `WORKDIR/best/` (one checkpoint) and its value to `WORKDIR/best/best.json`.
  """
  setup: Setup
  workdir: str
  extractor: Any
  reference: Any
  metrics: tuple[str, ...]
  sample_fn: Any
  batch: int
  best_key: str | None
  best_value: float | None
  best_mngr: Any

  @classmethod
  def create(cls, s: Setup, workdir: str) -> 'Evaluator':
    """Checks the options and loads the feature network and reference (no writes to the run)."""
    from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
    tc = s.train
    if jax.process_count() > 1:
      # Sampling and feature extraction fetch whole arrays to the host, which one
      # process cannot do for arrays spread over several.
      raise JaxgenError('evaluation during training runs in one process only; set '
                        'train.eval_every=0 and run `jaxgen eval --workdir` on the checkpoints.')
    metrics = evaluate.parse_metrics(tc.eval_metrics)
    keep = tc.keep_best.lower()
    names = {'fid': 'fid', 'kid': 'kid', 'is': 'is', 'precision': 'pr', 'recall': 'pr'}
    if keep and names.get(keep) not in metrics:
      raise JaxgenError(f'train.keep_best={tc.keep_best!r} must be one of the evaluated metrics '
                        f'({tc.eval_metrics}); precision and recall come with pr.')
    dataset = s.config.data.name
    extractor = evaluate.get_extractor(tc.eval_features or evaluate.default_features(dataset))
    reference = evaluate.reference(f'{dataset}:train', extractor) if set(metrics) - {'is'} else None
    n_dev = s.mesh.devices.size
    batch = -(-min(tc.eval_num, 256) // n_dev) * n_dev
    sharding = mesh_lib.batch_sharding(s.mesh)
    sample_fn = jax.jit(lambda params, rng: s.model.sample(params, rng, batch, sharding=sharding),
                        out_shardings=sharding)
    best_key = best_value = best_mngr = None
    if keep:
      best_key = {'fid': 'FID', 'kid': 'KID', 'is': 'IS'}.get(keep, keep) + extractor.label
      best_json = os.path.join(checkpoint.checkpoint_dir(workdir, 'best'), 'best.json')
      if os.path.isfile(best_json):
        best_value = json.load(open(best_json))['value']
      best_mngr = checkpoint.open_manager(workdir, max_to_keep=1, subdir='best')
    return cls(s, workdir, extractor, reference, metrics, sample_fn, batch, best_key, best_value,
               best_mngr)

  def __call__(self, state: TrainState, step: int, writer: MetricWriter,
               config: ml_collections.ConfigDict, examples_seen: int) -> dict[str, float]:
    from jaxgen.eval import evaluate  # pylint: disable=g-import-not-at-top
    num = self.setup.train.eval_num
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, step), 0xE7A1)

    def batches():
      for i in range(-(-num // self.batch)):
        images = jax.device_get(self.sample_fn(state.ema_params, jax.random.fold_in(rng, i)))
        yield images_lib.to_uint8(images)[:num - i * self.batch]

    fake = evaluate.extract(self.extractor, batches(), mesh=self.setup.mesh)
    values = evaluate.compute(self.metrics, fake, self.reference, self.extractor)
    writer.scalars(step, {f'eval/{k}': v for k, v in values.items()})
    if self.best_key:
      value = values[self.best_key]
      higher = self.best_key.split(' ')[0].lower() in HIGHER_IS_BETTER
      if self.best_value is None or (value > self.best_value if higher else value < self.best_value):
        self.best_value = value
        checkpoint.save(self.best_mngr, state, config, examples_seen)
        self.best_mngr.wait_until_finished()
        if writer.enabled:
          path = os.path.join(checkpoint.checkpoint_dir(self.workdir, 'best'), 'best.json')
          images_lib.atomic_write(path, lambda tmp: open(tmp, 'w').write(
              json.dumps({'step': step, 'metric': self.best_key, 'value': value}) + '\n'))
    return values

  def close(self) -> None:
    if self.best_mngr:
      self.best_mngr.wait_until_finished()
      self.best_mngr.close()
