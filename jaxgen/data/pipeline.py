"""Grain input pipelines over the prepared datasets: train batches resumable by step; eval batches.

The training stream is one sequence per seed: the seeded, per-epoch
reshuffled, endlessly repeated dataset. Its position is the number of examples
consumed, E. Starting at E, global batch k holds stream elements
[E + k*B, E + (k+1)*B), and process p of P gets the contiguous slice
[p*b, (p+1)*b) of it (b = B // P). The random flip of an element depends only
on (seed, its position in the stream). So a checkpoint stores E, a resumed run
continues the stream exactly (even with another batch size or process count),
and the global batch does not depend on how many processes share it.
"""

import math
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import builders
from jaxgen.data.specs import FIXED_SPECS, DatasetSpec, dataset_spec  # noqa: F401 (re-exported)
from jaxgen.errors import JaxgenError


def _options(data_config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """(name, keyword arguments of `builders.prepare`) from a data config."""
  name = getattr(data_config, 'name', None)
  if name not in builders.BUILDERS:
    raise JaxgenError(f'unknown dataset data.name={name!r}; known datasets are '
                      f'{", ".join(builders.BUILDERS)}.')
  if name != 'image_folder':
    return name, {}
  channels = getattr(data_config, 'channels', None)
  return name, dict(folder=getattr(data_config, 'folder', None),
                    image_size=getattr(data_config, 'image_size', None),
                    channels=3 if channels is None else channels)


def folder_spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
  """`dataset_spec` for datasets whose shape is known only from their files ('image_folder').

  Lists the folder (JaxgenError if it is missing or has no images); num_classes
  is the number of class subfolders, None when flat. Unknown names: JaxgenError.
  """
  name, options = _options(data_config)
  if name in FIXED_SPECS:
    return FIXED_SPECS[name]
  config = builders.image_folder_config(**options)
  items, class_names = builders.list_image_folder(config.folder)
  return DatasetSpec((config.image_size, config.image_size, config.channels),
                     len(class_names) or None, len(items))


def prepare_for(data_config: ml_collections.ConfigDict, *, data_dir: str | None = None,
                manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """`builders.prepare` for a data config: idempotent; JaxgenError before any write if impossible."""
  name, options = _options(data_config)
  return builders.prepare(name, data_dir=data_dir, manual_dir=manual_dir, **options)


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise JaxgenError(f'process_index {index} is not in [0, process_count={count}).')
  return index, count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise JaxgenError(f'batch size {global_batch_size} must be a positive multiple of the '
                      f'process count {process_count}; change train.batch_size.')
  return global_batch_size // process_count


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: a bijection on uint64 that scrambles every bit."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def flip_mask(seed: int, positions: np.ndarray) -> np.ndarray:
  """Whether to mirror the elements at stream `positions` [N] (int): bool [N], ~half True.

  A pure function of (seed, position), cheap and vectorized, so that flips are
  the same whichever process or thread computes them.
  """
  with np.errstate(over='ignore'):  # uint64 arithmetic wraps around on purpose
    key = _mix64(np.uint64(seed % 2**64) + np.uint64(0x9E3779B97F4A7C15))
    bits = _mix64(key ^ np.asarray(positions, np.uint64))
  return (bits >> np.uint64(63)).astype(bool)


def _scale(image: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W, C] -> float32 in [-1, 1], 0 -> -1 and 255 -> 1 exactly."""
  return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _read_options(num_threads: int, prefetch: int) -> grain.ReadOptions:
  # Each element here is a whole batch: a small buffer suffices, and grain's default
  # (500 elements) would hold hundreds of batches in memory.
  return grain.ReadOptions(num_threads=max(1, num_threads),
                           prefetch_buffer_size=max(1, num_threads, prefetch))


def _read(source: Any, indices: np.ndarray) -> dict[str, np.ndarray]:
  """Reads records `indices` [N]: {'image': uint8 [N, H, W, C], 'label': int64 [N]}."""
  indices = [int(i) for i in indices]
  # A batched read lets array_record fetch the records in parallel: ~4x faster than one by one.
  getitems = getattr(source, '__getitems__', None)
  elements = getitems(indices) if getitems else [source[i] for i in indices]
  return {'image': np.stack([e['image'] for e in elements]),
          'label': np.asarray([e['label'] for e in elements], np.int64)}


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                  start_example: int = 0, process_index: int | None = None,
                  process_count: int | None = None, data_dir: str | None = None,
                  manual_dir: str | None = None, num_threads: int = 4,
                  prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Endless per-process training batches, from stream position `start_example`.

  Prepares the dataset first if needed (JaxgenError if it cannot be had).
  Yields {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]} with
  b = global_batch_size // process_count: this process's contiguous slice of
  each global batch, a pure function of (seed, start_example, batch index).
  With data_config.random_flip, each element is mirrored along W with
  probability 1/2, decided by (seed, its position in the stream). `num_threads`
  batches are read ahead in background threads.
  """
  p, num_processes = _process(process_index, process_count)
  b = _local_batch_size(global_batch_size, num_processes)
  if start_example < 0:
    raise JaxgenError(f'start_example must be >= 0, got {start_example}.')
  source = prepare_for(data_config, data_dir=data_dir, manual_dir=manual_dir).as_data_source('train')
  random_flip = bool(getattr(data_config, 'random_flip', False))

  def load(j: int, indices: np.ndarray) -> dict[str, np.ndarray]:
    # `j` counts local batches over all processes: batch j holds stream positions
    # start_example + [j*b, (j+1)*b).
    batch = _read(source, indices)
    image = batch['image']  # [b, H, W, C] uint8
    if random_flip:
      flip = flip_mask(seed, start_example + np.arange(j * b, (j + 1) * b))
      image = np.where(flip[:, None, None, None], image[:, :, ::-1], image)
    return {'image': _scale(image), 'label': batch['label'].astype(np.int32)}

  # Shuffling record indices rather than records: the same stream, read a batch at a time.
  ds = (grain.MapDataset.range(len(source))
        .shuffle(seed=seed % 2**32)  # grain takes only 32-bit seeds
        .repeat(None)  # reshuffled each epoch; batches run across epoch boundaries
        [start_example:]
        .batch(b, drop_remainder=True)  # int64 [b] record indices
        .map_with_index(load))
  # Global batch k is local batches k*P .. k*P+P-1; ours is k*P+p.
  ds = ds[p::num_processes]
  return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))


