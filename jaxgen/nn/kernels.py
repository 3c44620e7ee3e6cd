"""Which attention kernel runs: XLA's own or cuDNN's fused flash attention.

`jax.nn.dot_product_attention(implementation=None)` lowers to XLA's plain
attention on every backend: the [B, heads, N, L] score matrix is written to
device memory, read back by a softmax and again by the second product. On an
NVIDIA GPU, 'cudnn' runs one fused kernel (forward and backward) that never
materialises the scores. It applies to 16-bit q/k/v with a head width that is a
multiple of 8 and at most 256 (Hopper and newer) or 128 (Ampere), and is not
available on CPU or TPU, so a model written once should ask for 'auto': cuDNN
where it applies, XLA elsewhere, the same numbers up to rounding.
"""

from typing import Any

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn')


def _gpu_compute_capability() -> float | None:
  """The compute capability of device 0 (9.0 for an H100/H200), or None off NVIDIA GPUs."""
  if jax.default_backend() != 'gpu':
    return None
  try:
    return float(jax.devices()[0].compute_capability)
  except (AttributeError, TypeError, ValueError):
    return None


def pick_attention(choice: str, dtype: Any, head_dim: int, *,
                   compute_capability: float | None) -> str | None:
  """The `implementation` argument for `jax.nn.dot_product_attention`: 'cudnn' or None (XLA).

  choice: 'auto' (cuDNN where it applies), 'xla' or 'cudnn' (forced; an error
  from JAX where it does not apply). dtype: of q/k/v; head_dim: E of [B, N, K, E];
  compute_capability: of the GPU, None off NVIDIA GPUs.
  """
  if choice not in IMPLEMENTATIONS:
    raise ValueError(f'attention must be one of {IMPLEMENTATIONS}, got {choice!r}.')
  if choice != 'auto':
    return 'cudnn' if choice == 'cudnn' else None
  if compute_capability is None or compute_capability < 8.0:
    return None
  max_dim = 256 if compute_capability >= 9.0 else 128
  fits = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= max_dim
  return 'cudnn' if fits else None


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          mask: jax.Array | None = None, implementation: str = 'auto') -> jax.Array:
  """Softmax attention, q [B, N, K, E], k and v [B, L, K, E] -> [B, N, K, E].

  mask: bool broadcastable to [B, K, N, L] (True: attend), or None. With a mask,
  'auto' keeps XLA's kernel (cuDNN's masked backward has extra shape rules).
  """
  choice = 'xla' if mask is not None and implementation == 'auto' else implementation
  impl = pick_attention(choice, q.dtype, q.shape[-1], compute_capability=_gpu_compute_capability())
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
