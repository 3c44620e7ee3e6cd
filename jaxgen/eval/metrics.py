"""Evaluation metrics on features: FID, KID, Inception Score, precision/recall, bits/dim.

Every metric here takes FEATURES (or class probabilities), never images. The
feature extractor lives elsewhere and turns image batches into feature batches,
so no caller ever holds all images:

* FID needs only the first two moments, which `FeatureStats` accumulates one
  feature batch at a time (and saves as .npz, for cached reference statistics).
* KID and precision/recall need the feature vectors themselves; [N, D] features
  are small next to images (50k x 2048 float32 is 400 MB).
* Inception Score needs the [N, K] class probabilities (or logits).

Numerics: moments, FID, KID and IS run in float64 numpy because each is a small
difference of large numbers. Precision/recall is O(N^2 D) and only compares
distances, so it runs blockwise in float32 jax with bounded memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxgen.errors import JaxgenError
from jaxgen.images import atomic_write

_STATS_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# Input checks shared by the metrics.


def _as_features(x: ArrayLike, name: str, *, min_rows: int = 1, keep_float32: bool = False) -> np.ndarray:
  """Any array-like -> float64 [N, D] (float32 stays float32 if `keep_float32`), or JaxgenError naming `name`."""
  x = np.asarray(x)
  if x.ndim != 2:
    raise JaxgenError(f'{name} must be a 2-D [num_samples, feature_dim] array, got shape {x.shape}.')
  if x.shape[1] < 1:
    raise JaxgenError(f'{name} must have at least one feature column, got shape {x.shape}.')
  if x.shape[0] < min_rows:
    raise JaxgenError(f'{name} needs at least {min_rows} samples (rows), got {x.shape[0]}.')
  if not (keep_float32 and x.dtype == np.float32):
    x = x.astype(np.float64, copy=False)
  if not np.all(np.isfinite(x)):
    raise JaxgenError(f'{name} contains NaN or inf; fix the features before computing metrics.')
  return x


def _check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
  if a.shape[1] != b.shape[1]:
    raise JaxgenError(f'{name_a} and {name_b} must have the same feature dimension, '
                      f'got {a.shape[1]} and {b.shape[1]}.')


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise JaxgenError(f'{name} must be an integer >= {minimum}, got {value!r}.')
  return int(value)


# ---------------------------------------------------------------------------
# Streaming first and second moments.


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureStats:
  """Streaming mean and covariance of feature vectors, in float64.

  Immutable: `update` and `merge` return a new `FeatureStats` and leave this one
  (and its read-only arrays) untouched, so a cached reference can be shared
  safely.

  Rather than raw sums (sum x, sum x x^T), which lose all precision to
  cancellation when the mean is large relative to the spread, it keeps the
  running mean and the centred scatter matrix and combines batches with the
  pairwise update of Chan, Golub & LeVeque (1979). Each batch is first centred
  on its own mean, so no large numbers are ever squared.

  Attributes:
    count: number of feature vectors seen.
    mean: [D] running mean (zeros while count == 0).
    m2: [D, D] sum over samples of (x - mean)(x - mean)^T.
  """

  count: int
  mean: np.ndarray
  m2: np.ndarray

  def __post_init__(self):
    count = self.count
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
      raise JaxgenError(f'FeatureStats.count must be a non-negative integer, got {count!r}.')
    mean = np.array(self.mean, dtype=np.float64)
    m2 = np.array(self.m2, dtype=np.float64)
    if mean.ndim != 1 or m2.shape != (mean.shape[0], mean.shape[0]):
      raise JaxgenError(f'FeatureStats needs mean [D] and m2 [D, D], got shapes {mean.shape} and {m2.shape}.')
    # Read-only so that the immutability promise also covers the arrays.
    mean.setflags(write=False)
    m2.setflags(write=False)
    object.__setattr__(self, 'count', int(count))
    object.__setattr__(self, 'mean', mean)
    object.__setattr__(self, 'm2', m2)

  @classmethod
  def empty(cls, dim: int) -> FeatureStats:
    """No samples yet, for features of dimension `dim`."""
    dim = _check_positive_int(dim, 'FeatureStats dim')
    return cls(0, np.zeros(dim), np.zeros((dim, dim)))

  @classmethod
  def from_features(cls, features: ArrayLike) -> FeatureStats:
    """Statistics of one [B, D] batch (B >= 1)."""
    x = _as_features(features, 'features')
    mean = x.mean(axis=0)
    centred = x - mean
    return cls(x.shape[0], mean, centred.T @ centred)

  @property
  def dim(self) -> int:
    """Feature dimension D."""
    return self.mean.shape[0]

  @property
  def cov(self) -> np.ndarray:
    """[D, D] unbiased (ddof=1) covariance, as `np.cov(x, rowvar=False)`."""
    if self.count < 2:
      raise JaxgenError(f'A covariance needs at least 2 feature vectors, got {self.count}; feed more samples.')
    return self.m2 / (self.count - 1)

  def update(self, features: ArrayLike) -> FeatureStats:
    """Returns the statistics with one more [B, D] batch of features folded in.

    Args:
      features: [B, D] array-like (numpy or jax, any float dtype); B may be 0.

    Returns:
      A new `FeatureStats`; `self` is unchanged.
    """
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise JaxgenError(f'features must have shape [batch, {self.dim}] to match these statistics, '
                        f'got {x.shape}.')
    if x.shape[0] == 0:
      return self
    return self.merge(FeatureStats.from_features(x))

  def merge(self, other: FeatureStats) -> FeatureStats:
    """Statistics of the union of both sample sets (e.g. from two hosts)."""
    if not isinstance(other, FeatureStats):
      raise JaxgenError(f'FeatureStats.merge takes another FeatureStats, got {type(other).__name__}.')
    if other.dim != self.dim:
      raise JaxgenError(f'Cannot merge statistics of dimension {self.dim} and {other.dim}; '
                        'use the same feature extractor for both.')
    if other.count == 0:
      return self
    if self.count == 0:
      return other
    n = self.count + other.count
    delta = other.mean - self.mean
    # Chan et al.: the between-set term only involves the (small) difference of means.
    mean = self.mean + delta * (other.count / n)
    m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.count * other.count / n)
    return FeatureStats(n, mean, m2)

  def save(self, path: str | os.PathLike) -> None:
    """Writes count, mean and m2 to an .npz at exactly `path` (atomically)."""

    def write(tmp):
      # A file object, so numpy does not append '.npz' to the temporary name.
      with open(tmp, 'wb') as f:
        np.savez(f, version=_STATS_FORMAT_VERSION, count=self.count, mean=self.mean, m2=self.m2)

    atomic_write(os.fspath(path), write)

  @classmethod
  def load(cls, path: str | os.PathLike) -> FeatureStats:
    """Reads statistics written by `save`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise JaxgenError(f'Feature statistics file {path} does not exist; compute the reference '
                        'statistics first or fix the path.')
    try:
      with np.load(path, allow_pickle=False) as data:
        fields = {k: data[k] for k in ('version', 'count', 'mean', 'm2')}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
      raise JaxgenError(f'{path} is not a FeatureStats .npz file ({e}); recompute the statistics.') from e
    if int(fields['version']) != _STATS_FORMAT_VERSION:
      raise JaxgenError(f'{path} has FeatureStats format version {int(fields["version"])}, expected '
                        f'{_STATS_FORMAT_VERSION}; recompute the statistics.')
    return cls(int(fields['count']), fields['mean'], fields['m2'])


