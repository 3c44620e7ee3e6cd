"""Image conversions and PNG grids."""

import math
import os
import tempfile
from typing import Sequence

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [-1, 1] -> uint8 in [0, 255] (rounded, clipped). Any shape."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """[N, H, W, C] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] uint8 mosaic."""
  n, h, w, c = images.shape
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
  return grid


def atomic_write(path: str, write_fn) -> None:
  """Calls `write_fn(tmp_path)` then renames onto `path`: a failure leaves `path` as it was."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    write_fn(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_grid(path: str, images: np.ndarray, ncols: int | None = None) -> None:
  """Writes uint8 [N, H, W, C] images as a PNG grid (atomically)."""
  grid = make_grid(images, ncols)
  mode_img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  atomic_write(path, lambda tmp: mode_img.save(tmp, format='PNG'))


def save_npz(path: str, images: np.ndarray, labels: Sequence[int] | None = None) -> None:
  """Writes uint8 [N, H, W, C] images to `path` under the key 'images' (atomically), and
  int32 [N] `labels` (the class each image was drawn for) under 'labels' if given."""
  arrays = {'images': images}
  if labels is not None:
    arrays['labels'] = np.asarray(labels, np.int32)

  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
  atomic_write(path, write)
