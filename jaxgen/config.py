"""Experiment configs: load `experiments/NAME.py[:ARG]`, apply `--config.KEY=VALUE`.

A config file defines `get_config(arg: str | None = None) -> ml_collections.ConfigDict`.
Every experiment accepts `arg='smoke'`, which shrinks it to a run of well
under a minute on one CPU core. Configs are locked after loading: an unknown
or misspelt key, in an override or in the file itself, is a `JaxgenError`
that names it.
"""

import ast
import dataclasses
import importlib.util
import json
import os
from typing import Any, Sequence, TypeVar

import ml_collections
import numpy as np

from jaxgen.errors import JaxgenError

T = TypeVar('T')


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` and applies overrides of the form `KEY=VALUE` (dotted keys).

  Returns a locked ConfigDict. Raises JaxgenError for a missing file, a file
  without `get_config`, an unknown key or a value of the wrong type.
  """
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise JaxgenError(f'config file {path!r} does not exist; pass --config experiments/NAME.py[:ARG].')
  module_spec = importlib.util.spec_from_file_location(
      f'jaxgen_config_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise JaxgenError(f'config file {path!r} has no get_config(arg) function.')
  try:
    config = module.get_config(arg or None)
  except ValueError as e:  # configs reject unknown arguments with ValueError
    raise JaxgenError(f'{path}: {e}') from None
  config.lock()
  apply_overrides(config, overrides)
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Sets `a.b.c=value` items in place; the value is parsed by the existing value's type."""
  for item in overrides:
    key, sep, raw = item.partition('=')
    if not sep:
      raise JaxgenError(f'config override {item!r} must look like KEY=VALUE.')
    parent, leaf = _lookup_parent(config, key)
    old = parent[leaf]
    parent[leaf] = _parse_like(old, raw, key)


def _lookup_parent(config: ml_collections.ConfigDict, key: str) -> tuple[Any, str]:
  parts = key.split('.')
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      where = '.'.join(parts[:i]) or 'the top level'
      known = ', '.join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else 'none'
      raise JaxgenError(f'unknown config key {key!r}: {where} has keys {known}.')
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def _parse_like(old: Any, raw: str, key: str) -> Any:
  try:
    if isinstance(old, bool):
      if raw.lower() in ('true', '1', 'yes'):
        return True
      if raw.lower() in ('false', '0', 'no'):
        return False
      raise ValueError(raw)
    if isinstance(old, int):
      return int(raw)
    if isinstance(old, float):
      return float(raw)
    if isinstance(old, str):
      return raw
    if isinstance(old, (tuple, list)):
      value = ast.literal_eval(raw)
      value = value if isinstance(value, (tuple, list)) else (value,)
      return type(old)(value)
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    raise JaxgenError(f'config key {key!r} expects a {type(old).__name__}, got {raw!r}.') from None


def section(config: ml_collections.ConfigDict, name: str, cls: type[T]) -> T:
  """Unpacks `config.<name>` into the frozen dataclass `cls`, naming any unknown key."""
  values = config[name].to_dict() if name in config else {}
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise JaxgenError(f'unknown config key {name}.{unknown[0]!s}: {name} has keys {", ".join(sorted(fields))}.')
  return cls(**values)


def to_json(config: ml_collections.ConfigDict) -> str:
  """A stable JSON rendering, saved with each run."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of `to_json`; lists come back as tuples so dataclass fields compare equal."""

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x

  config = ml_collections.ConfigDict(tuples(json.loads(text)))
  config.lock()
  return config


def sample_options(section: Any, overrides: dict[str, Any], family: str) -> dict[str, Any]:
  """A family's sampling options: its `config.sample` dataclass as a dict with the non-None
  `overrides` (command-line flags) applied; an option the family lacks is one sentence."""
  opts = dataclasses.asdict(section)
  for key, value in overrides.items():
    if value is None:
      continue
    if key not in opts:
      raise JaxgenError(f'the {family} family has no sampling option {key!r}; '
                        f'its options are {", ".join(opts)}.')
    opts[key] = value
  return opts


def requested_labels(label: int, num: int, num_classes: int) -> np.ndarray:
  """The classes that `num` samples of a conditional model are drawn for, int32 [num].

  `label` >= 0 asks for that class for every sample; -1 cycles through the
  classes (sample i gets i % num_classes), the convention of every family's
  `sample` and what `jaxgen eval --metrics accuracy` compares with.
  """
  if label >= 0:
    return np.full((num,), label, np.int32)
  return (np.arange(num) % num_classes).astype(np.int32)
