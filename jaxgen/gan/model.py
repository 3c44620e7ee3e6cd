"""The GAN family: both players trained inside one compiled step, behind the family contract.

Config sections: `model` (GANNetConfig: the two networks), `gan` (GANConfig:
losses, regularisers, the two optimizers) and `sample` (SampleConfig).
A GAN has no `optim` section: each player has its own Adam (TTUR) in `gan`.

State layout (a `TrainState`, so checkpoints, sharding and the loop are the
family-independent ones):

- `params = {'generator': G's variables, 'discriminator': D's variables,
  'pl_mean': float32 scalar}`; each player's variables are its flax
  collections ('params', and 'batch_stats' / 'spectral' where the networks
  have BatchNorm, a running w average or spectral norm), so the state that
  gradients do not train rides in the train state like everything else;
- `opt_state = {'generator': Adam state of G's 'params', 'discriminator': ...}`;
- `ema_params = {'generator': EMA of G's variables}` (running statistics copied),
  what `sample` and every evaluation use.

One train step = `n_critic` discriminator updates (each with fresh z, on the
same real batch) then one generator update, all in one jitted function;
randomness is `fold_in(state.rng, state.step)` and fold-ins of it.
"""

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxgen import config as config_lib
from jaxgen.errors import JaxgenError
from jaxgen.gan import losses, networks
from jaxgen.nn.flops import hlo_flops
from jaxgen.nn.interpolate import slerp
from jaxgen.train.state import TrainState, skip_if_nonfinite

CONFIG_SECTIONS = ('model', 'gan', 'sample')
ARCHS = ('dcgan', 'stylegan2')


@dataclasses.dataclass(frozen=True)
class GANNetConfig:
  """The `config.model` section: generator and discriminator.

  arch 'dcgan': `DCGANGenerator(ch=ch_g, num_up)` and `DCGANDiscriminator(ch=ch_d,
  num_down, norm=d_norm, spectral_norm)`; 'stylegan2': the StyleGAN2 pair
  (mapping network with `mapping_layers`, w of size `w_dim`).
  num_classes > 0 makes both conditional (conditional BatchNorm / label
  embedding in G, projection in D).
  """
  arch: str = 'dcgan'
  z_dim: int = 100
  ch_g: int = 64
  ch_d: int = 64
  num_up: int = 2
  num_down: int = 2
  d_norm: str = 'batch'  # 'batch' | 'none' | 'layer' (dcgan)
  spectral_norm: bool = False
  w_dim: int = 128
  mapping_layers: int = 4
  num_classes: int = 0
  dtype: str = 'float32'


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """The `config.gan` section: objective, regularisers, update schedule, optimizers.

  loss: one of `losses.KINDS` ('minimax', 'nonsaturating', 'hinge', 'wgan', 'wgan-gp').
  n_critic: discriminator updates per generator update.
  gp_weight: WGAN-GP's lambda (used with loss 'wgan-gp').
  clip: WGAN weight clipping c (loss 'wgan'; 0 disables).
  r1_gamma, r1_every: R1 penalty gamma/2 * |grad D(real)|^2, applied every
    r1_every steps and scaled by r1_every (lazy regularisation); 0 disables.
  pl_weight, pl_every, pl_decay: StyleGAN2's path-length regulariser (lazy).
  style_mixing: probability of mixing two w's in a generator batch (StyleGAN2).
  label_smoothing: one-sided, for the sigmoid losses.
  lr_*, b1_*, b2_*: each player's Adam (TTUR: two time-scale update rule).
  """
  loss: str = 'nonsaturating'
  n_critic: int = 1
  gp_weight: float = 10.0
  clip: float = 0.0
  r1_gamma: float = 0.0
  r1_every: int = 1
  pl_weight: float = 0.0
  pl_every: int = 4
  pl_decay: float = 0.01
  style_mixing: float = 0.0
  label_smoothing: float = 0.0
  lr_g: float = 2e-4
  lr_d: float = 2e-4
  b1_g: float = 0.5
  b2_g: float = 0.999
  b1_d: float = 0.5
  b2_d: float = 0.999


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The `config.sample` section: sampling defaults (CLI flags override them).

  truncation: psi of the truncation trick (StyleGAN2; 1 = none).
  label: class of conditional samples; -1 cycles through the classes.
  """
  truncation: float = 1.0
  label: int = -1


def _networks(cfg: GANNetConfig, image_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
  dtype = jnp.dtype(cfg.dtype)
  if cfg.arch == 'dcgan':
    g = networks.DCGANGenerator(image_shape, z_dim=cfg.z_dim, ch=cfg.ch_g, num_up=cfg.num_up,
                                num_classes=cfg.num_classes, dtype=dtype)
    d = networks.DCGANDiscriminator(image_shape, ch=cfg.ch_d, num_down=cfg.num_down, norm=cfg.d_norm,
                                    spectral_norm=cfg.spectral_norm, num_classes=cfg.num_classes,
                                    dtype=dtype)
  else:
    g = networks.StyleGAN2Generator(image_shape, z_dim=cfg.z_dim, w_dim=cfg.w_dim, ch=cfg.ch_g,
                                    mapping_layers=cfg.mapping_layers, num_classes=cfg.num_classes,
                                    dtype=dtype)
    d = networks.StyleGAN2Discriminator(image_shape, ch=cfg.ch_d, num_classes=cfg.num_classes,
                                        dtype=dtype)
  return g, d


def _adam(lr: float, b1: float, b2: float) -> optax.GradientTransformation:
  return optax.adam(lr, b1=b1, b2=b2, eps=1e-8)


def _split(variables: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
  """(trainable 'params', the other collections) of one player's variables."""
  return variables['params'], {k: v for k, v in variables.items() if k != 'params'}


