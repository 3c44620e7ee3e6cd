"""Prompts for text-conditioned diffusion on a labelled dataset: MNIST's digits in words.

A text model learns from the labels through templates: each training example
gets the prompt of one template (picked at random, from a key) filled with its
digit, e.g. "a handwritten seven", "the digit 7", "seven" or "a 7". All
prompts of all classes are tokenized once into a table [classes, templates, L],
so picking prompts inside the compiled train step is one gather.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import JaxgenError
from jaxgen.nn.text import encode_text

DIGIT_NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
# {name}: the digit in words; {digit}: the numeral.
TEMPLATES = ('a handwritten {name}', 'the digit {digit}', '{name}', 'a {digit}',
             'the number {name}', 'a handwritten digit {digit}', 'digit {name}', '{digit}')
# The prompt `sample` cycles through the classes with when no --prompt is given.
DEFAULT_TEMPLATE = TEMPLATES[0]


def prompt(label: int, template: str = DEFAULT_TEMPLATE) -> str:
  """The prompt of class `label` (0..9) by `template`, e.g. prompt(7) == 'a handwritten seven'."""
  return template.format(name=DIGIT_NAMES[label], digit=label)


def check_num_classes(num_classes: int) -> None:
  """JaxgenError unless the templates can name `num_classes` classes (MNIST's ten digits)."""
  if num_classes != len(DIGIT_NAMES):
    raise JaxgenError(f'text conditioning makes its prompts from the labels of the ten MNIST digits; '
                      f'set model.num_classes={len(DIGIT_NAMES)} (got {num_classes}).')


def prompt_table(num_classes: int, max_len: int) -> np.ndarray:
  """Tokens int32 [num_classes, len(TEMPLATES), max_len]: every template for every class."""
  check_num_classes(num_classes)
  prompts = [prompt(k, template) for k in range(num_classes) for template in TEMPLATES]
  tokens, _ = encode_text(prompts, max_len)
  return tokens.reshape(num_classes, len(TEMPLATES), max_len)


def random_prompts(labels: jax.Array, rng: jax.Array, max_len: int,
                   num_classes: int = len(DIGIT_NAMES)) -> jax.Array:
  """Tokens int32 [B, max_len] of one template per example, picked with `rng`, for labels int [B].

  Jit-able; the same key gives the same prompts.
  """
  table = jnp.asarray(prompt_table(num_classes, max_len))  # [K, T, L]
  which = jax.random.randint(rng, labels.shape, 0, len(TEMPLATES))  # [B]
  return table[labels, which]


def default_prompts(labels: jax.Array, max_len: int, num_classes: int = len(DIGIT_NAMES)) -> jax.Array:
  """Tokens int32 [B, max_len] of DEFAULT_TEMPLATE ('a handwritten {name}') for labels int [B]."""
  table = jnp.asarray(prompt_table(num_classes, max_len))  # [K, T, L]
  return table[labels, TEMPLATES.index(DEFAULT_TEMPLATE)]


def label_of_prompt(text: str) -> int | None:
  """The digit a prompt asks for: the one digit named in it (in words or as a numeral), else None.

  What `jaxgen eval --metrics accuracy` compares a prompted model's samples with.
  """
  words = re.findall(r'[a-z]+|\d', text.lower())
  found = {DIGIT_NAMES.index(w) if w in DIGIT_NAMES else int(w) for w in words
           if w in DIGIT_NAMES or w.isdigit()}
  return found.pop() if len(found) == 1 else None
