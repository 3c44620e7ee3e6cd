"""Train state and the generic single-objective train step.

Every family that trains by minimising one loss (diffusion, VAE, the
autoregressive models) uses `make_train_step`; a GAN brings its own step but
keeps the same `TrainState` shape so that checkpoints, sharding and the loop
do not care which family they carry.
"""

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from jaxgen.errors import JaxgenError

PyTree = Any
# (params, batch, rng) -> (loss, metrics), or (loss, (metrics, updates)) for models with
# state that is not learned by gradient (a VQ codebook's EMA): `updates` maps top-level keys
# of params to their new values, which replace the optimizer's result for those keys.
LossFn = Callable[[PyTree, dict[str, jax.Array], jax.Array], tuple[jax.Array, Any]]


@flax.struct.dataclass
class TrainState:
  """All that changes during training; a checkpoint of it is a complete resume point.

  step: int32 scalar, the number of updates applied.
  params / ema_params: model parameters and their exponential moving average.
  opt_state: optax state.
  rng: the run's base PRNG key; step keys are `fold_in(rng, step)`.
  skipped: int32 scalar, the steps whose loss or gradients were not finite and
    that were skipped (only with `skip_nonfinite`; they still count in `step`).
  """
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: jax.Array
  skipped: jax.Array


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The `config.optim` section: Adam(W) with a linear warm-up, then constant or a cosine decay."""
  lr: float = 2e-4
  warmup_steps: int = 5000
  decay_steps: int = 0  # > 0: cosine decay from lr to end_lr_frac * lr, ending at this step; 0: constant
  end_lr_frac: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  grad_clip: float = 1.0  # global-norm clipping; 0 disables it


def learning_rate_schedule(cfg: OptimConfig) -> optax.Schedule | float:
  """The step size at each step: linear warm-up from 0 over `warmup_steps`, then `lr`, or with
  `decay_steps` a cosine decay reaching `end_lr_frac * lr` at step `decay_steps` (and held there)."""
  if cfg.decay_steps:
    if cfg.decay_steps <= cfg.warmup_steps:
      raise JaxgenError(f'optim.decay_steps={cfg.decay_steps} must exceed optim.warmup_steps='
                        f'{cfg.warmup_steps} (the decay ends at that step); or set it to 0 for a '
                        f'constant step size.')
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, cfg.decay_steps,
                                              end_value=cfg.end_lr_frac * cfg.lr)
  return optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps) if cfg.warmup_steps else cfg.lr


def global_norm(tree: PyTree, fused: bool = False) -> jax.Array:
  """The L2 norm of all of `tree`'s leaves together, a float32 scalar.

  fused=False: `optax.tree.norm`, one reduction per leaf, then their sum; right
  for any sharding. fused=True: one reduction over the concatenation of every
  leaf, for trees that are not sharded (data parallelism): a UNet's ~300
  parameters otherwise cost ~560 tiny kernels per training step on a GPU
  (benchmarks.gpu_traffic); concatenating sharded leaves (FSDP) would gather them.
  """
  if not fused:
    return optax.tree.norm(tree)
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])
  return jnp.sqrt(jnp.sum(jnp.square(flat)))


def clip_by_global_norm(max_norm: float, fused: bool = False) -> optax.GradientTransformation:
  """`optax.clip_by_global_norm` (the same state, so checkpoints do not change), its norm
  computed by `global_norm(..., fused)`."""
  if not fused:
    return optax.clip_by_global_norm(max_norm)

  def update_fn(updates, state, params=None):
    del params
    norm = global_norm(updates, fused=True)
    clip = norm < max_norm
    return jax.tree.map(lambda t: jnp.where(clip, t, (t / norm.astype(t.dtype)) * max_norm),
                        updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(cfg: OptimConfig, fused_norm: bool = False) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW with a linear warm-up to `lr` (and a cosine decay with
  `decay_steps`). fused_norm: the clipping norm as one reduction (`global_norm`; unsharded
  parameters only)."""
  schedule = learning_rate_schedule(cfg)
  parts = [clip_by_global_norm(cfg.grad_clip, fused_norm)] if cfg.grad_clip else []
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
  return optax.chain(*parts)


def create_train_state(params: PyTree, optimizer: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
  """A fresh state at step 0 with EMA parameters equal to the parameters."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=rng, skipped=jnp.zeros((), jnp.int32))


def skip_if_nonfinite(old: TrainState, new: TrainState, finite: jax.Array) -> TrainState:
  """`new` when `finite` (bool scalar); otherwise `old` with the step advanced and counted as skipped.

  Shared by every family's step, so that a skipped step is the same thing everywhere.
  """
  kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  return kept.replace(step=old.step + 1, skipped=old.skipped + (~finite).astype(jnp.int32))


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    ema_decay: float, skip_nonfinite: bool = False, fused_norm: bool = False
                    ) -> Callable[[TrainState, dict[str, jax.Array]],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """Builds `train_step(state, batch) -> (state, metrics)`, pure and jit-able.

  The step's randomness is `fold_in(state.rng, state.step)`, so a run resumed
  from a checkpoint draws exactly the keys an uninterrupted run would.
  The batch reaches the loss with `step` (int32 scalar) added. Metrics are
  scalars: the loss function's, plus `grad_norm`. With
  `skip_nonfinite`, a step whose loss or gradient norm is NaN or inf leaves
  params, EMA and optimizer state unchanged and increments `state.skipped`;
  its metrics still report the non-finite values, and `skipped` (0 or 1)
  tells the trainer which steps were skipped. fused_norm: `grad_norm` as one
  reduction (`global_norm`; unsharded parameters only; the same value as the
  optimizer's clipping norm with `make_optimizer(fused_norm=True)`, computed once).
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    step_rng = jax.random.fold_in(state.rng, state.step)
    batch = dict(batch, step=state.step)  # for schedules inside the loss (KL warm-up)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, step_rng)
    metrics, replaced = aux if isinstance(aux, tuple) else (aux, {})
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = {**params, **replaced} if replaced else params
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
    grad_norm = global_norm(grads, fused_norm)
    metrics = dict(metrics, grad_norm=grad_norm)
    new = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                        opt_state=opt_state)
    if skip_nonfinite:
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      new = skip_if_nonfinite(state, new, finite)
      metrics['skipped'] = (~finite).astype(jnp.int32)
    return new, metrics

  return train_step
