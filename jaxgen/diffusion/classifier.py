"""Classifier guidance (Dhariwal & Nichol 2021): a noise-conditional classifier and the guided eps.

A `NoisyClassifier` p_phi(y | x_t, t) learns the classes of the diffusion
run's own dataset from noised images x_t = q_sample(x0, t, noise) at uniform
random t (`classifier_loss`; `train_classifier` is the backend of
`jaxgen train-classifier --workdir W`). Sampling with `--classifier-scale s`
then uses eq. 14 of the paper (`classifier_guided_eps_fn`):

    eps_hat(x_t, t) = eps(x_t, t) - s sqrt(1 - abar_t) grad_{x_t} log p_phi(y | x_t, t).

The minus sign: the predicted clean image (x_t - sqrt(1 - abar_t) eps_hat) /
sqrt(abar_t) becomes x0_hat + s (1 - abar_t) / sqrt(abar_t) grad log p, a step
up the log-probability of class y. The result is an `EpsFn` like any other, so
it works with every sampler, and it wraps whatever eps it is given, the
classifier-free guided one included. With a latent diffusion model the
classifier sees the scaled latents the diffusion runs on, not the pixels.

A trained classifier lives in `<workdir>/classifier/`:

    params/        Orbax checkpoint of the classifier's parameters
    config.json    {config: ClassifierConfig, num_classes, input_shape, num_timesteps, dataset, ...}
    accuracy.json  held-out accuracy at t = 0, T/4 and T/2

It is written into a temporary directory beside it and renamed into place at
the end, so a failed or interrupted run leaves an earlier classifier as it was.
"""

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from jaxgen import config as config_lib, data as data_lib
from jaxgen.diffusion.samplers import EpsFn
from jaxgen.diffusion.schedules import Schedule, q_sample
from jaxgen.errors import JaxgenError
from jaxgen.nn.blocks import AttnBlock, Downsample, ResBlock, default_init
from jaxgen.nn.embeddings import timestep_embedding
from jaxgen.nn.norm import GroupNorm
from jaxgen.train import mesh as mesh_lib
from jaxgen.train.state import OptimConfig, create_train_state, make_optimizer, make_train_step

PyTree = Any
# (x_t [B, H, W, C], t int32 [B]) -> log p(y | x_t, t) for every class, float32 [B, K].
LogProbFn = Callable[[jax.Array, jax.Array], jax.Array]

