"""Tests of the evaluation metrics against references, hand computations and closed forms."""

import math

import numpy as np
import pytest
import scipy.linalg

from jaxgen.errors import JaxgenError
from jaxgen.eval import metrics
from jaxgen.eval.metrics import FeatureStats


def _stream(x, sizes):
  """FeatureStats of `x` fed in consecutive batches of the given sizes."""
  stats = FeatureStats.empty(x.shape[1])
  start = 0
  for size in sizes:
    stats = stats.update(x[start:start + size])
    start += size
  assert start == x.shape[0]
  return stats


# ---------------------------------------------------------------------------
# FeatureStats.


@pytest.mark.parametrize('offset', [0.0, 1e3, 1e5])
def test_stats_match_numpy_with_large_offset(offset):
  rng = np.random.default_rng(0)
  x = offset + rng.normal(size=(1000, 16)) * np.linspace(0.5, 2.0, 16)
  stats = _stream(x, [1, 7, 256, 0, 300, 436])
  assert stats.count == 1000
  np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
  # Reference in float64 on data with the offset removed exactly first.
  np.testing.assert_allclose(stats.cov, np.cov(x - offset, rowvar=False), rtol=1e-8, atol=0)
  np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-8, atol=0)


def test_raw_sums_would_fail_where_stats_pass():
  # Shows the large-offset test has teeth: naive float64 raw sums lose ~1e-6 at offset 1e5.
  rng = np.random.default_rng(0)
  x = 1e5 + rng.normal(size=(1000, 16))
  n = x.shape[0]
  naive = (x.T @ x - np.outer(x.sum(0), x.sum(0)) / n) / (n - 1)
  reference = np.cov(x - 1e5, rowvar=False)
  assert np.max(np.abs(naive - reference)) > 1e-8
  np.testing.assert_allclose(_stream(x, [100] * 10).cov, reference, rtol=1e-8, atol=0)


def test_update_is_immutable_and_merge_matches_concatenation():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(30, 5)), rng.normal(3.0, 2.0, size=(50, 5))
  empty = FeatureStats.empty(5)
  sa = empty.update(a)
  assert empty.count == 0 and sa.count == 30
  np.testing.assert_array_equal(empty.mean, np.zeros(5))
  with pytest.raises(ValueError):
    sa.mean[0] = 1.0  # read-only
  merged = sa.merge(FeatureStats.empty(5).update(b))
  both = np.concatenate([a, b])
  np.testing.assert_allclose(merged.mean, both.mean(0), rtol=1e-12)
  np.testing.assert_allclose(merged.cov, np.cov(both, rowvar=False), rtol=1e-10)
  assert empty.merge(sa) is sa and sa.merge(empty) is sa