# ---------------------------------------------------------------------------
# Frechet distance (FID).


def _check_gaussian(mu, sigma, which: str) -> tuple[np.ndarray, np.ndarray]:
  mu = np.asarray(mu, dtype=np.float64)
  sigma = np.asarray(sigma, dtype=np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise JaxgenError(f'The {which} Gaussian needs mu [D] and sigma [D, D], got shapes '
                      f'{mu.shape} and {sigma.shape}.')
  if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
    raise JaxgenError(f'The {which} Gaussian has NaN or inf in mu or sigma; fix the feature statistics.')
  scale = max(np.max(np.abs(sigma)), np.finfo(np.float64).tiny)
  if np.max(np.abs(sigma - sigma.T)) > 1e-6 * scale:
    raise JaxgenError(f'The {which} sigma is not symmetric; pass a covariance matrix.')
  # Exactly symmetric, so that eigh sees the matrix it is told it has.
  return mu, (sigma + sigma.T) / 2


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD [D, D] matrix via eigh."""
  w, v = np.linalg.eigh(a)
  # Rounding makes zero eigenvalues of rank-deficient covariances slightly negative.
  w = np.clip(w, 0.0, None)
  return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): the FID formula.

  d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2)).

  S1 S2 is not symmetric, so instead of a general `sqrtm` (which loses accuracy
  and goes complex on singular covariances) this uses that S1 S2 is similar to
  the symmetric PSD matrix sqrt(S1) S2 sqrt(S1): tr(sqrt(S1 S2)) is the sum of
  the square roots of its eigenvalues, from `np.linalg.eigh`, with rounding
  negatives clipped to 0. All in float64.

  Args:
    mu1: [D] mean of the first set of features.
    sigma1: [D, D] covariance of the first set (symmetric PSD; may be singular).
    mu2: [D] mean of the second set.
    sigma2: [D, D] covariance of the second set.

  Returns:
    The distance as a Python float, >= 0 (rounding below 0 is clipped).
  """
  mu1, sigma1 = _check_gaussian(mu1, sigma1, 'first')
  mu2, sigma2 = _check_gaussian(mu2, sigma2, 'second')
  if mu1.shape != mu2.shape:
    raise JaxgenError(f'Both Gaussians must have the same dimension, got {mu1.shape[0]} and {mu2.shape[0]}.')
  diff = mu1 - mu2
  root1 = _sqrtm_psd(sigma1)
  middle = root1 @ sigma2 @ root1
  middle = (middle + middle.T) / 2
  eigenvalues = np.clip(np.linalg.eigvalsh(middle), 0.0, None)
  tr_covmean = np.sum(np.sqrt(eigenvalues))
  fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
  return float(max(fid, 0.0))


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """FID between two `FeatureStats` (each with count >= 2 and the same D)."""
  for name, stats in (('stats1', stats1), ('stats2', stats2)):
    if not isinstance(stats, FeatureStats):
      raise JaxgenError(f'{name} must be a FeatureStats, got {type(stats).__name__}.')
  if stats1.dim != stats2.dim:
    raise JaxgenError(f'Cannot compare statistics of dimension {stats1.dim} and {stats2.dim}; '
                      'use the same feature extractor for both.')
  return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)


