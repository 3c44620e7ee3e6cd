"""Ancestral (DDPM), DDIM and few-step ODE samplers over a `Schedule`.

A sampler sees the model only through an `EpsFn` (x_t, t) -> predicted noise;
the caller closes over parameters, labels and guidance. Each sampler is one
`jax.lax.scan` over a precomputed int32 array of timesteps, whose body calls
the public single-step function (`ddpm_step`, `ddim_step`, `dpmpp2m_step`,
`heun_step`), so a benchmark can run the very same step as a Python loop of
jitted calls.

The few-step solvers 'dpmpp2m' (DPM-Solver++(2M), Lu et al. 2022) and 'heun'
(Karras et al. 2022) integrate the probability-flow ODE deterministically on
the timesteps of `logsnr_timesteps` (uniform in log-SNR); 'dpmpp2m_sde' (the
same paper's SDE-DPM-Solver++(2M)) integrates the reverse SDE on them, adding
noise each step. They end, like DDIM, with the x0 prediction at the last
timestep.

Randomness: `rng` is split once into `rng_init` (draws x_T) and `rng_loop`;
the noise of the step at timestep t is drawn from
`step_rng = jax.random.fold_in(rng_loop, t)`, keyed by the timestep and not the
loop index. Both samplers share that derivation, so DDIM over all T steps with
eta = 1 reproduces DDPM with variance='fixedsmall' for the same rng.

Shapes, sampler names, step counts, `variance` and `clip_x0` are Python values
fixed at trace time; only `rng` (and whatever `eps_fn` closes over) is traced,
so a jitted sampler compiles once and is reused for every new rng.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion.schedules import Schedule, eps_from_x0, predict_x0_from_eps, q_posterior_mean
from jaxgen.errors import JaxgenError

# (x_t [B, H, W, C] float, t int32 [B]) -> predicted noise [B, H, W, C].
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

SAMPLER_NAMES = ('ddpm', 'ddim', 'dpmpp2m', 'dpmpp2m_sde', 'heun')
VARIANCE_NAMES = ('fixedlarge', 'fixedsmall')


def _check_variance(variance: str) -> None:
  if variance not in VARIANCE_NAMES:
    raise JaxgenError(
        f"Unknown DDPM variance {variance!r}; use one of {', '.join(map(repr, VARIANCE_NAMES))}.")


def _check_steps(num_steps: int, num_timesteps: int) -> None:
  if (isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer))
      or not 1 <= num_steps <= num_timesteps):
    raise JaxgenError(
        f'The number of sampling steps must be an integer in [1, {num_timesteps}], '
        f'got {num_steps!r}.')


def _eps(eps_fn: EpsFn, x_t: jax.Array, t: jax.Array) -> jax.Array:
  """eps_fn at one shared timestep t (scalar) for the whole batch."""
  t_batch = jnp.full((x_t.shape[0],), t, dtype=jnp.int32)  # [B]
  # A bfloat16 model must not drag the sampler's state down to bfloat16.
  return eps_fn(x_t, t_batch).astype(x_t.dtype)


def _step_noise(rng_loop: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
  """Standard normal noise for the step at timestep t, shaped like x_t."""
  step_rng = jax.random.fold_in(rng_loop, t)
  return jax.random.normal(step_rng, like.shape, like.dtype)


def ddpm_log_variance(schedule: Schedule, t: jax.Array, variance: str = 'fixedlarge') -> jax.Array:
  """Log variance of the reverse step at timestep t (any int shape), as in Ho et al.'s code.

  'fixedlarge' is log beta_t, except that t = 0 takes log beta~_1 (the
  log(append(posterior_variance[1], betas[1:])) of the reference code);
  'fixedsmall' is log beta~_t, clipped at t = 0 the same way.
  """
  _check_variance(variance)
  if variance == 'fixedsmall':
    return schedule.posterior_log_variance_clipped[t]
  return jnp.where(t == 0, jnp.log(schedule.posterior_variance[1]), jnp.log(schedule.betas[t]))


def ddpm_step(eps_fn: EpsFn, schedule: Schedule, x_t: jax.Array, t: jax.Array,
              rng_loop: jax.Array, *, variance: str = 'fixedlarge',
              clip_x0: bool = True) -> jax.Array:
  """One ancestral step x_t -> x_{t-1} of p(x_{t-1} | x_t).

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    x_t: [B, H, W, C] float32, the current sample.
    t: int32 scalar in [0, T), the current timestep.
    rng_loop: the loop key; this step's noise comes from fold_in(rng_loop, t).
    variance: 'fixedlarge' (beta_t) or 'fixedsmall' (beta~_t).
    clip_x0: clip the x0 prediction to [-1, 1] (the data range) before
      forming the posterior mean.

  Returns:
    x_{t-1}, [B, H, W, C]; at t = 0 the posterior mean (no noise), i.e. the
    x0 prediction itself.
  """
  eps = _eps(eps_fn, x_t, t)
  x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  mean = q_posterior_mean(schedule, x0, x_t, t)
  std = jnp.exp(0.5 * ddpm_log_variance(schedule, t, variance))
  # The last step returns the mean: any noise there would land in the output.
  std = jnp.where(t > 0, std, 0.0)
  return mean + std * _step_noise(rng_loop, t, x_t)


def ddim_timesteps(num_timesteps: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The DDIM timesteps and their predecessors, in sampling order.

  Spacing: `round(linspace(T - 1, 0, num_steps))` (rounding half up), i.e.
  evenly spaced over [0, T) and always containing T - 1 and 0. Unlike the
  'leading' `arange(0, T, T // num_steps)` of the DDIM code, this gives exactly
  num_steps distinct steps for every num_steps in [1, T] and always starts at
  T - 1, where q(x_{T-1}) is closest to the N(0, I) of x_T; num_steps == T gives every
  timestep T - 1, ..., 0.

  Returns:
    (timesteps, prev_timesteps), int32 [num_steps] each: timesteps strictly
    decreasing from T - 1 to 0, prev_timesteps[i] = timesteps[i + 1] and -1
    for the last step (meaning abar_prev = 1, i.e. clean data).
  """
  _check_steps(num_steps, num_timesteps)
  timesteps = np.floor(np.linspace(num_timesteps - 1, 0, num_steps) + 0.5).astype(np.int32)
  prev_timesteps = np.append(timesteps[1:], -1).astype(np.int32)
  return timesteps, prev_timesteps


