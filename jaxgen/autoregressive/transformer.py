"""An ImageGPT-style causal transformer over token sequences, with a KV cache (Chen et al. 2020).

A decoder-only, pre-LayerNorm transformer (GPT-2 layout): the image is a
sequence of T tokens from a vocabulary of V (e.g. `palette.to_tokens`), and
`logits[:, t]` is the distribution of token t given tokens 0 .. t-1 (and an
optional class label). The network reads the sequence shifted right by one,

    input = [start, tokens[:, 0], ..., tokens[:, T-2]] + position embeddings,

where `start` is a learned vector (plus a learned per-class vector with
`num_classes > 0`), so position t sees exactly the tokens before t through
causally masked self-attention.

Sampling runs one position at a time with `decode`: each step computes the
keys and values of one position, writes them into a cache of all T positions
and attends over the positions written so far. `decode` gives the same logits
as `__call__` for the same prefix, and takes the position as a traced int32,
so a whole sampler is one `jax.lax.scan` over t.

Shapes and einsum letters: b batch, t query positions, s key positions,
h heads, d the width of one head (dim / num_heads), e the model width (dim),
v the vocabulary.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import JaxgenError

Dtype = Any
Cache = dict[str, dict[str, jax.Array]]

# GPT-2's initialisation: N(0, 0.02) everywhere, the residual projections
# further scaled by 1 / sqrt(2 * num_layers).
_STD = 0.02
_NEG = jnp.finfo(jnp.float32).min  # the score of a masked position: exp() is exactly 0


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with the scores and the softmax in float32.

  Args:
    q: [B, T, H, D] queries.
    k: [B, S, H, D] keys.
    v: [B, S, H, D] values.
    mask: bool, broadcastable to [B, H, T, S]; True where query t may see key s.
      Every query must see at least one key.

  Returns:
    [B, T, H, D] in v's dtype.
  """
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))
  scores = jnp.einsum('bthd,bshd->bhts', q, k, preferred_element_type=jnp.float32) * scale
  # `where` (not an additive bias) so that masked keys get exactly zero weight
  # and exactly zero gradient.
  scores = jnp.where(mask, scores, _NEG)  # [B, H, T, S]
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum('bhts,bshd->bthd', probs, v)  # [B, T, H, D]


