"""A byte-level tokenizer and a small transformer text encoder, trained with the model it conditions.

Shapes: B batch, L tokens, D width.

Tokens are the UTF-8 bytes of a prompt plus one (1..256); 0 is padding, so an
all-zero row is the empty prompt, the "no prompt" input that classifier-free
guidance uses. Nothing is downloaded: the encoder's parameters live in the
parameter tree of the model that owns it (the UNet of a text-conditioned
diffusion model) and are learned with it.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import JaxgenError
from jaxgen.nn.attention import Attention
from jaxgen.nn.blocks import default_init

VOCAB_SIZE = 257  # padding + 256 byte values
PAD = 0


def encode_text(prompts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Tokenizes `prompts` to (tokens int32 [B, max_len], mask bool [B, max_len]).

  Each prompt becomes its UTF-8 bytes plus one, padded with 0 on the right;
  mask is True at the real tokens. '' is all padding (the empty prompt).
  Raises JaxgenError for a prompt longer than `max_len` bytes.
  """
  if isinstance(prompts, str):
    raise JaxgenError('encode_text takes a list of prompts; wrap the single prompt in a list.')
  tokens = np.zeros((len(prompts), max_len), np.int32)
  for i, prompt in enumerate(prompts):
    data = np.frombuffer(prompt.encode('utf-8'), np.uint8)
    if len(data) > max_len:
      raise JaxgenError(f'the prompt {prompt!r} is {len(data)} bytes long, more than the model\'s '
                        f'max_len={max_len} (model.text_max_len); shorten it.')
    tokens[i, :len(data)] = data.astype(np.int32) + 1
  return tokens, tokens != PAD


def decode_text(tokens: Any) -> list[str]:
  """The inverse of `encode_text`: tokens int [B, L] -> B prompts (padding dropped)."""
  tokens = np.asarray(tokens)
  return [bytes((row[row != PAD] - 1).astype(np.uint8).tolist()).decode('utf-8', errors='replace')
          for row in tokens]


class TextEncoder(nn.Module):
  """Token and learned position embeddings, pre-LN non-causal transformer layers, a final LayerNorm.

  Call: tokens int32 [B, L] (L <= max_len; 0 is padding). Returns (context
  [B, 1 + L, D], mask bool [B, 1 + L]): a learned start token comes first and
  is never masked, so that every prompt, the empty one included, has a key to
  attend to; padded positions are masked out of every attention (as keys), so
  the outputs at the real positions do not depend on how much padding follows.
  """
  width: int
  num_layers: int = 2
  num_heads: int = 4
  max_len: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    b, length = tokens.shape
    if length > self.max_len:
      raise ValueError(f'{length} tokens, more than max_len={self.max_len}.')
    embed = nn.Embed(VOCAB_SIZE, self.width, name='token_emb',
                     embedding_init=nn.initializers.normal(0.02))
    start = self.param('start', nn.initializers.normal(0.02), (1, 1, self.width))
    pos = self.param('pos_emb', nn.initializers.normal(0.02), (1 + self.max_len, self.width))
    x = jnp.concatenate([jnp.broadcast_to(start, (b, 1, self.width)), embed(tokens)], axis=1)
    x = (x + pos[:1 + length]).astype(self.dtype)  # [B, 1 + L, D]
    mask = jnp.concatenate([jnp.ones((b, 1), bool), tokens != PAD], axis=1)  # [B, 1 + L]
    for i in range(self.num_layers):
      h = nn.LayerNorm(dtype=self.dtype, name=f'ln_attn_{i}')(x)
      x = x + Attention(self.num_heads, self.dtype, name=f'attn_{i}')(h, mask=mask)
      h = nn.LayerNorm(dtype=self.dtype, name=f'ln_mlp_{i}')(x)
      h = nn.Dense(4 * self.width, dtype=self.dtype, kernel_init=default_init, name=f'mlp_in_{i}')(h)
      x = x + nn.Dense(self.width, dtype=self.dtype, kernel_init=default_init,
                       name=f'mlp_out_{i}')(nn.gelu(h))
    return nn.LayerNorm(dtype=self.dtype, name='ln_final')(x), mask