CLASSIFIER_SUBDIR = 'classifier'
PARAMS_SUBDIR = 'params'
CONFIG_FILE = 'config.json'
ACCURACY_FILE = 'accuracy.json'
# Held-out test images the accuracy is measured on (at each noise level).
DEFAULT_EVAL_NUM = 1000


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The classifier's network and training: the optional `config.classifier` section of a
  diffusion experiment (`--num-steps` and `--batch` override steps and batch).

  Attributes:
    width: base width (a multiple of 32: every width goes through GroupNorm(32)).
    ch_mult: width multiplier per resolution; len(ch_mult) - 1 downsamplings.
    num_res_blocks: residual blocks per resolution.
    attn_resolutions: spatial sizes (H) at which self-attention follows each block.
    lr: peak learning rate (AdamW, linear warm-up over min(100, steps / 10) steps).
    weight_decay: AdamW weight decay (Dhariwal & Nichol use 0.05).
    steps: training steps.
    batch: global batch size (a multiple of the device count).
  """
  width: int = 32
  ch_mult: tuple[int, ...] = (1, 2, 2)
  num_res_blocks: int = 1
  attn_resolutions: tuple[int, ...] = ()
  lr: float = 1e-3
  weight_decay: float = 0.05
  steps: int = 2000
  batch: int = 64

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(self.ch_mult))
    object.__setattr__(self, 'attn_resolutions', tuple(self.attn_resolutions))

  def check(self) -> None:
    """JaxgenError naming the first bad field."""
    if self.width < 32 or self.width % 32:
      raise JaxgenError(f'the classifier width must be a positive multiple of 32 (GroupNorm(32)), '
                        f'got {self.width}.')
    if not self.ch_mult or any(m < 1 for m in self.ch_mult):
      raise JaxgenError(f'the classifier ch_mult must be positive integers, got {self.ch_mult}.')
    if self.num_res_blocks < 1:
      raise JaxgenError(f'the classifier needs num_res_blocks >= 1, got {self.num_res_blocks}.')
    if not self.lr > 0 or self.weight_decay < 0:
      raise JaxgenError(f'the classifier needs lr > 0 and weight_decay >= 0, got {self.lr} and '
                        f'{self.weight_decay}.')
    if self.steps < 1 or self.batch < 1:
      raise JaxgenError(f'--num-steps and --batch must be positive, got {self.steps} and {self.batch}.')


class NoisyClassifier(nn.Module):
  """p(y | x_t, t): the down half of the DDPM UNet, global average pool, GroupNorm + SiLU, Dense.

  Call: x_t float [B, H, W, C] (images in [-1, 1] noised to timestep t, or the
  diffusion's latents), t int [B] timesteps in [0, T). Returns logits float32
  [B, num_classes].

  The head pools before it normalises, and normalises the pooled features [B, C]
  as one group. GroupNorm(32) before the pool (Dhariwal & Nichol's 'adaptive'
  head) takes every channel's spatial mean out when a group holds one or two
  channels, as at these widths: on a toy two-class problem it reached a loss of
  0.53 in 30 steps where pooling first reached 0.007. 32 groups over the pooled
  vector would normalise each feature to about +-1.
  """
  num_classes: int
  config: ClassifierConfig = ClassifierConfig()

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    cfg = self.config
    ch = cfg.width
    emb = timestep_embedding(t, ch)  # [B, ch]
    emb = nn.Dense(4 * ch, kernel_init=default_init)(emb)
    emb = nn.Dense(4 * ch, kernel_init=default_init)(nn.silu(emb))  # [B, 4ch]
    h = nn.Conv(ch, (3, 3), kernel_init=default_init, name='conv_in')(x.astype(jnp.float32))
    for level, mult in enumerate(cfg.ch_mult):
      for _ in range(cfg.num_res_blocks):
        h = ResBlock(ch * mult)(h, emb, train=False)  # [B, H', W', ch * mult]
        if h.shape[1] in cfg.attn_resolutions:
          h = AttnBlock()(h)
      if level != len(cfg.ch_mult) - 1:
        h = Downsample()(h)  # [B, ceil(H' / 2), ceil(W' / 2), ch * mult]
    h = jnp.mean(h, axis=(1, 2))  # [B, C']
    h = GroupNorm(num_groups=1, epsilon=1e-6, silu=True, name='norm_out')(h)  # [B, C']
    return nn.Dense(self.num_classes, kernel_init=default_init, name='logits')(h)  # [B, K]


def classifier_loss(params: PyTree, images: jax.Array, labels: jax.Array, rng: jax.Array,
                    schedule: Schedule, *, module: NoisyClassifier
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of `module` on q_sample(images, t, noise) at a uniform random t per image.

  Args:
    params: the classifier's parameters.
    images: float [B, H, W, C], clean data (images in [-1, 1], or latents).
    labels: int [B] in [0, num_classes).
    rng: key; split into the timesteps and the noise.
    schedule: the diffusion's schedule (T timesteps).
    module: the classifier network.

  Returns:
    (mean loss, {'loss', 'accuracy'}), scalars.
  """
  rng_t, rng_noise = jax.random.split(rng)
  t = jax.random.randint(rng_t, images.shape[:1], 0, schedule.num_timesteps)  # [B]
  noise = jax.random.normal(rng_noise, images.shape, jnp.float32)
  x_t = q_sample(schedule, images.astype(jnp.float32), t, noise)  # [B, H, W, C]
  logits = module.apply({'params': params}, x_t, t)  # [B, K]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = (jnp.argmax(logits, -1) == labels).mean()
  return loss, {'loss': loss, 'accuracy': accuracy}


def classifier_guided_eps_fn(eps_fn: EpsFn, log_prob_fn: LogProbFn, labels: jax.Array,
                             scale: float | jax.Array, schedule: Schedule) -> EpsFn:
  """eps_hat = eps - scale sqrt(1 - abar_t) grad_x sum_b log p(y_b | x_b, t_b) (eq. 14).

  Args:
    eps_fn: the noise predictor to guide (possibly classifier-free guided already).
    log_prob_fn: (x_t [B, H, W, C], t [B]) -> log-softmax [B, K] of a noise-conditional classifier.
    labels: int [B], the class to guide each sample towards.
    scale: the guidance scale s >= 0; a Python 0 returns `eps_fn` itself.
    schedule: the diffusion's schedule.

  Returns:
    An EpsFn for the samplers. Each call evaluates eps_fn once and the
    classifier once forwards and once backwards (one `jax.grad` of the summed
    selected log-probabilities: each image's log-probability depends only on
    that image, so the sum's gradient is every per-image gradient at once).
  """
  if isinstance(scale, (int, float)) and scale == 0:
    return eps_fn
  labels = jnp.asarray(labels, jnp.int32)

  def selected_log_prob(x: jax.Array, t: jax.Array) -> jax.Array:
    log_p = log_prob_fn(x, t)  # [B, K]
    return jnp.take_along_axis(log_p, labels[:, None], axis=1).sum()

  def eps(x_t: jax.Array, t: jax.Array) -> jax.Array:
    out = eps_fn(x_t, t)  # [B, H, W, C]
    grad = jax.grad(selected_log_prob)(x_t.astype(jnp.float32), t)  # [B, H, W, C]
    sigma = schedule.sqrt_one_minus_alphas_cumprod[t]  # [B]
    sigma = sigma.reshape(sigma.shape + (1,) * (x_t.ndim - 1))
    return out - scale * sigma * grad

  return eps


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedClassifier:
  """A loaded noise-conditional classifier; `info` is its config.json."""
  module: NoisyClassifier
  params: PyTree
  num_classes: int
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def log_probs(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """x_t float [B, H, W, C], t int [B] -> log p(y | x_t, t) float32 [B, num_classes]."""
    return jax.nn.log_softmax(self.module.apply({'params': self.params}, x_t, t), axis=-1)


def classifier_dir(workdir: str) -> str:
  """Where the classifier of the run in `workdir` lives: `<workdir>/classifier`."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), CLASSIFIER_SUBDIR)


# ---------------------------------------------------------------------------- training


def _input_shape(model: Any) -> tuple[int, ...]:
  """The shape of one x the diffusion runs on (latents for a latent model), as the classifier sees it."""
  return tuple(getattr(model, 'diffusion_shape', model.image_shape))


def _encoder(model: Any) -> Callable[[jax.Array], jax.Array]:
  """images [B, H, W, C] -> what the diffusion runs on (the identity for a pixel model)."""
  return getattr(model, 'encode', lambda images: images)


def _held_out_accuracy(module: NoisyClassifier, params: PyTree, model: Any,
                       data_config: Any, *, num: int, seed: int, mesh: jax.sharding.Mesh
                       ) -> dict[str, Any]:
  """Accuracy at t = 0, T/4 and T/2 on about `num` images of the test split (train without one)."""
  schedule, encode = model.schedule, _encoder(model)
  levels = (0, schedule.num_timesteps // 4, schedule.num_timesteps // 2)
  builder = data_lib.prepare_for(data_config)
  split = 'test' if 'test' in builder.info.splits else 'train'
  n = mesh.devices.size
  batch_size = -(-min(num, 500) // n) * n
  rng_eval = jax.random.fold_in(jax.random.PRNGKey(seed), 1)

  @jax.jit
  def eval_step(params: PyTree, batch: dict[str, jax.Array], index: jax.Array):
    x0 = encode(batch['image'])  # [b, H, W, C]
    batch_rng = jax.random.fold_in(rng_eval, index)
    correct = []
    for i, level in enumerate(levels):
      t = jnp.full(x0.shape[:1], level, jnp.int32)  # [b]
      noise = jax.random.normal(jax.random.fold_in(batch_rng, i), x0.shape, jnp.float32)
      logits = module.apply({'params': params}, q_sample(schedule, x0, t, noise), t)  # [b, K]
      correct.append(((jnp.argmax(logits, -1) == batch['label']) & batch['mask']).sum())
    return jnp.stack(correct), batch['mask'].sum()  # [3], scalar

  params = jax.device_put(params, mesh_lib.replicated(mesh))
  correct, total = np.zeros(len(levels), np.int64), 0
  batches = data_lib.eval_batches(data_config, batch_size=batch_size, split=split)
  for index, local in enumerate(batches):
    if index * batch_size >= num:
      break
    c, m = jax.device_get(eval_step(params, mesh_lib.global_batch(local, mesh), jnp.int32(index)))
    correct, total = correct + c, total + int(m)
  accuracy = {f't={level}': float(c / max(total, 1)) for level, c in zip(levels, correct)}
  return dict(split=split, num_examples=total, accuracy=accuracy)


def _save(out_dir: str, params: PyTree, config_info: dict[str, Any],
          accuracy_info: dict[str, Any]) -> None:
  """Writes the classifier into `.<name>.tmp` beside `out_dir`, then renames it onto `out_dir`."""
  parent, name = os.path.split(os.path.abspath(out_dir))
  tmp, old = os.path.join(parent, f'.{name}.tmp'), os.path.join(parent, f'.{name}.old')
  is_main = jax.process_index() == 0

  def sync(tag: str) -> None:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(tag)

  if is_main:
    shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier failed run
    os.makedirs(tmp)
  sync('jaxgen_classifier_tmp')
  with ocp.StandardCheckpointer() as ckptr:  # collective: every process saves
    ckptr.save(os.path.join(tmp, PARAMS_SUBDIR), params)
    ckptr.wait_until_finished()
  if is_main:
    for file, content in ((CONFIG_FILE, config_info), (ACCURACY_FILE, accuracy_info)):
      with open(os.path.join(tmp, file), 'w') as f:
        f.write(json.dumps(content, indent=2, sort_keys=True) + '\n')
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
      os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
  sync('jaxgen_classifier_saved')


def train_classifier(run: Any, *, num_steps: int | None = None, batch_size: int | None = None,
                     seed: int = 0, out_dir: str | None = None, progress: bool = True,
                     config: ClassifierConfig | None = None,
                     eval_num: int = DEFAULT_EVAL_NUM) -> dict[str, Any]:
  """Trains a noise-conditional classifier for the diffusion `run` and saves it.

  The backend of `jaxgen train-classifier`. Trains on the train split of the
  run's dataset (its `config.data`) noised with the run's schedule, one
  jitted step per batch, the batch sharded over all devices. Bad input (not a
  diffusion run, a dataset without labels, a batch the devices do not divide,
  missing data) raises JaxgenError before any work or write.

  Args:
    run: a loaded diffusion run (`jaxgen.load_run`).
    num_steps: training steps (default: config.steps).
    batch_size: global batch size (default: config.batch).
    seed: seeds the initialisation, the data order and the noise.
    out_dir: where to save (default `<run.workdir>/classifier`), replacing an
      earlier classifier only once the new one is complete.
    progress: show a progress bar.
    config: the network and optimiser (default: the run's `config.classifier`
      section, else `ClassifierConfig()`).
    eval_num: held-out images for the final accuracy.

  Returns:
    The contents of accuracy.json: {accuracy: {'t=0', 't=T/4', 't=T/2' as
    numbers: accuracy}, split, num_examples, num_steps, batch_size, seed,
    train_seconds, final_loss}.
  """
  if getattr(run.config, 'family', None) != 'diffusion':
    raise JaxgenError(f'train-classifier needs a diffusion run; {run.workdir} is '
                      f'{getattr(run.config, "family", None)}.')
  cfg = config or config_lib.section(run.config, 'classifier', ClassifierConfig)
  cfg = dataclasses.replace(cfg, steps=cfg.steps if num_steps is None else num_steps,
                            batch=cfg.batch if batch_size is None else batch_size)
  cfg.check()
  if eval_num < 1:
    raise JaxgenError(f'--eval-num must be positive, got {eval_num}.')
  spec = data_lib.dataset_spec(run.config.data)
  if not spec.num_classes or spec.num_classes < 2:
    raise JaxgenError(f'classifier guidance needs a dataset with at least 2 classes; '
                      f'{run.config.data.name} has none.')
  mesh = mesh_lib.make_mesh()
  mesh_lib.check_batch_size(cfg.batch, mesh)
  data_lib.prepare_for(run.config.data)  # JaxgenError now, before any work, if the data cannot be had
  out_dir = os.path.abspath(os.path.expanduser(out_dir or classifier_dir(run.workdir)))

  model, schedule = run.model, run.model.schedule
  shape, encode = _input_shape(model), _encoder(model)
  module = NoisyClassifier(spec.num_classes, cfg)
  optimizer = make_optimizer(OptimConfig(lr=cfg.lr, warmup_steps=min(100, cfg.steps // 10),
                                         weight_decay=cfg.weight_decay, grad_clip=1.0))
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(seed))
  replicated = mesh_lib.replicated(mesh)

  def init_fn():
    x = jnp.zeros((1, *shape), jnp.float32)
    # Initialisers drawing from an 'rbg' key compile in half the time of threefry ones on CPU
    # (4 s instead of 10 s for a small classifier); the parameters stay a function of `seed`.
    rng = jax.random.wrap_key_data(jax.random.bits(rng_init, (4,), jnp.uint32), impl='rbg')
    params = module.init(rng, x, jnp.zeros((1,), jnp.int32))['params']
    return create_train_state(params, optimizer, rng_train)

  def loss_fn(params: PyTree, batch: dict[str, jax.Array], rng: jax.Array):
    x0 = encode(batch['image'])  # [b, *shape]
    return classifier_loss(params, x0, batch['label'], rng, schedule, module=module)

  state = jax.jit(init_fn, out_shardings=replicated)()
  # ema_decay=0: the EMA copy just tracks the params; the final params are the classifier.
  step_fn = mesh_lib.jit_train_step(make_train_step(loss_fn, optimizer, ema_decay=0.0), mesh)
  batches = data_lib.train_batches(run.config.data, global_batch_size=cfg.batch, seed=seed)

  is_main = jax.process_index() == 0
  log_every = max(1, min(100, cfg.steps // 10))
  loss = float('nan')
  t0 = time.perf_counter()
  with tqdm.tqdm(total=cfg.steps, unit='step', desc='train classifier',
                 disable=not (progress and is_main), dynamic_ncols=True) as bar:
    for step in range(cfg.steps):
      state, metrics = step_fn(state, mesh_lib.global_batch(next(batches), mesh))
      bar.update(1)
      if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
        m = jax.device_get(metrics)  # only here: fetching every step would stall the pipeline
        loss = float(m['loss'])
        if not np.isfinite(loss):
          raise FloatingPointError(f'classifier loss became {loss} at step {step + 1}.')
        bar.set_postfix(loss=f'{loss:.4f}', acc=f'{m["accuracy"]:.3f}', refresh=False)
  params = jax.device_get(state.params)
  train_seconds = time.perf_counter() - t0

  result = _held_out_accuracy(module, params, model, run.config.data, num=eval_num, seed=seed,
                              mesh=mesh)
  result.update(num_steps=cfg.steps, batch_size=cfg.batch, seed=seed, final_loss=loss,
                train_seconds=round(train_seconds, 1), diffusion_step=run.step)
  config_info = dict(config=dataclasses.asdict(cfg), num_classes=spec.num_classes,
                     input_shape=list(shape), num_timesteps=schedule.num_timesteps,
                     dataset=run.config.data.name)
  _save(out_dir, params, config_info, result)
  return result


# ---------------------------------------------------------------------------- loading


def load_classifier(workdir: str) -> TrainedClassifier:
  """The classifier trained for the run in `workdir` (`<workdir>/classifier`).

  Its parameters are uncommitted device arrays. JaxgenError, naming the
  command that trains one, when there is none.
  """
  directory = classifier_dir(workdir)
  config_path = os.path.join(directory, CONFIG_FILE)
  params_path = os.path.join(directory, PARAMS_SUBDIR)
  if not (os.path.isfile(config_path) and os.path.isdir(params_path)):
    raise JaxgenError(f'no noise-conditional classifier in {directory}; train it with '
                      f'`jaxgen train-classifier --workdir {workdir}`.')
  with open(config_path) as f:
    info = json.load(f)
  module = NoisyClassifier(int(info['num_classes']), ClassifierConfig(**info['config']))
  # ShapeDtypeStructs without shardings: Orbax restores host arrays, whatever mesh saved them.
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, *info['input_shape']), jnp.float32),
                            jnp.zeros((1,), jnp.int32))['params']
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(params_path, abstract)
  return TrainedClassifier(module, jax.device_put(params), module.num_classes, info)


def attach_classifier(run: Any) -> Any:
  """A copy of the diffusion `run` whose model holds the classifier of `<run.workdir>/classifier`.

  The copy starts with an empty cache of compiled samplers. JaxgenError when
  the run is not a diffusion run, has no classifier, or the classifier was
  trained for other inputs or another number of timesteps.
  """
  family = getattr(run.config, 'family', None)
  if family != 'diffusion':
    raise JaxgenError(f'--classifier-scale is for the diffusion family; this run is {family}.')
  clf = load_classifier(run.workdir)
  shape, steps = _input_shape(run.model), run.model.schedule.num_timesteps
  if tuple(clf.info['input_shape']) != shape or clf.info['num_timesteps'] != steps:
    raise JaxgenError(f'the classifier in {classifier_dir(run.workdir)} was trained for inputs '
                      f'{tuple(clf.info["input_shape"])} and T={clf.info["num_timesteps"]}, not '
                      f'{shape} and T={steps}; retrain it with '
                      f'`jaxgen train-classifier --workdir {run.workdir}`.')
  model = dataclasses.replace(run.model, classifier=clf)
  return dataclasses.replace(run, model=model, _compiled={})