# ---------------------------------------------------------------------------
# Kernel Inception Distance.


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 between [m, D] x and [m, D] y with k(a, b) = (a.b / D + 1)^3."""
  m, d = x.shape
  k_xx = (x @ x.T / d + 1.0) ** 3
  k_yy = (y @ y.T / d + 1.0) ** 3
  k_xy = (x @ y.T / d + 1.0) ** 3
  # The unbiased estimator drops the i == j terms of the within-set sums.
  sum_xx = k_xx.sum() - np.trace(k_xx)
  sum_yy = k_yy.sum() - np.trace(k_yy)
  return float((sum_xx + sum_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(feats_real: ArrayLike, feats_fake: ArrayLike, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID: unbiased MMD^2 with a cubic polynomial kernel, averaged over subsets.

  As in Binkowski et al. 2018 and clean-fid: k(x, y) = (x.y / D + 1)^3
  and, per subset, MMD^2 = sum_{i!=j} k(x_i, x_j) / (m(m-1))
  + sum_{i!=j} k(y_i, y_j) / (m(m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2.

  Subsets: m = min(subset_size, N, M). With `rng = np.random.default_rng(seed)`,
  each subset draws `rng.choice(N, m, replace=False)` real rows and then
  `rng.choice(M, m, replace=False)` fake rows. Computed in float64 numpy: the
  estimate is a small difference of large kernel sums.

  Args:
    feats_real: [N, D] features of real images, N >= 2.
    feats_fake: [M, D] features of generated images, M >= 2.
    num_subsets: number of random subsets to average over.
    subset_size: samples drawn from each set per subset (capped at min(N, M)).
    seed: seed of the subset draws (the result is deterministic given it).

  Returns:
    (mean, std) of the per-subset MMD^2 estimates; std is the population std
    (ddof=0) across subsets, as reported by Binkowski et al.'s code and
    torch-fidelity, not a standard error. The mean can be slightly negative
    when both sets come from the same distribution.
  """
  # float32 inputs stay float32 (50k x 2048 is 400 MB); only each subset goes to float64.
  x_all = _as_features(feats_real, 'feats_real', min_rows=2, keep_float32=True)
  y_all = _as_features(feats_fake, 'feats_fake', min_rows=2, keep_float32=True)
  _check_same_dim(x_all, y_all, 'feats_real', 'feats_fake')
  num_subsets = _check_positive_int(num_subsets, 'num_subsets')
  subset_size = _check_positive_int(subset_size, 'subset_size', minimum=2)
  m = min(subset_size, x_all.shape[0], y_all.shape[0])
  rng = np.random.default_rng(seed)
  estimates = np.empty(num_subsets)
  for s in range(num_subsets):
    x = x_all[rng.choice(x_all.shape[0], m, replace=False)].astype(np.float64)
    y = y_all[rng.choice(y_all.shape[0], m, replace=False)].astype(np.float64)
    estimates[s] = _polynomial_mmd2_unbiased(x, y)
  return float(estimates.mean()), float(estimates.std())