def test_stats_accept_jax_float32():
  import jax.numpy as jnp
  x = np.random.default_rng(2).normal(size=(20, 4)).astype(np.float32)
  stats = FeatureStats.empty(4).update(jnp.asarray(x))
  np.testing.assert_allclose(stats.cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_stats_save_load_roundtrip(tmp_path):
  x = np.random.default_rng(3).normal(size=(40, 6))
  stats = FeatureStats.from_features(x)
  path = tmp_path / 'ref_stats'  # no .npz suffix: written at exactly this path
  stats.save(str(path))
  assert path.exists()
  loaded = FeatureStats.load(str(path))
  assert loaded.count == 40
  np.testing.assert_array_equal(loaded.mean, stats.mean)
  np.testing.assert_array_equal(loaded.m2, stats.m2)
  np.testing.assert_array_equal(loaded.cov, stats.cov)


def test_stats_errors(tmp_path):
  stats = FeatureStats.empty(4)
  with pytest.raises(JaxgenError, match='shape'):
    stats.update(np.zeros((3, 5)))
  with pytest.raises(JaxgenError, match='shape'):
    stats.update(np.zeros(4))
  with pytest.raises(JaxgenError, match='NaN'):
    stats.update(np.full((2, 4), np.nan))
  with pytest.raises(JaxgenError, match='at least 2'):
    _ = stats.update(np.zeros((1, 4))).cov
  with pytest.raises(JaxgenError, match='dimension'):
    stats.merge(FeatureStats.empty(3))
  with pytest.raises(JaxgenError):
    FeatureStats.empty(0)
  with pytest.raises(JaxgenError, match='does not exist'):
    FeatureStats.load(str(tmp_path / 'missing.npz'))
  bad = tmp_path / 'bad.npz'
  np.savez(bad, mean=np.zeros(3))
  with pytest.raises(JaxgenError, match='not a FeatureStats'):
    FeatureStats.load(str(bad))
  for content in (b'not a zip file at all', b'PK\x03\x04 truncated'):
    bad.write_bytes(content)
    with pytest.raises(JaxgenError, match='not a FeatureStats'):
      FeatureStats.load(str(bad))


# ---------------------------------------------------------------------------
# Frechet distance.


def _pytorch_fid_reference(mu1, s1, mu2, s2):
  """The pytorch-fid formula (without its eps retry)."""
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(s1.dot(s2))
  return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _random_gaussian(rng, dim, num_samples):
  """Mean and sample covariance of `num_samples` correlated Gaussian draws (singular if < dim + 1)."""
  mixing = rng.normal(size=(dim, dim)) / math.sqrt(dim)
  x = rng.normal(size=(num_samples, dim)) @ mixing + rng.normal(size=dim)
  return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize('dim', [8, 64, 256])
@pytest.mark.parametrize('rank_deficient', [False, True])
def test_fid_matches_pytorch_fid_formula(dim, rank_deficient):
  rng = np.random.default_rng(dim + rank_deficient)
  n = dim // 2 if rank_deficient else 4 * dim
  mu1, s1 = _random_gaussian(rng, dim, n)
  mu2, s2 = _random_gaussian(rng, dim, n + 3)
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  want = _pytorch_fid_reference(mu1, s1, mu2, s2)
  assert got > 0
  assert abs(got - want) <= 1e-6 * abs(want), (got, want)


@pytest.mark.parametrize('num_samples', [100, 20])
def test_fid_of_a_set_with_itself_is_zero(num_samples):
  mu, s = _random_gaussian(np.random.default_rng(5), 64, num_samples)
  assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-6 * np.trace(s)


def test_fid_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(6)
  mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
  v1, v2 = rng.uniform(0.0, 3.0, size=32), rng.uniform(0.0, 3.0, size=32)
  v1[:4] = 0.0  # singular
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  assert got == pytest.approx(want, rel=1e-12)


def test_fid_from_stats_streams():
  rng = np.random.default_rng(7)
  a, b = rng.normal(size=(200, 10)), rng.normal(0.5, 1.5, size=(150, 10))
  sa, sb = _stream(a, [64, 64, 72]), _stream(b, [150])
  want = metrics.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
  assert metrics.fid_from_stats(sa, sb) == pytest.approx(want, rel=1e-10)


def test_fid_errors():
  with pytest.raises(JaxgenError, match='same dimension'):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(JaxgenError, match='mu'):
    metrics.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(JaxgenError, match='symmetric'):
    metrics.frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))
  with pytest.raises(JaxgenError, match='at least 2'):
    metrics.fid_from_stats(FeatureStats.from_features(np.zeros((1, 3))), FeatureStats.empty(3))
  with pytest.raises(JaxgenError, match='dimension'):
    metrics.fid_from_stats(FeatureStats.empty(3), FeatureStats.empty(4))


# ---------------------------------------------------------------------------
# KID.


def _mmd2_double_loop(x, y):
  m, d = len(x), x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / m ** 2


def test_kid_whole_sets_match_double_loop():
  rng = np.random.default_rng(8)
  x, y = rng.normal(size=(6, 3)), rng.normal(0.7, 1.0, size=(6, 3))
  # subset_size >= N = M: every subset is a permutation of the whole sets.
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
  assert mean == pytest.approx(_mmd2_double_loop(x, y), rel=1e-12)
  assert std < 1e-12


def test_kid_subsets_match_double_loop():
  rng = np.random.default_rng(9)
  x, y = rng.normal(size=(9, 4)), rng.normal(0.5, 1.2, size=(7, 4))
  seed, num_subsets, m = 3, 4, 5
  draws = np.random.default_rng(seed)  # the documented subset convention
  want = []
  for _ in range(num_subsets):
    xi = draws.choice(9, m, replace=False)
    yi = draws.choice(7, m, replace=False)
    want.append(_mmd2_double_loop(x[xi], y[yi]))
  mean, std = metrics.kernel_inception_distance(x, y, num_subsets=num_subsets, subset_size=m, seed=seed)
  assert mean == pytest.approx(np.mean(want), rel=1e-12)
  assert std == pytest.approx(np.std(want), rel=1e-9)
  # subset_size larger than the smaller set: m = min(N, M) = 7.
  draws = np.random.default_rng(0)
  xi, yi = draws.choice(9, 7, replace=False), draws.choice(7, 7, replace=False)
  mean, _ = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=8)
  assert mean == pytest.approx(_mmd2_double_loop(x[xi], y[yi]), rel=1e-12)


