"""What the diffusion network predicts: noise, clean data or velocity.

With a_t = sqrt(abar_t) and s_t = sqrt(1 - abar_t), x_t = a_t x0 + s_t eps,
and the network's output is one of

    'eps': the noise eps (Ho et al. 2020);
    'x0':  the clean data x0;
    'v':   the velocity v = a_t eps - s_t x0 (Salimans & Ho 2022).

Given x_t, any one of eps, x0 and v determines the other two; the
conversions below are those exact linear maps (for 'v' they use
a_t^2 + s_t^2 = 1: x0 = a_t x_t - s_t v, eps = s_t x_t + a_t v). The
samplers and the likelihood bound see every model through its noise
prediction (`to_eps`), so they serve every type unchanged.

Training target of each type: eps -> the noise, x0 -> the data, v -> a_t
noise - s_t x0; the loss is the unweighted MSE to it (L_simple for 'eps').

Every function takes x_t, outputs and targets [B, ...] and t int32 [B] or a
scalar in [0, T), like the functions of `schedules`.
"""

import jax

from jaxgen.diffusion.schedules import Schedule, _extract, eps_from_x0, predict_x0_from_eps
from jaxgen.errors import JaxgenError

PREDICTION_TYPES = ('eps', 'x0', 'v')


def check_prediction(prediction: str) -> None:
  """Raises JaxgenError unless `prediction` is one of PREDICTION_TYPES."""
  if prediction not in PREDICTION_TYPES:
    raise JaxgenError(f"diffusion.prediction must be one of {', '.join(map(repr, PREDICTION_TYPES))}, "
                      f'got {prediction!r}.')


def _scales(schedule: Schedule, t: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(a_t, s_t) = (sqrt(abar_t), sqrt(1 - abar_t)), shaped to broadcast against `shape`."""
  return (_extract(schedule.sqrt_alphas_cumprod, t, shape),
          _extract(schedule.sqrt_one_minus_alphas_cumprod, t, shape))


def v_from_eps_x0(schedule: Schedule, t: jax.Array, eps: jax.Array, x0: jax.Array) -> jax.Array:
  """v = a_t eps - s_t x0 ([B, ...])."""
  a, s = _scales(schedule, t, eps.shape)
  return a * eps - s * x0


def to_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
           prediction: str) -> jax.Array:
  """The noise [B, ...] implied by the network `output` [B, ...] of type `prediction` at x_t."""
  check_prediction(prediction)
  if prediction == 'eps':
    return output
  if prediction == 'x0':
    return eps_from_x0(schedule, x_t, t, output)
  a, s = _scales(schedule, t, x_t.shape)
  return s * x_t + a * output


def to_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, output: jax.Array,
          prediction: str) -> jax.Array:
  """The clean data [B, ...] implied by the network `output` [B, ...] of type `prediction` at x_t."""
  check_prediction(prediction)
  if prediction == 'x0':
    return output
  if prediction == 'eps':
    return predict_x0_from_eps(schedule, x_t, t, output)
  a, s = _scales(schedule, t, x_t.shape)
  return a * x_t - s * output


def from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array,
             prediction: str) -> jax.Array:
  """The output of type `prediction` [B, ...] that corresponds to the noise `eps` at x_t."""
  check_prediction(prediction)
  if prediction == 'eps':
    return eps
  x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  return x0 if prediction == 'x0' else v_from_eps_x0(schedule, t, eps, x0)


def target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array,
           prediction: str) -> jax.Array:
  """The training target [B, ...] of type `prediction` for x_t = q_sample(x0, t, noise).

  x0, noise: [B, ...]; t: int32 [B]. eps -> noise, x0 -> x0, v -> a_t noise - s_t x0.
  """
  check_prediction(prediction)
  if prediction == 'eps':
    return noise
  if prediction == 'x0':
    return x0
  return v_from_eps_x0(schedule, t, noise, x0)