# ---------------------------------------------------------------------------
# Inception Score.


def class_coverage(logits: ArrayLike) -> tuple[np.ndarray, float]:
  """(counts [K] of the classifier's predicted classes, max/min count ratio) of logits [N, K].

  The ratio is 1.0 for a perfectly balanced set and inf when a class is never
  predicted (mode dropping).
  """
  logits = _as_features(logits, 'logits')
  counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
  return counts, (float(counts.max() / counts.min()) if counts.min() > 0 else float('inf'))


def inception_score(probs_or_logits: ArrayLike, *, num_splits: int = 10,
                    from_logits: bool = False) -> tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

  As in Salimans et al. 2016 (the openai/improved-gan reference): the rows are
  split IN ORDER into `num_splits` contiguous chunks, chunk s being rows
  [s * N // num_splits, (s + 1) * N // num_splits) (equal when num_splits
  divides N, otherwise sizes differ by at most one; no row is left out). p(y)
  is the mean prediction within a chunk, and each chunk scores exp of the mean
  KL over its rows.

  Args:
    probs_or_logits: [N, K] class probabilities (rows sum to 1), or logits
      when `from_logits=True`.
    num_splits: number of chunks, 1 <= num_splits <= N.
    from_logits: whether the input is unnormalised logits (log_softmax is
      applied in float64).

  Returns:
    (mean, std) over the splits; std is np.std (ddof=0) as in the reference.
  """
  x = np.asarray(probs_or_logits)
  if x.ndim != 2 or x.shape[1] < 1:
    raise JaxgenError(f'probs_or_logits must be a 2-D [num_samples, num_classes] array, got shape {x.shape}.')
  x = x.astype(np.float64, copy=False)
  if not np.all(np.isfinite(x)):
    raise JaxgenError('probs_or_logits contains NaN or inf; fix the classifier outputs.')
  num_splits = _check_positive_int(num_splits, 'num_splits')
  n = x.shape[0]
  if n < num_splits:
    raise JaxgenError(f'inception_score needs at least num_splits={num_splits} samples, got {n}; '
                      'pass more samples or fewer splits.')
  if from_logits:
    log_p = x - x.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.sum(np.exp(log_p), axis=1, keepdims=True))
    p = np.exp(log_p)
  else:
    if np.any(x < 0) or np.any(np.abs(x.sum(axis=1) - 1.0) > 1e-3):
      raise JaxgenError('probs_or_logits rows must be probabilities summing to 1; '
                        'pass from_logits=True if these are logits.')
    # Renormalise float32 rounding away (scipy.stats.entropy in the reference does too).
    p = x / x.sum(axis=1, keepdims=True)
    # log 1 = 0 stands in where p = 0: those terms are masked out below anyway.
    log_p = np.log(np.where(p > 0, p, 1.0))
  scores = np.empty(num_splits)
  for s in range(num_splits):
    rows = slice(s * n // num_splits, (s + 1) * n // num_splits)
    p_s, log_p_s = p[rows], log_p[rows]
    p_y = p_s.mean(axis=0)
    log_p_y = np.log(np.where(p_y > 0, p_y, 1.0))
    # 0 log 0 = 0; wherever p > 0 in the chunk, p_y > 0 too, so the log above is exact there.
    kl = np.sum(np.where(p_s > 0, p_s * (log_p_s - log_p_y), 0.0), axis=1)
    scores[s] = np.exp(kl.mean())
  return float(scores.mean()), float(scores.std())


# ---------------------------------------------------------------------------
# Improved precision and recall (Kynkaanniemi et al. 2019).


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """[r, D], [c, D] -> [r, c] squared Euclidean distances, >= 0."""
  # HIGHEST: on GPUs the default float32 matmul may run in TF32 (10-bit mantissa).
  ab = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  d = jnp.sum(a * a, axis=1)[:, None] - 2.0 * ab + jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames=('k',))
def _knn_sq_radii_block(rows, row_start, col_blocks, num_cols, k: int):
  """k-th nearest-neighbour squared distance of each row among the columns, excluding itself.

  Args:
    rows: [r, D] a block of the set, starting at global index `row_start`.
    col_blocks: [nb, c, D] the whole set, zero-padded to nb * c rows.
    num_cols: number of real (unpadded) rows of the set.
    k: neighbour rank, 1 <= k <= num_cols - 1.

  Returns:
    [r] squared radii.
  """
  r = rows.shape[0]
  _, c, _ = col_blocks.shape
  row_idx = row_start + jnp.arange(r)

  def body(best, inputs):
    j, cols = inputs
    d = _sq_dists(rows, cols)
    col_idx = j * c + jnp.arange(c)
    # Padding and the point itself are never neighbours.
    invalid = (col_idx[None, :] >= num_cols) | (col_idx[None, :] == row_idx[:, None])
    d = jnp.where(invalid, jnp.inf, d)
    # Running k smallest: memory stays [r, k + c] whatever the set size.
    neg_smallest, _ = jax.lax.top_k(-jnp.concatenate([best, d], axis=1), k)
    return -neg_smallest, None

  init = jnp.full((r, k), jnp.inf, dtype=rows.dtype)
  best, _ = jax.lax.scan(body, init, (jnp.arange(col_blocks.shape[0]), col_blocks))
  return best[:, k - 1]


@jax.jit
def _covered_block(rows, col_blocks, col_sq_radii):
  """[r] whether each row lies in at least one column ball (d^2 <= radius^2).

  col_blocks is [nb, c, D]; col_sq_radii is [nb, c] with -inf on padding.
  """

  def body(covered, inputs):
    cols, radii = inputs
    inside = _sq_dists(rows, cols) <= radii[None, :]
    return covered | jnp.any(inside, axis=1), None

  init = jnp.zeros((rows.shape[0],), dtype=bool)
  covered, _ = jax.lax.scan(body, init, (col_blocks, col_sq_radii))
  return covered


def _pad_to_blocks(x: np.ndarray, block: int, fill: float = 0.0) -> np.ndarray:
  """[n, ...] -> [ceil(n / block), block, ...], padded with `fill`."""
  pad = (-x.shape[0]) % block
  if pad:
    x = np.concatenate([x, np.full((pad,) + x.shape[1:], fill, dtype=x.dtype)])
  return x.reshape((-1, block) + x.shape[1:])


def _knn_sq_radii(x: np.ndarray, k: int, block: int) -> np.ndarray:
  """[n, D] float32 -> [n] squared k-NN radii within the set (self excluded)."""
  n = x.shape[0]
  block = min(block, n)
  col_blocks = jnp.asarray(_pad_to_blocks(x, block))
  row_blocks = _pad_to_blocks(x, block)
  radii = [_knn_sq_radii_block(jnp.asarray(rows), i * block, col_blocks, n, k)
           for i, rows in enumerate(row_blocks)]
  return np.concatenate([np.asarray(r) for r in radii])[:n]


def _fraction_covered(x: np.ndarray, balls: np.ndarray, sq_radii: np.ndarray, block: int) -> float:
  """Fraction of [n, D] x inside at least one ball (centre `balls[j]`, squared radius `sq_radii[j]`)."""
  n = x.shape[0]
  col_block = min(block, balls.shape[0])
  col_blocks = jnp.asarray(_pad_to_blocks(balls, col_block))
  radii_blocks = jnp.asarray(_pad_to_blocks(sq_radii, col_block, fill=-np.inf))
  row_block = min(block, n)
  covered = [np.asarray(_covered_block(jnp.asarray(rows), col_blocks, radii_blocks))
             for rows in _pad_to_blocks(x, row_block)]
  return float(np.concatenate(covered)[:n].sum() / n)


def precision_recall(real_feats: ArrayLike, fake_feats: ArrayLike, *, k: int = 3,
                     batch_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall of Kynkaanniemi et al. 2019.

  Each real point gets a ball whose radius is its distance to its k-th nearest
  neighbour among the OTHER real points; likewise for fake points. Precision is
  the fraction of fake points inside at least one real ball
  (dist(fake, real_j) <= radius_real_j); recall is the fraction of real points
  inside at least one fake ball.

  Distances are computed in float32 jax as |a|^2 - 2 a.b + |b|^2 (clipped at 0)
  on [batch_size, batch_size] blocks, with a running top-k for the radii, so
  memory stays O(batch_size^2 + (N + M) D) whatever N and M are. Both sets are
  first shifted by the real mean: distances do not change, but the norms
  shrink, which cuts the float32 cancellation in that formula.

  Args:
    real_feats: [N, D] real features, N >= k + 1.
    fake_feats: [M, D] generated features, M >= k + 1.
    k: neighbour rank defining the ball radii (the paper uses 3).
    batch_size: block size of the distance computation.

  Returns:
    (precision, recall), each in [0, 1].
  """
  real = _as_features(real_feats, 'real_feats', keep_float32=True)
  fake = _as_features(fake_feats, 'fake_feats', keep_float32=True)
  _check_same_dim(real, fake, 'real_feats', 'fake_feats')
  k = _check_positive_int(k, 'k')
  batch_size = _check_positive_int(batch_size, 'batch_size')
  for name, x in (('real_feats', real), ('fake_feats', fake)):
    if x.shape[0] < k + 1:
      raise JaxgenError(f'{name} needs more than k={k} samples to have a k-th nearest neighbour, '
                        f'got {x.shape[0]}; pass more samples or a smaller k.')
  # Centre in the input's own precision (float64 input keeps a small spread on a
  # large offset), then round once to float32. A rounding error in `shift`
  # itself translates all points alike, which leaves every distance unchanged.
  shift = real.mean(axis=0, dtype=np.float64)
  real = (real - shift.astype(real.dtype)).astype(np.float32, copy=False)
  fake = (fake - shift.astype(fake.dtype)).astype(np.float32, copy=False)
  real_radii = _knn_sq_radii(real, k, batch_size)
  fake_radii = _knn_sq_radii(fake, k, batch_size)
  precision = _fraction_covered(fake, real, real_radii, batch_size)
  recall = _fraction_covered(real, fake, fake_radii, batch_size)
  return precision, recall


