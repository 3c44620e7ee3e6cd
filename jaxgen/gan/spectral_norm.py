"""Spectral normalisation (Miyato et al. 2018) for discriminators.

A kernel is seen as a matrix W [M, N]: [C_in, N] for a dense layer,
[k_h * k_w * C_in, N] for a convolution, with N the output features. Its
largest singular value sigma is estimated by power iteration from a vector
u [N] kept between steps (one iteration per step is enough, since W changes
little from one step to the next), and the layer uses W / sigma.

How the power-iteration state is carried: `SNDense` and `SNConv` keep u in
the flax variable collection 'spectral' (one float32 [N] vector named 'u' per
layer), next to 'params'. It is therefore an ordinary pytree in the train state:

    variables = model.init(rng, x, update_stats=False)   # {'params', 'spectral'}
    # train step (u advances by n_steps power iterations):
    scores, updates = model.apply({'params': p, 'spectral': s}, x, update_stats=True,
                                  mutable=['spectral'])
    s = updates['spectral']
    # evaluation (u read, not written; no `mutable` needed):
    scores = model.apply({'params': p, 'spectral': s}, x, update_stats=False)

No gradient flows through u (nor v): as in the paper, d sigma / d W = v u^T.
When D is applied several times in one step (real, fake, penalty
interpolates), let one call update u and the others read it.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 power iteration, no bf16/TF32 passes on GPU/TPU


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x)) + eps)


def spectral_normalize(w_matrix: jax.Array, u: jax.Array, n_iter: int,
                       eps: float = 1e-12) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Divides a matrix by its power-iteration estimate of its top singular value.

  Args:
    w_matrix: [M, N] weights.
    u: [N] current estimate of the top right singular vector (any nonzero
      vector to start with; it is normalised first).
    n_iter: power iterations, each v <- W u / |W u|, u <- W^T v / |W^T v|;
      a Python int or a traced scalar, 0 allowed (u is then only normalised).
    eps: added to the squared norms before dividing.

  Returns:
    (w_sn [M, N] = W / sigma, u_new [N] float32 unit vector, sigma float32
    scalar = v^T W u with v = W u / |W u|, i.e. |W u| for the unit u_new, a
    lower bound of the top singular value that converges to it). u_new and v carry no gradient; sigma
    and w_sn are differentiable w.r.t. W.
  """
  w32 = w_matrix.astype(jnp.float32)  # [M, N]
  w_const = jax.lax.stop_gradient(w32)

  def power_step(_, u_):
    v_ = _l2_normalize(jnp.matmul(w_const, u_, precision=_HIGHEST), eps)  # [M]
    return _l2_normalize(jnp.matmul(w_const.T, v_, precision=_HIGHEST), eps)  # [N]

  u_start = _l2_normalize(jax.lax.stop_gradient(u).astype(jnp.float32), eps)  # [N]
  u_new = jax.lax.fori_loop(0, n_iter, power_step, u_start)
  u_new = jax.lax.stop_gradient(u_new)  # [N]
  v = jax.lax.stop_gradient(_l2_normalize(jnp.matmul(w_const, u_new, precision=_HIGHEST), eps))  # [M]
  sigma = jnp.dot(v, jnp.matmul(w32, u_new, precision=_HIGHEST), precision=_HIGHEST)
  w_sn = w32 / jnp.where(sigma > 0, sigma, 1.0)
  return w_sn.astype(w_matrix.dtype), u_new, sigma


def _normalized_kernel(module: nn.Module, kernel: jax.Array, n_steps: int,
                       update_stats: bool) -> jax.Array:
  """kernel [..., N] / sigma, reading (and with `update_stats` writing) 'spectral'/'u' [N] of `module`."""
  n = kernel.shape[-1]
  u_var = module.variable(
      'spectral', 'u',
      lambda: _l2_normalize(jax.random.normal(module.make_rng('params'), (n,), jnp.float32)))
  w_sn, u_new, _ = spectral_normalize(kernel.reshape(-1, n), u_var.value, n_steps)
  if update_stats:
    u_var.value = u_new
  return w_sn.reshape(kernel.shape)


class SNDense(nn.Module):
  """A dense layer with a spectrally normalised kernel. [..., C_in] -> [..., features].

  `update_stats` (keyword): advance u by `n_steps` power iterations and store
  it (needs mutable=['spectral']); otherwise u is only read. Either way the
  kernel is normalised with the sigma from the u of this call.
  """
  features: int
  use_bias: bool = True
  n_steps: int = 1
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    kernel = _normalized_kernel(self, kernel, self.n_steps, update_stats)  # [C_in, F]
    y = jnp.matmul(x.astype(self.dtype), kernel.astype(self.dtype))  # [..., F]
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


class SNConv(nn.Module):
  """A 2-D convolution (NHWC) with a spectrally normalised kernel.

  [B, H, W, C_in] -> [B, H', W', features]; the kernel [k_h, k_w, C_in, F] is
  normalised as the matrix [k_h * k_w * C_in, F]. `padding` is 'SAME', 'VALID'
  or explicit pairs, as for `jax.lax.conv_general_dilated`. `update_stats` as
  for `SNDense`.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = 'SAME'
  use_bias: bool = True
  n_steps: int = 1
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, update_stats: bool) -> jax.Array:
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
    kernel = _normalized_kernel(self, kernel, self.n_steps, update_stats)  # [kh, kw, C_in, F]
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=tuple(self.strides),
        padding=self.padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))  # [B, H', W', F]
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y