def eval_batches(data_config: ml_collections.ConfigDict, *, batch_size: int, split: str = 'test',
                 process_index: int | None = None, process_count: int | None = None,
                 data_dir: str | None = None, manual_dir: str | None = None,
                 num_threads: int = 4, prefetch: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """One unshuffled pass over `split`, in per-process slices of global batches of `batch_size`.

  Yields {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b],
  'mask': bool [b]} with b = batch_size // process_count. The last global batch
  is padded with zero images (label 0) whose mask is False, so that every
  process yields the same number of equally shaped batches.
  """
  p, num_processes = _process(process_index, process_count)
  b = _local_batch_size(batch_size, num_processes)
  builder = prepare_for(data_config, data_dir=data_dir, manual_dir=manual_dir)
  if split not in builder.info.splits:
    raise JaxgenError(f'dataset {builder.name} has no split {split!r}; its splits are '
                      f'{", ".join(sorted(builder.info.splits))}.')
  source = builder.as_data_source(split)
  n = len(source)
  image_shape = builder.info.features['image'].shape

  def load(indices: np.ndarray) -> dict[str, np.ndarray]:
    mask = indices < n
    image = np.zeros((len(indices), *image_shape), np.uint8)
    label = np.zeros(len(indices), np.int32)
    if mask.any():
      batch = _read(source, indices[mask])
      image[mask], label[mask] = batch['image'], batch['label']
    return {'image': _scale(image), 'label': label, 'mask': mask}

  num_global = math.ceil(n / batch_size)
  ds = grain.MapDataset.range(num_global * batch_size).batch(b).map(load)
  ds = ds[p::num_processes]
  return iter(ds.to_iter_dataset(_read_options(num_threads, prefetch)))