# ---------------------------------------------------------------------------
# Likelihoods in bits per dimension.

# Width of the interval that the 256 bins tile, per `bits_per_dim` data_range.
_DATA_RANGE_WIDTHS = {'discrete': None, '[0, 1]': 1.0, '[-1, 1]': 2.0}


def continuous_to_discrete_nll(nll_nats: ArrayLike, num_dims: int, *, scale: float) -> float | np.ndarray:
  """Upper bound on the discrete NLL of 8-bit data from a continuous density's NLL.

  Convention: the 256 levels k = 0..255 tile an interval [lo, hi] of width
  `scale` = hi - lo in bins of width scale / 256, and the model's density p is
  over x in that interval (e.g. uniform dequantisation x = lo + (k + u) *
  scale / 256, u ~ U[0, 1)^D). Then
    -log P(k) <= E_u[-log p(x)] - num_dims * log(scale / 256)
  (Theis et al. 2016), i.e. the continuous NLL plus num_dims * log(256 / scale).
  Common cases: data in [-1, 1] -> scale=2 (bin width 1/128); data in [0, 1]
  -> scale=1; levels at x = k / 127.5 - 1 (spacing 2/255, bins overhang
  [-1, 1] by half a bin) -> scale = 256 * 2 / 255.

  Args:
    nll_nats: continuous NLL in nats per image: a scalar or any-shape array.
    num_dims: dimensions per image (H * W * C).
    scale: width of the interval tiled by the 256 bins, > 0.

  Returns:
    The discrete NLL in nats per image, same shape as `nll_nats` (float if scalar).
  """
  num_dims = _check_positive_int(num_dims, 'num_dims')
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
      or not math.isfinite(scale) or scale <= 0:
    raise JaxgenError(f'scale must be the positive width of the data interval (e.g. 2.0 for [-1, 1]), got {scale!r}.')
  nll = np.asarray(nll_nats, dtype=np.float64)
  if not np.all(np.isfinite(nll)):
    raise JaxgenError('nll_nats contains NaN or inf; fix the likelihood computation.')
  out = nll + num_dims * math.log(256.0 / scale)
  return float(out) if out.ndim == 0 else out