def ddim_step(eps_fn: EpsFn, schedule: Schedule, x_t: jax.Array, t: jax.Array,
              t_prev: jax.Array, rng_loop: jax.Array, *, eta: float | jax.Array = 0.0,
              clip_x0: bool = True) -> jax.Array:
  """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12).

  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z, with
  sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev).

  When clip_x0 is on, eps in the direction term is re-derived from the clipped
  x0 (eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)), so that x0 and eps stay a
  consistent decomposition of x_t; this also makes the step with eta = 1 and
  t_prev = t - 1 equal to the clipped DDPM 'fixedsmall' step.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    x_t: [B, H, W, C] float32, the current sample.
    t: int32 scalar in [0, T), the current timestep.
    t_prev: int32 scalar in [-1, t), the next timestep; -1 means clean data
      (a_prev = 1), which makes the step return the x0 prediction.
    rng_loop: the loop key; this step's noise comes from fold_in(rng_loop, t).
    eta: 0 for the deterministic DDIM, 1 for DDPM-like stochasticity.
    clip_x0: clip the x0 prediction to [-1, 1].

  Returns:
    x_{t_prev}, [B, H, W, C].
  """
  eps = _eps(eps_fn, x_t, t)
  x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = eps_from_x0(schedule, x_t, t, x0)
  has_prev = t_prev >= 0
  t_prev_idx = jnp.maximum(t_prev, 0)
  a_t = schedule.alphas_cumprod[t]
  a_prev = jnp.where(has_prev, schedule.alphas_cumprod[t_prev_idx], 1.0)
  # 1 - a from the float64-derived sqrt(1 - a) keeps its digits where a ~ 1.
  one_minus_a_t = schedule.sqrt_one_minus_alphas_cumprod[t] ** 2
  one_minus_a_prev = jnp.where(
      has_prev, schedule.sqrt_one_minus_alphas_cumprod[t_prev_idx] ** 2, 0.0)
  # a_prev - a_t, from whichever pair of stored numbers is small (a or 1 - a):
  # subtracting two float32 values near 1 would keep only ~1e-7 absolute digits.
  a_diff = jnp.where(a_prev < 0.5, a_prev - a_t, one_minus_a_t - one_minus_a_prev)
  sigma = eta * jnp.sqrt(one_minus_a_prev / one_minus_a_t * (a_diff / a_prev))
  dir_coef = jnp.sqrt(jnp.maximum(one_minus_a_prev - sigma ** 2, 0.0))
  x_prev = jnp.sqrt(a_prev) * x0 + dir_coef * eps
  return x_prev + sigma * _step_noise(rng_loop, t, x_t)