def test_kid_near_zero_for_same_distribution_and_grows_with_shift():
  rng = np.random.default_rng(10)
  real = rng.normal(size=(600, 16))
  same = rng.normal(size=(600, 16))
  kwargs = dict(num_subsets=20, subset_size=300)
  kid_same, std_same = metrics.kernel_inception_distance(real, same, **kwargs)
  kid_small, _ = metrics.kernel_inception_distance(real, same + 0.3, **kwargs)
  kid_large, _ = metrics.kernel_inception_distance(real, same + 1.0, **kwargs)
  assert abs(kid_same) < 3 * std_same + 1e-3
  assert kid_small > 10 * abs(kid_same) + 3 * std_same
  assert kid_large > 5 * kid_small
  again = metrics.kernel_inception_distance(real, same + 0.3, **kwargs)
  assert again[0] == kid_small  # deterministic given the seed


def test_kid_errors():
  with pytest.raises(JaxgenError, match='feature dimension'):
    metrics.kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))
  with pytest.raises(JaxgenError, match='at least 2'):
    metrics.kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))
  with pytest.raises(JaxgenError, match='subset_size'):
    metrics.kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 3)), subset_size=1)
  with pytest.raises(JaxgenError, match='2-D'):
    metrics.kernel_inception_distance(np.zeros(5), np.zeros((5, 3)))


# ---------------------------------------------------------------------------
# Inception Score.


def test_is_of_confident_uniform_predictions_is_num_classes():
  num_classes, num_splits = 10, 5
  labels = np.arange(num_splits * 3 * num_classes) % num_classes  # every split sees each class equally
  probs = np.eye(num_classes)[labels]
  mean, std = metrics.inception_score(probs, num_splits=num_splits)
  assert mean == pytest.approx(num_classes, rel=1e-6)
  assert std < 1e-6
  # Near-one-hot logits give the same.
  mean, _ = metrics.inception_score(50.0 * probs, num_splits=num_splits, from_logits=True)
  assert mean == pytest.approx(num_classes, rel=1e-6)


def test_is_of_identical_predictions_is_one():
  probs = np.tile([0.1, 0.6, 0.3], (20, 1))
  mean, std = metrics.inception_score(probs, num_splits=4)
  assert mean == pytest.approx(1.0, abs=1e-12) and std < 1e-12


def test_is_matches_hand_computation():
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.0, 0.5, 0.5],
                    [1.0, 0.0, 0.0]])
  scores = []
  for part in (probs[:2], probs[2:]):  # chunk boundaries s * N // num_splits: 0, 2, 5
    p_y = part.mean(0)
    kls = [sum(p * math.log(p / q) for p, q in zip(row, p_y) if p > 0) for row in part]
    scores.append(math.exp(sum(kls) / len(kls)))
  mean, std = metrics.inception_score(probs, num_splits=2)
  assert mean == pytest.approx(np.mean(scores), rel=1e-12)
  assert std == pytest.approx(np.std(scores), rel=1e-9)
  # Logits: any per-row shift of log-probabilities gives the same score.
  logits = np.log(np.clip(probs, 1e-300, None)) + np.arange(5)[:, None]
  mean_l, _ = metrics.inception_score(logits, num_splits=2, from_logits=True)
  assert mean_l == pytest.approx(mean, rel=1e-9)


def test_is_errors():
  with pytest.raises(JaxgenError, match='from_logits'):
    metrics.inception_score(np.array([[2.0, -1.0], [0.5, 0.5]]), num_splits=1)
  with pytest.raises(JaxgenError, match='num_splits'):
    metrics.inception_score(np.full((3, 2), 0.5), num_splits=4)
  with pytest.raises(JaxgenError, match='2-D'):
    metrics.inception_score(np.full(4, 0.25))


# ---------------------------------------------------------------------------
# Precision and recall.


def _brute_force_precision_recall(real, fake, k):
  """float64 numpy; also returns the smallest relative margin |d^2 / r^2 - 1| of any comparison."""

  def sq_dists(a, b):
    return np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)

  def radii(x):
    d = sq_dists(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]

  r_real, r_fake = radii(real), radii(fake)
  d_fr = sq_dists(fake, real)  # [M, N]
  precision = np.mean(np.any(d_fr <= r_real[None, :], axis=1))
  recall = np.mean(np.any(d_fr.T <= r_fake[None, :], axis=1))
  margin = min(np.min(np.abs(d_fr / r_real[None, :] - 1)), np.min(np.abs(d_fr.T / r_fake[None, :] - 1)))
  return precision, recall, margin


