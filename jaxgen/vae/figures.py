"""PNG figures of a trained VAE run: reconstructions, interpolations, the latent manifold.

    jaxgen sample --workdir runs/vae_mnist --show reconstructions --num 32 --out recon.png
    jaxgen sample --workdir runs/vae_mnist --show interpolations --num 4 --out interp.png
    jaxgen sample --workdir runs/vae_2d --show manifold --num 400 --out manifold.png

Each returns uint8 images [N, H, W, C] and the number of grid columns.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import data as data_lib
from jaxgen import images as images_lib
from jaxgen.errors import JaxgenError

FIGURES = ('reconstructions', 'interpolations', 'manifold')
INTERPOLATION_STEPS = 10


def test_images(run: Any, num: int) -> np.ndarray:
  """The first `num` images of the run's test split, float [num, H, W, C] in [-1, 1]."""
  config = ml_collections.ConfigDict(dict(name=run.config.data.name, random_flip=False))
  out, count = [], 0
  for batch in data_lib.eval_batches(config, batch_size=min(num, 500), process_count=1,
                                     process_index=0):
    out.append(batch['image'][batch['mask']])
    count += int(batch['mask'].sum())
    if count >= num:
      break
  return np.concatenate(out)[:num]


def figure(run: Any, kind: str, num: int) -> tuple[np.ndarray, int]:
  """(uint8 images [N, H, W, C], columns) of figure `kind` for a VAE run.

  reconstructions: `num` test images, each row of originals followed by a row of
  their reconstructions. interpolations: `num` pairs of test images, each a row
  of 10 linear then a row of 10 spherical steps. manifold: the decoded 2-d
  latent on a sqrt(num) x sqrt(num) grid of prior quantiles.
  """
  model, params = run.model, run.params
  if kind not in FIGURES:
    raise JaxgenError(f'--show {kind!r} is not a figure; choose samples or {", ".join(FIGURES)}.')
  if kind == 'manifold':
    n = max(2, math.isqrt(num))
    images = jax.jit(model.manifold, static_argnums=1)(params, n)
    return images_lib.to_uint8(jax.device_get(images)), n
  if kind == 'reconstructions':
    x = test_images(run, num)
    recon = jax.jit(model.reconstruct)(params, jnp.asarray(x))
    cols = min(num, 8)
    rows = []
    for start in range(0, num, cols):  # a row of originals, then their reconstructions
      rows += [x[start:start + cols], np.asarray(recon)[start:start + cols]]
    return images_lib.to_uint8(np.concatenate(rows)), cols
  x = test_images(run, 2 * num)
  interp = jax.jit(model.interpolate, static_argnums=(3, 4))
  rows = []
  for i in range(num):
    for method in ('linear', 'spherical'):
      rows.append(np.asarray(interp(params, x[2 * i], x[2 * i + 1], INTERPOLATION_STEPS, method)))
  return images_lib.to_uint8(np.concatenate(rows)), INTERPOLATION_STEPS
