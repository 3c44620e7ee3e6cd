"""Image editing with a trained diffusion model: inpainting, SDEdit, DDIM inversion, interpolation.

Like the samplers, every function here sees the model only through an `EpsFn`
(x_t [B, H, W, C], t [B]) -> predicted noise, is pure and jit-able (shapes,
step counts, `strength`, `num` and `clip_x0` are static; keys, images and
masks may be traced), and runs each loop as one `jax.lax.scan` over the
`samplers.ddim_timesteps` grid (K = num_steps timesteps t_0 = T - 1 > ... >
t_{K-1} = 0, then -1 for clean data): `samplers.ddim_loop` down the grid,
`ddim_invert`'s own step up it.

- `inpaint`: DDIM from pure noise; after every step to t_prev the known
  pixels are put back as a fresh sample of q(x_{t_prev} | image), and at the
  last step (t_prev = -1) as the image itself, so the output keeps them
  exactly (the replacement method of RePaint, Lugmayr et al. 2022, without
  its resampling).
- `img2img`: SDEdit (Meng et al. 2022): noise the image to a grid timestep
  t0 ~ strength (T - 1) and run DDIM from there to clean data.
- `ddim_invert`: the deterministic DDIM map run backwards, clean data ->
  x_{T-1}; `interpolate` slerps two such latents and decodes the path.

Keys: `rng` is split into `rng_init` (x_T for inpaint, the noise of x_t0 for
img2img) and `rng_loop`, exactly as in `samplers.ddim_sample`; the step at
timestep t draws its noise from step_rng = fold_in(rng_loop, t) and the
inpainting's known region from fold_in(step_rng, 1).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.diffusion import samplers
from jaxgen.diffusion.samplers import EpsFn
from jaxgen.diffusion.schedules import Schedule, q_sample
from jaxgen.errors import JaxgenError
from jaxgen.nn.interpolate import slerp


def _check_images(images: jax.Array, what: str = 'images') -> None:
  if images.ndim != 4:
    raise JaxgenError(f'{what} must be a batch [B, H, W, C], got shape {tuple(images.shape)}.')


def check_masks(masks: jax.Array, images: jax.Array) -> jax.Array:
  """Checks masks against images [B, H, W, C] and returns them as float32 [B, H, W, 1 or C].

  masks: [B, H, W, 1] or [B, H, W, C], float in [0, 1] or bool, 1 = known.
  JaxgenError for any other shape.
  """
  shape, image_shape = tuple(masks.shape), tuple(images.shape)
  if len(shape) != 4 or shape[:3] != image_shape[:3] or shape[3] not in (1, image_shape[3]):
    raise JaxgenError(f'masks must have shape [B, H, W, 1] or [B, H, W, C] = '
                      f'{image_shape[:3] + (1,)} or {image_shape}, got {shape}.')
  return masks.astype(jnp.float32)


def _check_strength(strength: float) -> None:
  if (isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer))
      or not 0.0 < strength <= 1.0):
    raise JaxgenError(f'strength must be a number in (0, 1], got {strength!r}.')


def _init(rng: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """(standard normal [shape] float32 from rng_init, rng_loop), the split of `samplers.ddim_sample`."""
  rng_init, rng_loop = jax.random.split(rng)
  return jax.random.normal(rng_init, shape, jnp.float32), rng_loop


def inpaint(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, images: jax.Array, masks: jax.Array,
            *, num_steps: int, eta: float | jax.Array = 1.0, clip_x0: bool = True) -> jax.Array:
  """Fills the unknown pixels of `images` with the model, keeping the known ones exactly.

  DDIM over the `ddim_timesteps(T, num_steps)` grid from x_T ~ N(0, I) (the
  same x_T as `ddim_sample` with this rng). After the step t -> t_prev the
  state becomes m * q_sample(images, t_prev, z) + (1 - m) * x_{t_prev}, z ~
  N(0, I) from fold_in(fold_in(rng_loop, t), 1); at t_prev = -1 the known
  part is `images` itself. So a mask of ones returns `images` and a mask of
  zeros is plain DDIM sampling. Soft masks in (0, 1) blend linearly.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    rng: a PRNG key.
    images: [B, H, W, C] float in [-1, 1], the images to complete.
    masks: [B, H, W, 1] or [B, H, W, C], float in [0, 1] or bool; 1 (True)
      marks a known pixel, kept; 0 a pixel to paint.
    num_steps: DDIM steps in [1, T], static.
    eta: DDIM noise scale in [0, 1] (may be traced); 1, the default, lets the
      painted region follow the re-noised known one more freely.
    clip_x0: clip x0 predictions to [-1, 1], static.

  Returns:
    [B, H, W, C] float32: images where masks is 1, painted elsewhere.
  """
  _check_images(images)
  masks = check_masks(masks, images)  # [B, H, W, 1 or C]
  timesteps, prev_timesteps = samplers.ddim_timesteps(schedule.num_timesteps, num_steps)
  images = images.astype(jnp.float32)
  x, rng_loop = _init(rng, images.shape)  # x_T, [B, H, W, C]

  def put_back_known(x_prev, t, t_prev):
    known_rng = jax.random.fold_in(jax.random.fold_in(rng_loop, t), 1)
    noise = jax.random.normal(known_rng, images.shape, jnp.float32)
    noised = q_sample(schedule, images, jnp.maximum(t_prev, 0), noise)
    known = jnp.where(t_prev >= 0, noised, images)  # [B, H, W, C]
    return masks * known + (1.0 - masks) * x_prev

  return samplers.ddim_loop(eps_fn, schedule, x, timesteps, prev_timesteps, rng_loop, eta=eta,
                            clip_x0=clip_x0, after_step=put_back_known)


def img2img_timesteps(num_timesteps: int, num_steps: int,
                      strength: float) -> tuple[np.ndarray, np.ndarray]:
  """The tail of the DDIM grid that SDEdit at `strength` runs: (timesteps, prev_timesteps), int32 [k].

  The start t0 is the timestep of `ddim_timesteps(T, num_steps)` nearest to
  strength (T - 1) (the noisier one on a tie), and the steps are that grid
  from t0 on: t0 > ... > 0, then -1. So k ~ strength num_steps network
  evaluations, and strength 1 runs the whole grid from T - 1.
  """
  _check_strength(strength)
  timesteps, prev_timesteps = samplers.ddim_timesteps(num_timesteps, num_steps)
  start = int(np.argmin(np.abs(timesteps - strength * (num_timesteps - 1))))
  return timesteps[start:], prev_timesteps[start:]


def img2img(eps_fn: EpsFn, schedule: Schedule, rng: jax.Array, images: jax.Array, *,
            strength: float, num_steps: int, eta: float | jax.Array = 0.0,
            clip_x0: bool = True) -> jax.Array:
  """SDEdit (Meng et al. 2022): noises `images` to timestep t0 and denoises them with DDIM.

  x_t0 = q_sample(images, t0, z) with z ~ N(0, I) from rng_init, then DDIM
  over the grid of `img2img_timesteps` (t0 ~ strength (T - 1)) down to clean
  data. Small strengths keep the layout and most detail of the image; 1 starts
  from sqrt(abar_{T-1}) images + sqrt(1 - abar_{T-1}) z, almost pure noise.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    rng: a PRNG key; with eta = 0 only x_t0 depends on it.
    images: [B, H, W, C] float in [-1, 1], the guides.
    strength: in (0, 1], static: how far towards noise the images are pushed.
    num_steps: steps of the full DDIM grid in [1, T], static (SDEdit runs the
      ~strength num_steps of them below t0).
    eta: DDIM noise scale in [0, 1] (may be traced).
    clip_x0: clip x0 predictions to [-1, 1], static.

  Returns:
    [B, H, W, C] float32 edited images.
  """
  _check_images(images)
  timesteps, prev_timesteps = img2img_timesteps(schedule.num_timesteps, num_steps, strength)
  noise, rng_loop = _init(rng, images.shape)  # [B, H, W, C]
  x = q_sample(schedule, images.astype(jnp.float32), jnp.int32(timesteps[0]), noise)
  return samplers.ddim_loop(eps_fn, schedule, x, timesteps, prev_timesteps, rng_loop, eta=eta,
                            clip_x0=clip_x0)


def ddim_invert(eps_fn: EpsFn, schedule: Schedule, images: jax.Array, *,
                num_steps: int) -> jax.Array:
  """DDIM inversion: the deterministic DDIM map run forwards, clean images -> x_{T-1}.

  On the `ddim_timesteps(T, num_steps)` grid read upwards (-1 = clean data,
  0, ..., T - 1), each step from t to t_next inverts the eta = 0 DDIM step
  from t_next to t, approximating the noise that step would predict,
  eps_fn(x_{t_next}, t_next), by its value at the current point,
  eps = eps_fn(x_t, t_next) (the usual inversion, as in Mokady et al.'s
  null-text inversion and diffusers' DDIMInverseScheduler):

      x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
      x_{t_next} = sqrt(abar_{t_next}) x0 + sqrt(1 - abar_{t_next}) eps,

  with abar_{-1} = 1 (so x0 = images at the first step). Decoding the result
  with eta = 0 DDIM on the same grid (`ddim_decode`) reconstructs the images
  up to an error O(1 / num_steps). No clipping; num_steps network evaluations.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    images: [B, H, W, C] float (in [-1, 1] for data).
    num_steps: steps in [1, T], static.

  Returns:
    latents x_{T-1}, [B, H, W, C] float32.
  """
  _check_images(images)
  timesteps, prev_timesteps = samplers.ddim_timesteps(schedule.num_timesteps, num_steps)
  # Upwards: from -1 (clean) to T - 1.
  current, following = prev_timesteps[::-1].copy(), timesteps[::-1].copy()  # int32 [K] each

  def body(x, ts):
    t, t_next = ts
    t_batch = jnp.full((x.shape[0],), t_next, jnp.int32)  # [B]
    eps = eps_fn(x, t_batch).astype(x.dtype)
    t_idx = jnp.maximum(t, 0)
    a_t = jnp.where(t >= 0, schedule.sqrt_alphas_cumprod[t_idx], 1.0)
    s_t = jnp.where(t >= 0, schedule.sqrt_one_minus_alphas_cumprod[t_idx], 0.0)
    x0 = (x - s_t * eps) / a_t
    x_next = (schedule.sqrt_alphas_cumprod[t_next] * x0
              + schedule.sqrt_one_minus_alphas_cumprod[t_next] * eps)
    return x_next, None

  x, _ = jax.lax.scan(body, images.astype(jnp.float32),
                      (jnp.asarray(current), jnp.asarray(following)))
  return x


def ddim_decode(eps_fn: EpsFn, schedule: Schedule, latents: jax.Array, *, num_steps: int,
                clip_x0: bool = False) -> jax.Array:
  """Deterministic (eta = 0) DDIM from latents x_{T-1} [B, H, W, C] to images, the inverse of `ddim_invert`.

  clip_x0 (static) off by default: clipping is not part of the map that
  `ddim_invert` inverts. Returns [B, H, W, C] float32.
  """
  _check_images(latents, 'latents')
  timesteps, prev_timesteps = samplers.ddim_timesteps(schedule.num_timesteps, num_steps)
  # eta = 0: the steps draw no noise, so the loop key is never used.
  return samplers.ddim_loop(eps_fn, schedule, latents.astype(jnp.float32), timesteps,
                            prev_timesteps, jax.random.key(0), eta=0.0, clip_x0=clip_x0)


def interpolate(eps_fn: EpsFn, schedule: Schedule, a: jax.Array, b: jax.Array, *, num: int,
                num_steps: int, clip_x0: bool = False) -> jax.Array:
  """A path of `num` images from a to b through the DDIM latent space.

  Inverts a and b together (`ddim_invert`), slerps the two latents at t =
  linspace(0, 1, num) (`jaxgen.nn.interpolate.slerp`; the latents are nearly
  Gaussian, whose mass sits on a sphere) and decodes all `num` of them in one
  batched `ddim_decode`. The endpoints are the reconstructions of a and b,
  exact up to the inversion error.

  Args:
    eps_fn: the noise predictor.
    schedule: the diffusion schedule (T timesteps).
    a, b: [H, W, C] float images in [-1, 1].
    num: path length >= 2, static.
    num_steps: DDIM steps in [1, T] of both the inversion and the decoding, static.
    clip_x0: clip the decoder's x0 predictions to [-1, 1], static; off by
      default, which keeps decoding the exact inverse of the inversion.

  Returns:
    [num, H, W, C] float32, a first and b last.
  """
  if a.ndim != 3 or tuple(a.shape) != tuple(b.shape):
    raise JaxgenError(f'a and b must be two images [H, W, C] of one shape, got shapes '
                      f'{tuple(a.shape)} and {tuple(b.shape)}.')
  if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
    raise JaxgenError(f'num must be an integer >= 2 (the path includes both ends), got {num!r}.')
  latents = ddim_invert(eps_fn, schedule, jnp.stack([a, b]), num_steps=num_steps)  # [2, H, W, C]
  path = slerp(latents[0], latents[1], jnp.linspace(0.0, 1.0, num))  # [num, H, W, C]
  return ddim_decode(eps_fn, schedule, path, num_steps=num_steps, clip_x0=clip_x0)