@pytest.mark.parametrize('k,batch_size', [(3, 16), (1, 1024), (5, 7)])
def test_precision_recall_matches_brute_force(k, batch_size):
  rng = np.random.default_rng(13)
  real = rng.normal(size=(70, 6)) + 5.0
  fake = 0.9 * rng.normal(size=(50, 6)) + 5.6
  want_p, want_r, margin = _brute_force_precision_recall(real, fake, k)
  # No comparison sits within float32 rounding (~1e-6 relative) of a ball boundary,
  # so exact equality is a fair demand.
  assert margin > 1e-4
  assert 0 < want_p < 1 and 0 < want_r < 1
  got_p, got_r = metrics.precision_recall(real, fake, k=k, batch_size=batch_size)
  assert (got_p, got_r) == (want_p, want_r)


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_precision_recall_survives_a_large_offset(dtype):
  # Uncentred float32 |a|^2 - 2ab + |b|^2 at |a| ~ 2.5e4 would have errors ~ 40 on d^2 ~ 1-10.
  rng = np.random.default_rng(13)
  real = (rng.normal(size=(70, 6)) + 1e4).astype(dtype)
  fake = (0.9 * rng.normal(size=(50, 6)) + 1e4 + 0.6).astype(dtype)
  # The reference sees exactly the values passed (after any float32 rounding).
  want_p, want_r, margin = _brute_force_precision_recall(real.astype(np.float64), fake.astype(np.float64), 3)
  assert margin > 1e-4
  assert metrics.precision_recall(real, fake, batch_size=32) == (want_p, want_r)


def test_precision_recall_of_identical_sets_is_one():
  x = np.random.default_rng(12).normal(size=(100, 8))
  assert metrics.precision_recall(x, x.copy(), batch_size=32) == (1.0, 1.0)


def test_precision_recall_with_half_the_modes():
  rng = np.random.default_rng(13)
  # 4 well-separated clusters in 2-D; the fake set covers only the first two.
  centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], dtype=np.float64)
  real = np.concatenate([c + rng.normal(size=(150, 2)) for c in centres])
  fake = np.concatenate([c + rng.normal(size=(150, 2)) for c in centres[:2]])
  precision, recall = metrics.precision_recall(real, fake, batch_size=128)
  assert precision > 0.95
  assert 0.45 < recall <= 0.5


def test_precision_recall_errors():
  with pytest.raises(JaxgenError, match='feature dimension'):
    metrics.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
  with pytest.raises(JaxgenError, match='k=3'):
    metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
  with pytest.raises(JaxgenError, match='k'):
    metrics.precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), k=0)


# ---------------------------------------------------------------------------
# Bits per dimension.


def test_uniform_density_on_minus_one_one_is_eight_bits():
  d = 3 * 32 * 32
  nll_cont = d * math.log(2.0)  # p = 2^-D on [-1, 1]^D
  nll_disc = metrics.continuous_to_discrete_nll(nll_cont, d, scale=2.0)
  assert nll_disc == pytest.approx(d * math.log(256.0), rel=1e-14)
  assert metrics.bits_per_dim(nll_disc, d) == pytest.approx(8.0, rel=1e-14)
  assert metrics.bits_per_dim(nll_cont, d, data_range='[-1, 1]') == pytest.approx(8.0, rel=1e-14)
  # p = 1 on [0, 1]^D: nll 0, bins of width 1/256.
  assert metrics.bits_per_dim(0.0, d, data_range='[0, 1]') == pytest.approx(8.0, rel=1e-14)


def test_bits_per_dim_hand_computation():
  d = 784
  nlls = np.array([1000.0, 1200.0, 1100.0])
  assert metrics.bits_per_dim(nlls, d) == pytest.approx(1100.0 / (784 * math.log(2)), rel=1e-14)
  # Levels at k / 127.5 - 1: bin width 2/255, so the bins tile a width of 256 * 2 / 255.
  out = metrics.continuous_to_discrete_nll(nlls, d, scale=256 * 2 / 255)
  np.testing.assert_allclose(out, nlls - d * math.log(2 / 255), rtol=1e-14)


def test_bits_per_dim_errors():
  with pytest.raises(JaxgenError, match='data_range'):
    metrics.bits_per_dim(1.0, 10, data_range='continuous')
  with pytest.raises(JaxgenError, match='num_dims'):
    metrics.bits_per_dim(1.0, 0)
  with pytest.raises(JaxgenError, match='scale'):
    metrics.continuous_to_discrete_nll(1.0, 10, scale=0.0)
  with pytest.raises(JaxgenError, match='NaN'):
    metrics.bits_per_dim(float('nan'), 10)


def test_class_coverage_counts_predicted_classes():
  logits = np.array([[3., 0, 0], [0, 2, 0], [0, 5, 1], [1, 0, 0], [0, 0, 9], [0, 4, 0]])
  counts, ratio = metrics.class_coverage(logits)
  np.testing.assert_array_equal(counts, [2, 3, 1])
  assert ratio == 3.0
  assert metrics.class_coverage(logits[:2])[1] == float('inf')  # class 2 never predicted
