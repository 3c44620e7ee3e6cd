"""Classifier-free guidance (Ho & Salimans 2022).

A model trained with label dropout (its labels replaced by the null class
`num_classes` with probability `diffusion.label_dropout`) predicts both the
conditional eps(x, t, y) and the unconditional eps(x, t, null). Guided
sampling uses

    eps = eps_uncond + w (eps_cond - eps_uncond),

written (1 - w) eps_uncond + w eps_cond, which is the same number in exact
arithmetic and in floating point returns eps_cond exactly at w = 1 and
eps_uncond exactly at w = 0. w = 1 is plain conditional sampling, w = 0
unconditional, w > 1 trades diversity for fidelity to the class.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from jaxgen.diffusion.samplers import EpsFn

# (x_t [B, H, W, C], t int32 [B], y int32 [B] or [B, L]) -> predicted noise [B, H, W, C].
LabelEpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def combine(eps_cond: jax.Array, eps_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """The guided noise eps_uncond + scale (eps_cond - eps_uncond), [B, ...]."""
  return (1.0 - scale) * eps_uncond + scale * eps_cond


def guided_eps_fn(eps_fn: LabelEpsFn, labels: jax.Array, null_label: int | jax.Array,
                  scale: float | jax.Array) -> EpsFn:
  """The guided noise predictor (x_t, t) -> eps for the conditioning `labels` [B] or [B, L].

  Each call makes ONE network call on a batch of 2B: every image twice,
  interleaved [x_0, x_0, x_1, x_1, ...] with labels [y_0, null, y_1, null, ...],
  so that under a batch sharding each device holds both halves of its own
  images and the split needs no communication. The output is split the same
  way and combined with `combine`.

  Args:
    eps_fn: the label-taking noise predictor.
    labels: int32 [B], the classes to guide towards, or any int32 conditioning
      [B, ...] such as prompt tokens [B, L].
    null_label: the "no label" conditioning, broadcast to the shape of `labels`:
      the null class num_classes, or 0 (an all-padding row, the empty prompt)
      for tokens.
    scale: the guidance scale w.

  Returns:
    An EpsFn for the samplers.
  """
  def eps(x_t: jax.Array, t: jax.Array) -> jax.Array:
    b = x_t.shape[0]
    pair = lambda a: jnp.repeat(a, 2, axis=0)  # [2B, ...]: a_0, a_0, a_1, a_1, ...
    null = jnp.broadcast_to(jnp.asarray(null_label, jnp.int32), labels.shape)  # [B, ...]
    y = jnp.stack([labels.astype(jnp.int32), null], axis=1)  # [B, 2, ...]
    out = eps_fn(pair(x_t), pair(t), y.reshape(2 * b, *labels.shape[1:]))  # [2B, H, W, C]
    out = out.reshape(b, 2, *out.shape[1:])
    return combine(out[:, 0], out[:, 1], scale)
  return eps