@dataclasses.dataclass(frozen=True)
class GANModel:
  """A generator and a discriminator trained against each other. Images float [-1, 1]."""
  generator: nn.Module
  discriminator: nn.Module
  net_config: GANNetConfig
  config: GANConfig
  sample_config: SampleConfig
  image_shape: tuple[int, int, int]

  # ------------------------------------------------------------------ helpers

  @property
  def conditional(self) -> bool:
    return self.net_config.num_classes > 0

  def _labels(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    return batch['label'] if self.conditional else None

  def _z(self, rng: jax.Array, num: int) -> jax.Array:
    return jax.random.normal(rng, (num, self.net_config.z_dim), jnp.float32)  # [B, Z]

  def _generate(self, g_vars: dict[str, Any], z: jax.Array, labels: jax.Array | None, rng: jax.Array,
                *, train: bool, mix_z: jax.Array | None = None, mix_rng: jax.Array | None = None,
                psi: float | jax.Array = 1.0) -> tuple[jax.Array, dict[str, Any], Any]:
    """(images [B,H,W,C], G's updated non-trainable collections, ws or None)."""
    mutable = [k for k in g_vars if k != 'params'] if train else False
    rngs = {'noise': rng}
    if self.net_config.arch == 'dcgan':
      out = self.generator.apply(g_vars, z, labels, train=train, rngs=rngs, mutable=mutable)
      images, updates = out if train else (out, {})
      return images, dict(updates), None
    # StyleGAN2: mapping, running w average, mixing, truncation, synthesis.
    w = self.generator.apply(g_vars, z, labels, method='mapping')  # [B, W]
    num_ws = self.generator.num_ws
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[-1]))  # [B, L, W]
    updates = {}
    if train:
      stats = g_vars['batch_stats']
      w_avg = stats['w_avg'] + (1 - 0.995) * (jnp.mean(w, axis=0) - stats['w_avg'])
      updates = {'batch_stats': {**stats, 'w_avg': jax.lax.stop_gradient(w_avg)}}
    if mix_z is not None:
      w2 = self.generator.apply(g_vars, mix_z, labels, method='mapping')  # [B, W]
      k_cut, k_use = jax.random.split(mix_rng)
      cutoff = jax.random.randint(k_cut, (), 1, num_ws)
      use = jax.random.uniform(k_use, ()) < self.config.style_mixing
      cutoff = jnp.where(use, cutoff, num_ws)
      ws = jnp.where((jnp.arange(num_ws) < cutoff)[None, :, None], ws, w2[:, None, :])
    if not isinstance(psi, (int, float)) or psi != 1.0:
      ws = g_vars['batch_stats']['w_avg'] + psi * (ws - g_vars['batch_stats']['w_avg'])
    images = self.generator.apply(g_vars, ws, train=train, rngs=rngs, method='synthesis')
    return images, updates, ws

  def _discriminate(self, d_vars: dict[str, Any], images: jax.Array, labels: jax.Array | None,
                    *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    """(logits [B], D's updated non-trainable collections; empty when not train)."""
    mutable = [k for k in d_vars if k != 'params']
    if not train or not mutable:
      return self.discriminator.apply(d_vars, images, labels, train=train), {}
    logits, updates = self.discriminator.apply(d_vars, images, labels, train=True, mutable=mutable)
    return logits, dict(updates)

  # ------------------------------------------------------------------ family contract

  def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """Both players' variables (and the path-length running mean) for a batch like `batch`."""
    k_g, k_d = jax.random.split(rng)
    labels = self._labels(batch)
    n = batch['image'].shape[0]
    g_vars = self.generator.init({'params': k_g, 'noise': k_g}, self._z(k_g, n), labels, train=False)
    d_vars = self.discriminator.init({'params': k_d}, batch['image'], labels, train=False)
    return {'generator': dict(g_vars), 'discriminator': dict(d_vars), 'pl_mean': jnp.zeros(())}

  def train_fns(self, ema_decay: float, skip_nonfinite: bool
                ) -> tuple[Callable[[Any, jax.Array], TrainState], Callable]:
    """(create_state(params, rng) -> TrainState, train_step(state, batch) -> (state, metrics)).

    The trainer uses these instead of its single-objective step for this family.
    """
    cfg = self.config
    tx_g = _adam(cfg.lr_g, cfg.b1_g, cfg.b2_g)
    tx_d = _adam(cfg.lr_d, cfg.b1_d, cfg.b2_d)

    def create_state(params: dict[str, Any], rng: jax.Array) -> TrainState:
      opt_state = {'generator': tx_g.init(params['generator']['params']),
                   'discriminator': tx_d.init(params['discriminator']['params'])}
      return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                        ema_params={'generator': jax.tree.map(jnp.copy, params['generator'])},
                        opt_state=opt_state, rng=rng, skipped=jnp.zeros((), jnp.int32))

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
      rng = jax.random.fold_in(state.rng, state.step)
      g_vars, d_vars = state.params['generator'], state.params['discriminator']
      d_opt = state.opt_state['discriminator']
      metrics = {}
      for i in range(cfg.n_critic):
        d_vars, d_opt, d_metrics = self.d_update(tx_d, g_vars, d_vars, d_opt, batch,
                                                 jax.random.fold_in(rng, i), state.step)
        metrics.update(d_metrics)
      g_vars, g_opt, pl_mean, g_metrics = self.g_update(
          tx_g, g_vars, d_vars, state.opt_state['generator'], batch, jax.random.fold_in(rng, 1000),
          state.step, state.params['pl_mean'])
      metrics.update(g_metrics)
      g_ema = state.ema_params['generator']
      ema = {'params': optax.incremental_update(g_vars['params'], g_ema['params'], 1.0 - ema_decay),
             **{k: v for k, v in g_vars.items() if k != 'params'}}  # running statistics copied
      loss = metrics['d_loss'] + metrics['g_loss']
      metrics['loss'] = loss
      new = state.replace(step=state.step + 1,
                          params={'generator': g_vars, 'discriminator': d_vars, 'pl_mean': pl_mean},
                          ema_params={'generator': ema},
                          opt_state={'generator': g_opt, 'discriminator': d_opt})
      if skip_nonfinite:
        finite = (jnp.isfinite(loss) & jnp.isfinite(metrics['grad_norm_g'])
                  & jnp.isfinite(metrics['grad_norm_d']))
        new = skip_if_nonfinite(state, new, finite)
        metrics['skipped'] = (~finite).astype(jnp.int32)
      return new, metrics

    return create_state, train_step

  def d_update(self, tx_d: optax.GradientTransformation, g_vars: dict[str, Any], d_vars: dict[str, Any],
               d_opt: Any, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
               ) -> tuple[dict[str, Any], Any, dict[str, jax.Array]]:
    """One discriminator update against fresh fakes; G is only read. Returns (d_vars, d_opt, metrics)."""
    cfg = self.config
    real, labels = batch['image'], self._labels(batch)
    n = real.shape[0]
    d_params, d_rest = _split(d_vars)
    k_z, k_noise, k_gp, k_lab = jax.random.split(rng, 4)
    fake_labels = self._fake_labels(k_lab, labels, n)
    fake, _, _ = self._generate(g_vars, self._z(k_z, n), fake_labels, k_noise, train=True)
    fake = jax.lax.stop_gradient(fake)  # [B, H, W, C]

    def loss_fn(d_params):
      variables = {'params': d_params, **d_rest}
      # D's running statistics (BatchNorm) and power iterations (spectral norm) advance once
      # per update, from the real batch's call.
      real_logits, upd = self._discriminate(variables, real, labels, train=True)
      fake_logits, _ = self._discriminate(variables, fake, fake_labels, train=True)
      loss = losses.d_loss(cfg.loss, real_logits, fake_logits, cfg.label_smoothing)
      out = {'d_loss': loss, 'd_real': jnp.mean(real_logits), 'd_fake': jnp.mean(fake_logits)}
      d_fn = lambda x, lab: self._discriminate(variables, x, lab, train=False)[0]  # noqa: E731
      if cfg.loss == 'wgan-gp':
        gp = losses.gradient_penalty(lambda x: d_fn(x, labels), real, fake, k_gp)
        loss = loss + cfg.gp_weight * gp
        out['gp'] = gp
      if cfg.r1_gamma:
        due = (step % cfg.r1_every) == 0
        r1 = jax.lax.cond(due, lambda: losses.r1_penalty(lambda x: d_fn(x, labels), real),
                          lambda: jnp.zeros((), jnp.float32))
        loss = loss + 0.5 * cfg.r1_gamma * cfg.r1_every * r1  # lazy: scaled by the interval
        out['r1'] = r1
      return loss, (out, upd)

    (_, (metrics, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(d_params)
    updates, d_opt = tx_d.update(grads, d_opt, d_params)
    d_params = optax.apply_updates(d_params, updates)
    if cfg.loss == 'wgan' and cfg.clip:
      d_params = losses.clip_weights(d_params, cfg.clip)
    metrics['grad_norm_d'] = optax.tree.norm(grads)
    return {'params': d_params, **d_rest, **upd}, d_opt, metrics

  def g_update(self, tx_g: optax.GradientTransformation, g_vars: dict[str, Any], d_vars: dict[str, Any],
               g_opt: Any, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array,
               pl_mean: jax.Array) -> tuple[dict[str, Any], Any, jax.Array, dict[str, jax.Array]]:
    """One generator update; D is only read (training mode, its statistics not kept).

    Returns (g_vars, g_opt, the path-length running mean, metrics).
    """
    cfg = self.config
    n = batch['image'].shape[0]
    g_params, g_rest = _split(g_vars)
    k_z, k_noise, k_mix, k_mixz, k_lab, k_pl = jax.random.split(rng, 6)
    fake_labels = self._fake_labels(k_lab, self._labels(batch), n)
    mixing = self.net_config.arch == 'stylegan2' and cfg.style_mixing > 0
    path_length = self.net_config.arch == 'stylegan2' and cfg.pl_weight > 0

    def loss_fn(g_params):
      variables = {'params': g_params, **g_rest}
      fake, upd, ws = self._generate(variables, self._z(k_z, n), fake_labels, k_noise, train=True,
                                     mix_z=self._z(k_mixz, n) if mixing else None, mix_rng=k_mix)
      logits, _ = self._discriminate(d_vars, fake, fake_labels, train=True)
      loss = losses.g_loss(cfg.loss, logits)
      out, new_mean = {'g_loss': loss}, pl_mean
      if path_length:
        due = (step % cfg.pl_every) == 0
        lengths = jax.lax.cond(due, lambda: self._path_length(variables, ws, k_pl),
                               lambda: jnp.full((n,), pl_mean))  # [B]
        new_mean = jax.lax.stop_gradient(pl_mean + cfg.pl_decay * (jnp.mean(lengths) - pl_mean))
        penalty = jnp.mean(jnp.square(lengths - new_mean))
        loss = loss + cfg.pl_weight * cfg.pl_every * penalty  # lazy: scaled by the interval
        new_mean = jnp.where(due, new_mean, pl_mean)
        out['pl_penalty'] = penalty
      return loss, (out, upd, new_mean)

    (_, (metrics, upd, pl_mean)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g_params)
    updates, g_opt = tx_g.update(grads, g_opt, g_params)
    g_params = optax.apply_updates(g_params, updates)
    metrics['grad_norm_g'] = optax.tree.norm(grads)
    return {'params': g_params, **g_rest, **upd}, g_opt, pl_mean, metrics

  def _fake_labels(self, rng: jax.Array, labels: jax.Array | None, n: int) -> jax.Array | None:
    """Labels for generated images: uniform over the classes (None when unconditional)."""
    if not self.conditional:
      return None
    return jax.random.randint(rng, (n,), 0, self.net_config.num_classes)

  def _path_length(self, g_vars: dict[str, Any], ws: jax.Array, rng: jax.Array) -> jax.Array:
    """Per-sample path lengths |J_w^T y| (Karras et al. 2020), y ~ N(0, I) / sqrt(H W). [B]."""
    h, w = self.image_shape[:2]
    noise = jax.random.normal(rng, (ws.shape[0], *self.image_shape)) / math.sqrt(h * w)

    def out(ws):
      images = self.generator.apply(g_vars, ws, train=False, method='synthesis')
      return jnp.sum(images * noise)

    grads = jax.grad(out)(ws)  # [B, L, W]
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1) + 1e-8)

  def loss(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array):
    raise JaxgenError('a GAN has no single loss; the trainer uses GANModel.train_fns.')

  def sample_options(self, **overrides: Any) -> dict[str, Any]:
    """Sampling options (truncation, label): the config's with non-None overrides applied."""
    opts = config_lib.sample_options(self.sample_config, overrides, 'gan')
    if opts['truncation'] != 1.0 and self.net_config.arch != 'stylegan2':
      raise JaxgenError('--truncation needs a StyleGAN2 (its running w average); drop it.')
    if opts['label'] >= 0 and not self.conditional:
      raise JaxgenError('--label needs a conditional GAN (model.num_classes > 0); drop it.')
    if opts['label'] >= max(self.net_config.num_classes, 1):
      raise JaxgenError(f"--label must be below {self.net_config.num_classes}, got {opts['label']}.")
    return opts

  def requested_labels(self, num: int, **options: Any) -> np.ndarray | None:
    """The classes `sample` draws `num` images of, int32 [num]; None for an unconditional model."""
    if not self.conditional:
      return None
    return config_lib.requested_labels(self.sample_options(**options)['label'], num,
                                       self.net_config.num_classes)

  def sample(self, params: Any, rng: jax.Array, num: int, *, labels: jax.Array | None = None,
             sharding: Any = None, **options: Any) -> jax.Array:
    """`num` images [num, H, W, C] in [-1, 1] from the generator in `params['generator']`.

    Conditional models draw class `label`, or cycle through the classes when
    it is -1 (or take `labels` [num] when given).
    """
    opts = self.sample_options(**options)
    k_z, k_noise = jax.random.split(rng)
    z = self._z(k_z, num)
    if sharding is not None:
      z = jax.lax.with_sharding_constraint(z, sharding)
    if self.conditional and labels is None:
      labels = jnp.asarray(self.requested_labels(num, **options))
    images, _, _ = self._generate(params['generator'], z, labels if self.conditional else None,
                                  k_noise, train=False, psi=opts['truncation'])
    return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

  def interpolate(self, params: Any, rng: jax.Array, rows: int, steps: int = 10, **options: Any
                  ) -> jax.Array:
    """`rows` latent interpolations of `steps` images each: [rows * steps, H, W, C] in [-1, 1].

    Each row walks the great circle between two z ~ N(0, I) (spherical
    interpolation, the natural path under a Gaussian prior); conditional
    models keep one class per row (cycling through the classes).
    """
    opts = self.sample_options(**options)
    k_a, k_b, k_noise = jax.random.split(rng, 3)
    za, zb = self._z(k_a, rows), self._z(k_b, rows)  # [R, Z]
    t = jnp.linspace(0.0, 1.0, steps)
    z = jax.vmap(lambda a, b: slerp(a, b, t))(za, zb).reshape(rows * steps, -1)  # [R*T, Z]
    labels = None
    if self.conditional:
      labels = jnp.repeat(jnp.arange(rows, dtype=jnp.int32) % self.net_config.num_classes, steps)
    images, _, _ = self._generate(params['generator'], z, labels, k_noise, train=False,
                                  psi=opts['truncation'])
    return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)

  def forward_flops(self) -> float | None:
    """FLOPs of one generator evaluation on one image (XLA cost analysis, nothing runs)."""
    batch = {'image': jnp.zeros((1, *self.image_shape)), 'label': jnp.zeros((1,), jnp.int32)}
    params = jax.eval_shape(lambda: self.init(jax.random.PRNGKey(0), batch))
    return hlo_flops(lambda p, r: self.sample(p, r, 1), params, jax.random.PRNGKey(0))

  def evaluations_per_sample(self, **options: Any) -> int:
    self.sample_options(**options)
    return 1


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> GANModel:
  """The GAN of `config` for images of `image_shape` (H, W, C); JaxgenError on bad settings."""
  net = config_lib.section(config, 'model', GANNetConfig)
  gan = config_lib.section(config, 'gan', GANConfig)
  sample = config_lib.section(config, 'sample', SampleConfig)
  if net.arch not in ARCHS:
    raise JaxgenError(f'model.arch={net.arch!r} is not one of {", ".join(ARCHS)}.')
  if gan.loss not in losses.KINDS:
    raise JaxgenError(f'gan.loss={gan.loss!r} is not one of {", ".join(losses.KINDS)}.')
  if gan.n_critic < 1 or gan.r1_every < 1 or gan.pl_every < 1:
    raise JaxgenError('gan.n_critic, gan.r1_every and gan.pl_every must be at least 1.')
  if gan.label_smoothing and gan.loss not in ('minimax', 'nonsaturating'):
    raise JaxgenError(f'gan.label_smoothing works with the minimax and nonsaturating losses, '
                      f'not {gan.loss!r}; set it to 0.')
  if net.spectral_norm and net.d_norm == 'batch':
    raise JaxgenError("model.spectral_norm=True needs model.d_norm='none' (or 'layer'), not 'batch'.")
  try:
    g, d = _networks(net, image_shape)
  except ValueError as e:
    raise JaxgenError(str(e)) from e
  return GANModel(g, d, net, gan, sample, tuple(image_shape))
