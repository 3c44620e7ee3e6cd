"""Paths between latents: the spherical interpolation every latent-variable family uses."""

import jax
import jax.numpy as jnp


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  """Spherical interpolation between a and b [..., D] at t [T] -> [T, ..., D] (linear if parallel)."""
  a_flat, b_flat = a.reshape(-1), b.reshape(-1)
  cos = jnp.dot(a_flat, b_flat) / (jnp.linalg.norm(a_flat) * jnp.linalg.norm(b_flat) + 1e-12)
  omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
  t = t.reshape((-1,) + (1,) * a.ndim)
  so = jnp.sin(omega)
  lerp = (1 - t) * a + t * b
  slerped = (jnp.sin((1 - t) * omega) * a + jnp.sin(t * omega) * b) / jnp.where(so > 1e-6, so, 1.0)
  return jnp.where(so > 1e-6, slerped, lerp)