def logsnr_timesteps(schedule: Schedule, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Timesteps evenly spaced in log-SNR, and their predecessors, in sampling order.

  The few-step solvers work in lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))
  (half the log-SNR), which rises from lambda_{T-1} to lambda_0. The DDIM
  spacing, even in t, leaves a step of lambda ~ 2.4 from t = 32 to 0 at
  K = 32 on the linear schedule, in the low-noise range where the data
  prediction changes most, and DPM-Solver++(2M) then converges far slower than
  at second order (tests/test_guidance_solvers.py's Gaussian: error 0.14 at
  K = 32, against 0.016 here); even steps in lambda (the "logSNR" spacing of
  Lu et al. 2022) keep every step small. Target i of num_steps
  targets evenly spaced from lambda_{T-1} to lambda_0 is rounded to the
  timestep of the nearest lambda. Near t = 0, and for num_steps close to T
  also near T - 1, lambda moves by more (less) than the target spacing per
  timestep, so targets can share a timestep; such collisions are resolved by
  moving the noisier one up to the next free timestep, which keeps the steps
  distinct, so that num_steps == T gives every timestep T - 1, ..., 0.

  The schedule must be concrete (not traced): the spacing is computed in
  numpy when the sampler is traced.

  Returns:
    (timesteps, prev_timesteps), int32 [num_steps] each: timesteps strictly
    decreasing from T - 1 to 0 (just T - 1 for num_steps = 1),
    prev_timesteps[i] = timesteps[i + 1] and -1 for the last step (clean data).
  """
  num_timesteps = schedule.num_timesteps
  _check_steps(num_steps, num_timesteps)
  lam = (np.log(np.asarray(schedule.sqrt_alphas_cumprod, np.float64))
         - np.log(np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)))  # [T], decreasing
  targets = np.linspace(lam[-1], lam[0], num_steps)  # [K], increasing
  nearest = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)  # [K]
  i = np.arange(num_steps)
  # Room for the steps after and before each one, then t_i = max(t_i, t_{i+1} + 1)
  # from the last step back (a reverse running maximum of t_i + i).
  t = np.clip(nearest, num_steps - 1 - i, num_timesteps - 1 - i) + i
  timesteps = (np.maximum.accumulate(t[::-1])[::-1] - i).astype(np.int32)
  prev_timesteps = np.append(timesteps[1:], -1).astype(np.int32)
  return timesteps, prev_timesteps


def _eps_and_x0(eps_fn: EpsFn, schedule: Schedule, x_t: jax.Array, t: jax.Array,
                clip_x0: bool) -> tuple[jax.Array, jax.Array]:
  """(eps, x0) [B, H, W, C] at timestep t (scalar); with clip_x0, x0 is clipped and eps re-derived."""
  eps = _eps(eps_fn, x_t, t)
  x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = eps_from_x0(schedule, x_t, t, x0)
  return eps, x0


def _half_log_snr(schedule: Schedule, t: jax.Array) -> jax.Array:
  """lambda_t = log sqrt(abar_t) - log sqrt(1 - abar_t) at int32 timestep(s) t."""
  return jnp.log(schedule.sqrt_alphas_cumprod[t]) - jnp.log(schedule.sqrt_one_minus_alphas_cumprod[t])


def dpmpp2m_step(eps_fn: EpsFn, schedule: Schedule, x_t: jax.Array, x0_last: jax.Array,
                 t: jax.Array, t_next: jax.Array, t_last: jax.Array, *,
                 clip_x0: bool = True, eta: float = 0.0,
                 rng_loop: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++(2M) step x_t -> x_{t_next} (Lu et al. 2022, Algorithm 2 and its SDE form).

  With a = sqrt(abar), s = sqrt(1 - abar), lambda = log(a / s) and
  h = lambda_{t_next} - lambda_t > 0:

      x_{t_next} = (s_{t_next} / s_t) exp(-eta h) x_t + a_{t_next} (1 - exp(-(1 + eta) h)) D
                   + s_{t_next} sqrt(1 - exp(-2 eta h)) z,
      D = (1 + 1 / (2r)) x0_t - 1 / (2r) x0_{t_last},   r = (lambda_t - lambda_{t_last}) / h,

  with x0 linear in lambda through the last two predictions. eta = 0 is the
  exponential integrator of the probability-flow ODE in data-prediction form
  (DPM-Solver++(2M)); eta = 1 integrates the reverse SDE instead
  (SDE-DPM-Solver++(2M) of the same paper, in the "midpoint" form that
  diffusers calls 'sde-dpmsolver++'), which adds fresh noise z ~ N(0, I) each
  step and so corrects part of the network's error along the way, as
  ancestral sampling does. The first step (no t_last) takes D = x0_t (first
  order: DDIM with eta 0 resp. SDE-DPM-Solver++1), and so does the step to
  clean data (t_next = -1, h infinite), which returns x0_t.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    x_t: [B, H, W, C] float32, the current sample.
    x0_last: [B, H, W, C], the x0 prediction of the previous step (ignored
      when t_last = -1).
    t: int32 scalar in [0, T), the current timestep.
    t_next: int32 scalar in [-1, t); -1 means clean data.
    t_last: int32 scalar in (t, T), the previous step's timestep; -1 for the first step.
    clip_x0: clip the x0 prediction to [-1, 1].
    eta: 0 (the ODE) to 1 (the SDE), a Python float fixed at trace time.
    rng_loop: the loop key when eta > 0; z comes from fold_in(rng_loop, t).

  Returns:
    (x_{t_next}, x0_t), [B, H, W, C] each; x0_t is the next step's x0_last.
  """
  if eta and rng_loop is None:
    raise JaxgenError('dpmpp2m_step with eta > 0 draws noise: pass rng_loop.')
  _, x0 = _eps_and_x0(eps_fn, schedule, x_t, t, clip_x0)
  has_next, has_last = t_next >= 0, t_last >= 0
  t_next_idx, t_last_idx = jnp.maximum(t_next, 0), jnp.maximum(t_last, 0)
  lam = _half_log_snr(schedule, t)
  h = jnp.where(has_next, _half_log_snr(schedule, t_next_idx) - lam, 1.0)
  r = jnp.where(has_last, lam - _half_log_snr(schedule, t_last_idx), h) / h
  half_inv_r = jnp.where(has_last & has_next, 0.5 / r, 0.0)
  d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_last
  s_next = schedule.sqrt_one_minus_alphas_cumprod[t_next_idx]
  ratio = s_next / schedule.sqrt_one_minus_alphas_cumprod[t]
  x_next = (ratio * jnp.exp(-eta * h) * x_t
            - schedule.sqrt_alphas_cumprod[t_next_idx] * jnp.expm1(-(1.0 + eta) * h) * d)
  if eta:
    x_next = x_next + s_next * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * _step_noise(rng_loop, t, x_t)
  return jnp.where(has_next, x_next, x0), x0