class DecoderBlock(nn.Module):
  """One pre-LayerNorm transformer layer: x + attn(LN(x)), then x + mlp(LN(x)).

  `__call__` runs a whole causal sequence; `decode` runs one position against
  a key/value cache. Both use the same parameters.
  """
  num_heads: int
  dim: int
  mlp_ratio: int = 4
  dropout: float = 0.0
  residual_std: float = _STD
  dtype: Dtype = jnp.float32

  def setup(self):
    head_dim = self.dim // self.num_heads
    init = nn.initializers.normal(_STD)
    out_init = nn.initializers.normal(self.residual_std)
    self.ln_attn = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype,
                               kernel_init=init)
    self.proj = nn.DenseGeneral(self.dim, axis=(-2, -1), dtype=self.dtype, kernel_init=out_init)
    self.ln_mlp = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.fc_in = nn.Dense(self.mlp_ratio * self.dim, dtype=self.dtype, kernel_init=init)
    self.fc_out = nn.Dense(self.dim, dtype=self.dtype, kernel_init=out_init)
    self.drop = nn.Dropout(self.dropout)

  def _qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, T, E] -> q, k, v, each [B, T, H, D]."""
    qkv = self.qkv(self.ln_attn(x))  # [B, T, 3, H, D]
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def _finish(self, x: jax.Array, attended: jax.Array, train: bool) -> jax.Array:
    """The attention residual and the MLP. x [B, T, E], attended [B, T, H, D] -> [B, T, E]."""
    x = x + self.drop(self.proj(attended), deterministic=not train)
    h = nn.gelu(self.fc_in(self.ln_mlp(x)))  # [B, T, mlp_ratio * E]
    return x + self.drop(self.fc_out(h), deterministic=not train)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Causal self-attention over a whole sequence. x: [B, T, E] -> [B, T, E]."""
    q, k, v = self._qkv(x)
    t = x.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))  # [T, S], query t sees keys s <= t
    return self._finish(x, _attention(q, k, v, causal), train)

  def decode(self, x: jax.Array, t: jax.Array, key_cache: jax.Array,
             value_cache: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One position: x [B, 1, E] at position t (traced int32 scalar).

    Writes this position's key and value into the caches [B, T, H, D] at t and
    attends over the cached positions <= t. Returns (x [B, 1, E], key_cache,
    value_cache), the caches updated.
    """
    q, k, v = self._qkv(x)  # each [B, 1, H, D]
    zero = jnp.zeros((), jnp.int32)
    start = (zero, t.astype(jnp.int32), zero, zero)
    key_cache = jax.lax.dynamic_update_slice(key_cache, k.astype(key_cache.dtype), start)
    value_cache = jax.lax.dynamic_update_slice(value_cache, v.astype(value_cache.dtype), start)
    seen = jnp.arange(key_cache.shape[1]) <= t  # [S]
    attended = _attention(q, key_cache.astype(q.dtype), value_cache.astype(q.dtype), seen)
    return self._finish(x, attended, False), key_cache, value_cache


class CausalTransformer(nn.Module):
  """ImageGPT: a decoder-only transformer giving p(token_t | tokens_<t, label).

  Attributes:
    vocab_size: V, the number of token values.
    seq_len: T, the length of every sequence (H * W for images).
    num_layers: transformer layers.
    num_heads: attention heads; must divide dim.
    dim: E, the model width.
    mlp_ratio: the MLP's hidden width is mlp_ratio * dim.
    dropout: rate of the residual and embedding dropout, used with train=True
      (rng collection 'dropout').
    num_classes: with num_classes > 0 every call takes a label [B] and adds a
      learned class vector to the start vector; 0 for an unconditional model.
    dtype: computation dtype; parameters are float32 and logits come out float32.

  Initialise with `model.init(rng, tokens)` (tokens [B, T], plus the label
  with num_classes > 0); `decode` uses the same parameters.
  """
  vocab_size: int
  seq_len: int
  num_layers: int = 4
  num_heads: int = 4
  dim: int = 128
  mlp_ratio: int = 4
  dropout: float = 0.0
  num_classes: int = 0
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.dim % self.num_heads:
      raise JaxgenError(f'num_heads ({self.num_heads}) must divide dim ({self.dim}).')
    init = nn.initializers.normal(_STD)
    self.token_embed = self.param('token_embed', init, (self.vocab_size, self.dim))  # [V, E]
    self.pos_embed = self.param('pos_embed', init, (self.seq_len, self.dim))  # [T, E]
    self.start = self.param('start', init, (self.dim,))  # [E]
    if self.num_classes > 0:
      self.class_embed = self.param('class_embed', init, (self.num_classes, self.dim))  # [K, E]
    self.blocks = [
        DecoderBlock(self.num_heads, self.dim, self.mlp_ratio, self.dropout,
                     residual_std=_STD / (2 * self.num_layers) ** 0.5, dtype=self.dtype,
                     name=f'block_{i}')
        for i in range(self.num_layers)]
    self.ln_out = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.head = nn.Dense(self.vocab_size, dtype=self.dtype,
                         kernel_init=nn.initializers.normal(_STD))
    self.drop = nn.Dropout(self.dropout)

  def _start(self, batch: int, label: jax.Array | None) -> jax.Array:
    """The input at position 0: [B, E], the start vector plus the class vector."""
    start = jnp.broadcast_to(self.start, (batch, self.dim))
    if self.num_classes > 0:
      if label is None:
        raise JaxgenError(f'pass a label [B] (int32 in [0, {self.num_classes})): '
                          f'the model was built with num_classes={self.num_classes}.')
      start = start + jnp.take(self.class_embed, jnp.asarray(label, jnp.int32), axis=0)
    elif label is not None:
      raise JaxgenError('drop the label or build the model with num_classes > 0.')
    return start.astype(self.dtype)

  def _logits(self, x: jax.Array) -> jax.Array:
    """Final LayerNorm and the output layer: [..., E] -> float32 [..., V]."""
    return self.head(self.ln_out(x)).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, label: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """Logits of every token given the tokens before it.

    Args:
      tokens: int32 [B, T], or a float one-hot (or any soft weighting)
        [B, T, V], whose embedding is the weighted sum of token embeddings;
        T must be seq_len.
      label: int32 [B] with num_classes > 0, else None.
      train: use dropout (needs the 'dropout' rng).

    Returns:
      float32 [B, T, V]: logits[:, t] depends on tokens[:, :t] (and the label) only.
    """
    if tokens.ndim not in (2, 3) or tokens.shape[1] != self.seq_len:
      raise JaxgenError(f'tokens must be [B, {self.seq_len}] int32 or [B, {self.seq_len}, '
                        f'{self.vocab_size}] one-hot, got shape {tuple(tokens.shape)}.')
    if tokens.ndim == 3:
      if tokens.shape[-1] != self.vocab_size:
        raise JaxgenError(f'one-hot tokens must have {self.vocab_size} entries on the last '
                          f'axis, got shape {tuple(tokens.shape)}.')
      emb = jnp.einsum('btv,ve->bte', tokens.astype(self.dtype),
                       self.token_embed.astype(self.dtype))  # [B, T, E]
    else:
      emb = jnp.take(self.token_embed, tokens.astype(jnp.int32), axis=0)  # [B, T, E]
    start = self._start(tokens.shape[0], label)  # [B, E]
    # Shift right by one: position t reads token t-1, position 0 the start vector.
    x = jnp.concatenate([start[:, None, :], emb[:, :-1].astype(self.dtype)], axis=1)  # [B, T, E]
    x = x + self.pos_embed.astype(self.dtype)[None]
    x = self.drop(x, deterministic=not train)
    for block in self.blocks:
      x = block(x, train=train)
    return self._logits(x)  # [B, T, V]

  @nn.nowrap
  def init_cache(self, batch: int) -> Cache:
    """An empty key/value cache for `decode`; needs no parameters.

    A plain function of the module's fields: call it on the module itself,
    `model.init_cache(batch)` (bound or not), or as
    `model.apply(params, batch, method=CausalTransformer.init_cache)`.

    Returns:
      {'block_<i>': {'key': [B, T, H, D], 'value': [B, T, H, D]}} for every
      layer i, zeros in `dtype`.
    """
    shape = (batch, self.seq_len, self.num_heads, self.dim // self.num_heads)
    return {f'block_{i}': {'key': jnp.zeros(shape, self.dtype),
                           'value': jnp.zeros(shape, self.dtype)}
            for i in range(self.num_layers)}

  def decode(self, prev_token: jax.Array, t: jax.Array, cache: Cache,
             label: jax.Array | None = None) -> tuple[jax.Array, Cache]:
    """One step of incremental decoding, at position t.

    Args:
      prev_token: int32 [B], the token at position t-1 (ignored at t == 0,
        where the input is the start vector, so any value will do there;
        values outside [0, V) are clipped).
      t: int32 scalar, may be traced (e.g. the index of a `jax.lax.scan`).
      cache: from `init_cache` or the previous step, with positions < t filled.
      label: int32 [B] with num_classes > 0, else None.

    Returns:
      (logits float32 [B, V], the same as `__call__(tokens, label)[:, t]` for
      tokens that start with this prefix; the cache with position t written).
    """
    t = jnp.asarray(t, jnp.int32)
    batch = prev_token.shape[0]
    emb = jnp.take(self.token_embed, prev_token.astype(jnp.int32), axis=0,
                   mode='clip').astype(self.dtype)  # [B, E]
    x = jnp.where(t == 0, self._start(batch, label), emb)  # [B, E]
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embed, t, 1, axis=0)  # [1, E]
    x = (x + pos.astype(self.dtype))[:, None, :]  # [B, 1, E]
    new_cache = {}
    for i, block in enumerate(self.blocks):
      layer = cache[f'block_{i}']
      x, key, value = block.decode(x, t, layer['key'], layer['value'])
      new_cache[f'block_{i}'] = {'key': key, 'value': value}
    return self._logits(x[:, 0]), new_cache  # [B, V]
