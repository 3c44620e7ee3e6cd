"""GAN objectives and discriminator regularisers, as pure functions.

Logits (scores) are float32 arrays [B] or [B, 1]: the discriminator's output
before any sigmoid. Every loss is a float32 scalar, the batch mean, to be
minimised: `d_loss` by the discriminator, `g_loss` by the generator. With
s = sigmoid and softplus(x) = log(1 + e^x) (so -log s(x) = softplus(-x) and
-log(1 - s(x)) = softplus(x), both computed without overflow):

  kind             D loss                                  G loss
  'minimax'        softplus(-r) + softplus(f)              -softplus(f) = log(1 - s(f))
  'nonsaturating'  softplus(-r) + softplus(f)              softplus(-f) = -log s(f)
  'hinge'          relu(1 - r) + relu(1 + f)               -f
  'wgan'           f - r                                   -f
  'wgan-gp'        f - r  (+ the caller's lambda * GP)     -f

r are the logits on real images, f on generated ones; each term is averaged
over its own batch. 'minimax' is the game of Goodfellow et al. 2014, whose G
gradient vanishes when D rejects the samples confidently; 'nonsaturating' is
their practical fix. 'wgan' needs `clip_weights` after each D step (Arjovsky et
al. 2017), 'wgan-gp' the `gradient_penalty` (Gulrajani et al. 2017) instead;
`r1_penalty` (Mescheder et al. 2018) is the regulariser of StyleGAN2.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

KINDS = ('minimax', 'nonsaturating', 'hinge', 'wgan', 'wgan-gp')
_SIGMOID_KINDS = ('minimax', 'nonsaturating')


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown GAN loss kind {kind!r}: the known kinds are 'minimax', "
                     "'nonsaturating', 'hinge', 'wgan' and 'wgan-gp'.")


def _flat(logits: jax.Array, name: str) -> jax.Array:
  """[B] or [B, 1] -> float32 [B]; other shapes are refused (a [B] - [B, 1] broadcast is a [B, B] bug)."""
  logits = jnp.asarray(logits)
  if logits.ndim == 2 and logits.shape[1] == 1:
    logits = logits[:, 0]
  if logits.ndim != 1:
    raise ValueError(f'{name} must have shape [B] or [B, 1], got {logits.shape}.')
  return logits.astype(jnp.float32)


def d_loss(kind: str, real_logits: jax.Array, fake_logits: jax.Array,
           label_smoothing: float = 0.0) -> jax.Array:
  """The discriminator's loss, a float32 scalar (see the module docstring for each kind).

  Args:
    kind: one of KINDS.
    real_logits: [B] or [B, 1], D's logits on real images.
    fake_logits: [B'] or [B', 1], D's logits on generated images.
    label_smoothing: a Python float in [0, 1): one-sided label smoothing
      (Salimans et al. 2016), the real images' target becomes t = 1 - label_smoothing,
      so the real term is the cross-entropy t * softplus(-r) + (1 - t) * softplus(r).
      Only for the sigmoid cross-entropy kinds ('minimax', 'nonsaturating').
  """
  _check_kind(kind)
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}.')
  if label_smoothing > 0.0 and kind not in _SIGMOID_KINDS:
    raise ValueError(f'label_smoothing={label_smoothing} applies only to the sigmoid '
                     f"cross-entropy losses ('minimax', 'nonsaturating'), not to {kind!r}.")
  r = _flat(real_logits, 'real_logits')  # [B]
  f = _flat(fake_logits, 'fake_logits')  # [B']
  if kind in _SIGMOID_KINDS:
    target = 1.0 - label_smoothing
    real_term = target * jax.nn.softplus(-r) + (1.0 - target) * jax.nn.softplus(r)  # [B]
    return jnp.mean(real_term) + jnp.mean(jax.nn.softplus(f))
  if kind == 'hinge':
    return jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
  return jnp.mean(f) - jnp.mean(r)  # 'wgan', 'wgan-gp'


def g_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
  """The generator's loss, a float32 scalar, from D's logits on generated images [B] or [B, 1]."""
  _check_kind(kind)
  f = _flat(fake_logits, 'fake_logits')  # [B]
  if kind == 'minimax':
    return jnp.mean(-jax.nn.softplus(f))  # log(1 - sigmoid(f))
  if kind == 'nonsaturating':
    return jnp.mean(jax.nn.softplus(-f))  # -log sigmoid(f)
  return -jnp.mean(f)  # 'hinge', 'wgan', 'wgan-gp'


def _input_grads(d_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """d d_fn(x)_i / d x_i for every sample i, [B, ...]: the gradient of the sum of
  the scores, since sample i's score depends on x_i alone."""
  return jax.grad(lambda x_: jnp.sum(d_fn(x_).astype(jnp.float32)))(x)


def gradient_penalty(d_fn: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array,
                     rng: jax.Array) -> jax.Array:
  """The WGAN-GP penalty mean_i (||grad_x d_fn(x)_i||_2 - 1)^2, a float32 scalar.

  Args:
    d_fn: images [B, H, W, C] -> scores [B] (or [B, 1]); it must treat the
      samples independently (no batch norm, no minibatch statistics).
    real, fake: [B, H, W, C] images.
    rng: key of the interpolation weights, drawn as
      `eps = jax.random.uniform(rng, (B, 1, 1, 1), jnp.float32)`.

  The penalty is taken at x = eps * real + (1 - eps) * fake. Its gradient w.r.t.
  the parameters d_fn closes over is a double backprop; gradients also flow into
  `real` and `fake`, so the caller stops those of `fake` if G's parameters are in
  the differentiated function. The norm of a zero gradient is taken as 0 with a
  zero derivative (sqrt's derivative at 0 would give a NaN in the backward pass).
  """
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), jnp.float32)  # [B, 1, 1, 1]
  x = (eps * real.astype(jnp.float32) + (1.0 - eps) * fake.astype(jnp.float32)).astype(real.dtype)
  grads = _input_grads(d_fn, x).astype(jnp.float32)  # [B, H, W, C]
  sq_norm = jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))  # [B]
  positive = sq_norm > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq_norm, 1.0)), 0.0)  # [B]
  return jnp.mean(jnp.square(norm - 1.0))


def r1_penalty(d_fn: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
  """The R1 penalty mean_i ||grad_x d_fn(real)_i||_2^2, a float32 scalar.

  d_fn: images [B, H, W, C] -> scores [B] (or [B, 1]), samples independent;
  real: [B, H, W, C]. The caller multiplies by gamma / 2 (and, with lazy
  regularisation, by the interval).
  """
  grads = _input_grads(d_fn, real).astype(jnp.float32)  # [B, H, W, C]
  return jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


def clip_weights(params: Any, c: float) -> Any:
  """The original WGAN's weight clipping: every leaf of the pytree clipped to [-c, c]."""
  return jax.tree.map(lambda p: jnp.clip(p, -c, c), params)