def bits_per_dim(nll_nats_per_image: ArrayLike, num_dims: int, *, data_range: str = 'discrete') -> float:
  """Negative log-likelihood in nats per image -> bits per dimension.

  bpd = nll / (num_dims * ln 2), after converting a continuous NLL to the
  discrete 8-bit one when needed.

  Args:
    nll_nats_per_image: NLL in nats per image, a scalar or an [N] array of
      per-image values (the mean over images is used).
    num_dims: dimensions per image (H * W * C).
    data_range: what the NLL was measured on:
      'discrete': -log P of the 256-level data itself (or, equivalently, a
        density over dequantised data in [0, 256), whose bins have width 1);
        no correction.
      '[0, 1]' or '[-1, 1]': a continuous density over data rescaled to that
        interval; `continuous_to_discrete_nll` with scale 1 or 2 is applied
        first, so the result is the usual (upper-bound) discrete bpd.

  Returns:
    Bits per dimension as a Python float.
  """
  if data_range not in _DATA_RANGE_WIDTHS:
    raise JaxgenError(f'data_range must be one of {sorted(_DATA_RANGE_WIDTHS)}, got {data_range!r}.')
  num_dims = _check_positive_int(num_dims, 'num_dims')
  nll = np.asarray(nll_nats_per_image, dtype=np.float64)
  if nll.ndim > 1 or nll.size == 0:
    raise JaxgenError(f'nll_nats_per_image must be a scalar or a non-empty [N] array, got shape {nll.shape}.')
  if not np.all(np.isfinite(nll)):
    raise JaxgenError('nll_nats_per_image contains NaN or inf; fix the likelihood computation.')
  nll = float(nll.mean())
  width = _DATA_RANGE_WIDTHS[data_range]
  if width is not None:
    nll = continuous_to_discrete_nll(nll, num_dims, scale=width)
  return nll / (num_dims * math.log(2.0))
