"""Where evaluation keeps what it downloads or computes once.

`$JAXGEN_CACHE_DIR` (default `~/.cache/jaxgen`) holds the FID Inception
weights, the trained domain feature networks (`features/<dataset>/`) and the
cached reference statistics of dataset splits (`reference/`).
"""

import os

CACHE_DIR_ENV = 'JAXGEN_CACHE_DIR'
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'jaxgen')


def cache_dir(*parts: str) -> str:
  """The absolute path `$JAXGEN_CACHE_DIR/<parts...>` (nothing is created)."""
  root = os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
  return os.path.join(os.path.abspath(os.path.expanduser(root)), *parts)