def heun_step(eps_fn: EpsFn, schedule: Schedule, x_t: jax.Array, t: jax.Array, t_next: jax.Array,
              *, clip_x0: bool = True) -> jax.Array:
  """One step x_t -> x_{t_next} of Heun's method on the probability-flow ODE (Karras et al. 2022).

  In the variables of Karras et al., y = x / a and sigma = s / a (a =
  sqrt(abar), s = sqrt(1 - abar)), the ODE is dy/dsigma = eps(x, t). The
  Euler predictor y' = y + (sigma_{t_next} - sigma_t) eps_t (which is the DDIM
  step a_{t_next} x0_t + s_{t_next} eps_t) is corrected with the slope at its
  end: y_{t_next} = y + (sigma_{t_next} - sigma_t) (eps_t + eps'_{t_next}) / 2.
  The step to clean data (t_next = -1, sigma = 0) stays Euler and returns
  x0_t; it alone makes one network evaluation (a `lax.cond`), the others two.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    x_t: [B, H, W, C] float32, the current sample.
    t: int32 scalar in [0, T), the current timestep.
    t_next: int32 scalar in [-1, t); -1 means clean data.
    clip_x0: clip both x0 predictions to [-1, 1] (re-deriving eps from them).

  Returns:
    x_{t_next}, [B, H, W, C].
  """
  eps, x0 = _eps_and_x0(eps_fn, schedule, x_t, t, clip_x0)

  def second_order(_):
    t_n = jnp.maximum(t_next, 0)
    a, s = schedule.sqrt_alphas_cumprod[t], schedule.sqrt_one_minus_alphas_cumprod[t]
    a_n, s_n = schedule.sqrt_alphas_cumprod[t_n], schedule.sqrt_one_minus_alphas_cumprod[t_n]
    x_pred = a_n * x0 + s_n * eps  # Euler, = (a_n / a) x_t + (s_n - a_n s / a) eps
    eps_n, _ = _eps_and_x0(eps_fn, schedule, x_pred, t_n, clip_x0)
    return (a_n / a) * x_t + (s_n - a_n * s / a) * (0.5 * (eps + eps_n))

  return jax.lax.cond(t_next >= 0, second_order, lambda _: x0, None)


