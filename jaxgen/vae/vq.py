"""A VQ-VAE vector quantiser with an EMA codebook (van den Oord et al. 2017, appendix A.1).

The codebook e [K, D] is learnt without gradients, as exponential moving
averages of the encoder outputs assigned to each code (the formulation of
Sonnet's `VectorQuantizerEMA`, with Laplace smoothing of the cluster sizes):

    n_k = #{i : idx_i = k},   s_k = sum_{i : idx_i = k} z_i        (this batch)
    N_k <- decay * N_k + (1 - decay) * n_k                         ('cluster_size')
    m_k <- decay * m_k + (1 - decay) * s_k                         ('embed_sum')
    n = sum_k N_k,   size_k = (N_k + eps) / (n + K * eps) * n      (Laplace smoothing)
    e_k <- m_k / size_k                                            ('codebook')

The encoder is trained through the straight-through estimator plus the
commitment loss ||z - sg(e)||^2 (weighted by beta by the caller). The state
is a plain dict of float32 arrays, so it can live in a train state, be
checkpointed and be replicated or sharded like any other pytree. Every
function is pure and jit-able; the per-code statistics are one-hot matmuls,
so a batch sharded over devices reduces with one all-reduce and no loop over
codes. The one-hot matrix [N, K] is the size of the distance matrix that
`nearest_codes` already builds.
"""

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls: exact counts, no bf16 passes on GPU/TPU


def init_codebook(rng: jax.Array, num_codes: int, dim: int) -> dict[str, jax.Array]:
  """EMA codebook state for `num_codes` codes of dimension `dim`.

  Returns {'codebook': [K, D], 'cluster_size': [K], 'embed_sum': [K, D]}, all
  float32. The codes are drawn uniformly from [-sqrt(3/D), sqrt(3/D)] (the
  variance-scaling init Sonnet uses: variance 1/D per entry, so |e| ~ 1);
  'cluster_size' starts at one and 'embed_sum' equal to the codebook: each code
  begins as if it had been assigned itself once, so a code that no vector picks
  decays towards its own value instead of being divided by ~eps on the first
  update (which would throw it far away, never to be used again).
  """
  limit = jnp.sqrt(3.0 / dim)
  codebook = jax.random.uniform(rng, (num_codes, dim), jnp.float32, -limit, limit)  # [K, D]
  return {
      'codebook': codebook,
      'cluster_size': jnp.ones((num_codes,), jnp.float32),  # [K]
      'embed_sum': codebook,  # [K, D]
  }


def nearest_codes(codebook: jax.Array, z: jax.Array) -> jax.Array:
  """Indices of the nearest codes in squared Euclidean distance.

  codebook: [K, D]; z: [..., D]. Returns int32 [...]. The distances
  |z|^2 - 2 z.e + |e|^2 take one [N, D] x [D, K] matmul, in float32.
  """
  codebook = codebook.astype(jnp.float32)
  flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)  # [N, D]
  distances = (jnp.sum(jnp.square(flat), axis=-1, keepdims=True)  # [N, 1]
               - 2.0 * jnp.matmul(flat, codebook.T, precision=_HIGHEST)  # [N, K]
               + jnp.sum(jnp.square(codebook), axis=-1)[None, :])  # [1, K]
  indices = jnp.argmin(distances, axis=-1).astype(jnp.int32)  # [N]
  return indices.reshape(z.shape[:-1])


def quantize(codebook: jax.Array, z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Quantises z [..., D] with the codebook [K, D].

  Returns (z_q_st [..., D] of z's dtype, indices int32 [...], commitment_loss
  float32 scalar):
    z_q_st = z + sg(e[idx] - z): the code in the forward pass; its gradient
      w.r.t. z is the identity (straight-through estimator).
    commitment_loss = mean over all elements of (z - sg(e[idx]))^2, the term
      the caller weights by beta.
  Neither output has a gradient w.r.t. the codebook: it is learnt by `ema_update`.
  """
  codebook = jax.lax.stop_gradient(codebook)
  indices = nearest_codes(codebook, z)  # [...]
  z_q = jnp.take(codebook, indices, axis=0).astype(z.dtype)  # [..., D]
  # z + sg(z_q - z), written so that the forward value is z_q bit for bit.
  z_q_st = z_q + (z - jax.lax.stop_gradient(z))  # [..., D]
  commitment_loss = jnp.mean(jnp.square(z.astype(jnp.float32) - z_q.astype(jnp.float32)))
  return z_q_st, indices, commitment_loss


def ema_update(state: dict, z: jax.Array, indices: jax.Array, decay: float,
               eps: float = 1e-5) -> dict:
  """One EMA step of the codebook from a batch.

  state: {'codebook': [K, D], 'cluster_size': [K], 'embed_sum': [K, D]};
  z: this batch's encoder outputs [..., D]; indices: their codes, int [...]
  (from `quantize`). `decay` and `eps` may be Python floats or traced scalars.
  Returns a new state with the same keys, float32:
    cluster_size <- decay * cluster_size + (1 - decay) * n_k
    embed_sum    <- decay * embed_sum    + (1 - decay) * s_k
    codebook_k   <- embed_sum_k / size_k,
      size_k = (cluster_size_k + eps) / (n + K * eps) * n,  n = sum(cluster_size)
  where n_k counts the vectors assigned to code k and s_k sums them. No
  gradient flows through the update (z is treated as a constant).
  """
  num_codes = state['codebook'].shape[0]
  flat = jax.lax.stop_gradient(z).reshape(-1, z.shape[-1]).astype(jnp.float32)  # [N, D]
  one_hot = jax.nn.one_hot(indices.reshape(-1), num_codes, dtype=jnp.float32)  # [N, K]
  counts = jnp.sum(one_hot, axis=0)  # [K]
  sums = jnp.matmul(one_hot.T, flat, precision=_HIGHEST)  # [K, D]

  cluster_size = decay * state['cluster_size'] + (1.0 - decay) * counts  # [K]
  embed_sum = decay * state['embed_sum'] + (1.0 - decay) * sums  # [K, D]
  n = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (n + num_codes * eps) * n  # [K]
  codebook = embed_sum / smoothed[:, None]  # [K, D]
  return {
      'codebook': codebook.astype(jnp.float32),
      'cluster_size': cluster_size.astype(jnp.float32),
      'embed_sum': embed_sum.astype(jnp.float32),
  }


def codebook_usage(indices: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
  """Code statistics of a batch of indices (int, any shape) into K = `num_codes` codes.

  Returns float32 scalars (usage, perplexity): usage is the fraction of the K
  codes used at least once; perplexity is exp(-sum_k p_k log p_k) of the code
  histogram p (1 when one code takes everything, K when all are equally used).
  `num_codes` must be static under jit.
  """
  one_hot = jax.nn.one_hot(indices.reshape(-1), num_codes, dtype=jnp.float32)  # [N, K]
  counts = jnp.sum(one_hot, axis=0)  # [K]
  usage = jnp.mean((counts > 0).astype(jnp.float32))
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)  # [K]
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return usage, jnp.exp(entropy).astype(jnp.float32)