def _init(rng: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(x_T [shape] float32 ~ N(0, I), rng_loop) from the sampler's rng."""
  rng_init, rng_loop = jax.random.split(rng)
  return jax.random.normal(rng_init, shape, jnp.float32), rng_loop


def ddpm_sample(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, shape: tuple[int, ...], *,
                variance: str = 'fixedlarge', clip_x0: bool = True) -> jax.Array:
  """Ancestral sampling over all T steps, t = T - 1, ..., 0 (Ho et al. 2020).

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    rng: a PRNG key (the only argument that changes between calls).
    shape: (B, H, W, C), static.
    variance: 'fixedlarge' or 'fixedsmall' (see `ddpm_log_variance`), static.
    clip_x0: clip x0 predictions to [-1, 1], static.

  Returns:
    [B, H, W, C] float32 samples (in [-1, 1] when clip_x0).
  """
  _check_variance(variance)
  x, rng_loop = _init(rng, shape)
  timesteps = np.arange(schedule.num_timesteps - 1, -1, -1, dtype=np.int32)  # [T]

  def body(x_t, t):
    return ddpm_step(eps_fn, schedule, x_t, t, rng_loop, variance=variance, clip_x0=clip_x0), None

  x, _ = jax.lax.scan(body, x, jnp.asarray(timesteps))
  return x


# (x_{t_prev} [B, H, W, C], t, t_prev int32 scalars) -> the x_{t_prev} the next step starts from.
AfterStepFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def ddim_loop(eps_fn: EpsFn, schedule: Schedule, x: jax.Array, timesteps: np.ndarray,
              prev_timesteps: np.ndarray, rng_loop: jax.Array, *, eta: float | jax.Array = 0.0,
              clip_x0: bool = True, after_step: AfterStepFn | None = None) -> jax.Array:
  """DDIM steps from x at timesteps[0] down to prev_timesteps[-1], as one `lax.scan`.

  The loop of `ddim_sample`, shared with the editing functions
  (`jaxgen.diffusion.editing`), which start elsewhere than pure noise or
  change the state between steps.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    x: [B, H, W, C] float32, the state at timesteps[0].
    timesteps: int32 [K], strictly decreasing, in [0, T).
    prev_timesteps: int32 [K], each step's target timestep (-1: clean data).
    rng_loop: the loop key; step noise comes from fold_in(rng_loop, t).
    eta: noise scale in [0, 1] (may be traced).
    clip_x0: clip x0 predictions to [-1, 1], static.
    after_step: called as after_step(x_prev, t, t_prev) after every step; its
      result replaces x_prev (None: no change).

  Returns:
    x at prev_timesteps[-1], [B, H, W, C].
  """

  def body(x_t, ts):
    t, t_prev = ts
    x_prev = ddim_step(eps_fn, schedule, x_t, t, t_prev, rng_loop, eta=eta, clip_x0=clip_x0)
    if after_step is not None:
      x_prev = after_step(x_prev, t, t_prev)
    return x_prev, None

  x, _ = jax.lax.scan(body, x, (jnp.asarray(timesteps), jnp.asarray(prev_timesteps)))
  return x


def ddim_sample(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, shape: tuple[int, ...], *,
                num_steps: int, eta: float | jax.Array = 0.0, clip_x0: bool = True) -> jax.Array:
  """DDIM sampling over `num_steps` timesteps from `ddim_timesteps` (Song et al. 2021).

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    rng: a PRNG key; with eta = 0 only x_T depends on it.
    shape: (B, H, W, C), static.
    num_steps: number of network evaluations in [1, T], static.
    eta: noise scale in [0, 1] (may be traced).
    clip_x0: clip x0 predictions to [-1, 1], static.

  Returns:
    [B, H, W, C] float32 samples (in [-1, 1] when clip_x0).
  """
  timesteps, prev_timesteps = ddim_timesteps(schedule.num_timesteps, num_steps)
  x, rng_loop = _init(rng, shape)
  return ddim_loop(eps_fn, schedule, x, timesteps, prev_timesteps, rng_loop, eta=eta, clip_x0=clip_x0)


def dpmpp2m_sample(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, shape: tuple[int, ...], *,
                   num_steps: int, clip_x0: bool = True, sde: bool = False) -> jax.Array:
  """DPM-Solver++(2M) over `num_steps` timesteps from `logsnr_timesteps` (num_steps evaluations).

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps), concrete.
    rng: a PRNG key; without sde only x_T depends on it (the ODE solver is deterministic).
    shape: (B, H, W, C), static.
    num_steps: number of network evaluations in [1, T], static.
    clip_x0: clip x0 predictions to [-1, 1], static.
    sde: solve the reverse SDE (SDE-DPM-Solver++(2M), `dpmpp2m_step` with
      eta = 1) instead of the probability-flow ODE, static.

  Returns:
    [B, H, W, C] float32 samples (in [-1, 1] when clip_x0).
  """
  timesteps, next_timesteps = logsnr_timesteps(schedule, num_steps)
  last_timesteps = np.append(-1, timesteps[:-1]).astype(np.int32)
  x, rng_loop = _init(rng, shape)
  eta = 1.0 if sde else 0.0

  def body(carry, ts):
    x_t, x0_last = carry
    t_last, t, t_next = ts
    return dpmpp2m_step(eps_fn, schedule, x_t, x0_last, t, t_next, t_last, clip_x0=clip_x0,
                        eta=eta, rng_loop=rng_loop), None

  (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)),
                           (jnp.asarray(last_timesteps), jnp.asarray(timesteps),
                            jnp.asarray(next_timesteps)))
  return x


def heun_sample(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, shape: tuple[int, ...], *,
                num_steps: int, clip_x0: bool = True) -> jax.Array:
  """Heun's method over `num_steps` timesteps from `logsnr_timesteps` (2 num_steps - 1 evaluations).

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps), concrete.
    rng: a PRNG key; only x_T depends on it (the solver is deterministic).
    shape: (B, H, W, C), static.
    num_steps: number of timesteps in [1, T], static.
    clip_x0: clip x0 predictions to [-1, 1], static.

  Returns:
    [B, H, W, C] float32 samples (in [-1, 1] when clip_x0).
  """
  timesteps, next_timesteps = logsnr_timesteps(schedule, num_steps)
  x, _ = _init(rng, shape)

  def body(x_t, ts):
    t, t_next = ts
    return heun_step(eps_fn, schedule, x_t, t, t_next, clip_x0=clip_x0), None

  x, _ = jax.lax.scan(body, x, (jnp.asarray(timesteps), jnp.asarray(next_timesteps)))
  return x


def evaluations(sampler: str, num_steps: int) -> int:
  """Network evaluations per sample of `sampler` over num_steps timesteps."""
  return 2 * num_steps - 1 if sampler == 'heun' else num_steps


def sample(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, shape: tuple[int, ...], *,
           sampler: str = 'ddpm', steps: int | None = None, eta: float | jax.Array = 0.0,
           variance: str = 'fixedlarge', clip_x0: bool = True) -> jax.Array:
  """Draws samples [B, H, W, C] float32 with the sampler called `sampler`.

  'ddpm' runs all T steps (`steps` must be None or T) with `variance`;
  'ddim' runs `steps` steps (None means T) with `eta`; 'dpmpp2m' and 'heun'
  solve the probability-flow ODE over `steps` timesteps (None means T;
  `eta` and `variance` do not apply), 'dpmpp2m_sde' the reverse SDE with
  DPM-Solver++(2M)'s stochastic form. Raises JaxgenError for an unknown
  sampler or variance, or steps outside [1, T].
  """
  if sampler not in SAMPLER_NAMES:
    raise JaxgenError(
        f"Unknown sampler {sampler!r}; use one of {', '.join(map(repr, SAMPLER_NAMES))}.")
  num_timesteps = schedule.num_timesteps
  if steps is not None:
    _check_steps(steps, num_timesteps)
  if sampler == 'ddpm':
    if steps not in (None, num_timesteps):
      raise JaxgenError(
          f"The 'ddpm' sampler runs all {num_timesteps} steps; "
          f"use sampler='ddim' for steps={steps}.")
    return ddpm_sample(eps_fn, schedule, rng, shape, variance=variance, clip_x0=clip_x0)
  num_steps = num_timesteps if steps is None else steps
  if sampler in ('dpmpp2m', 'dpmpp2m_sde'):
    return dpmpp2m_sample(eps_fn, schedule, rng, shape, num_steps=num_steps, clip_x0=clip_x0,
                          sde=sampler == 'dpmpp2m_sde')
  if sampler == 'heun':
    return heun_sample(eps_fn, schedule, rng, shape, num_steps=num_steps, clip_x0=clip_x0)
  return ddim_sample(eps_fn, schedule, rng, shape, num_steps=num_steps, eta=eta, clip_x0=clip_x0)
