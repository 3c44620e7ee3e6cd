"""One evaluation layer for every family: FID, KID, Inception Score, precision/recall.

Images stream through a feature extractor in batches (each batch spread over
the devices); only their features are kept: running mean and covariance for
FID, and the feature vectors (at most `max_kept` of them) for KID and
precision/recall, the logits for IS. Reference statistics of a dataset split
are computed once and cached in `$JAXGEN_CACHE_DIR/reference/`.

Extractors:
- 'inception': the FID Inception-v3 of pytorch-fid (its weights file must be
  available; see `jaxgen.eval.inception`). Metrics are named 'FID', 'KID', 'IS'.
- 'mnist': the domain classifier trained by `jaxgen eval train-features
  --dataset mnist`. Metrics are named 'FID (MNIST features)' and so on, so that
  nobody mistakes them for Inception numbers.

    from jaxgen.eval import evaluate
    result = evaluate.evaluate_npz('samples.npz', 'mnist:test', metrics=('fid', 'pr'), features='mnist')
"""

import dataclasses
import datetime
import json
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from jaxgen import data as data_lib
from jaxgen import images as images_lib
from jaxgen.errors import JaxgenError
from jaxgen.eval import metrics as metrics_lib
from jaxgen.eval.cache import cache_dir
from jaxgen.train import mesh as mesh_lib

# bpd: a model's likelihood; recon: an autoencoder's reconstruction error. Neither is a sample metric.
METRICS = ('fid', 'kid', 'is', 'pr', 'coverage', 'accuracy', 'bpd', 'recon')
# Metrics of the generated set alone (no reference images).
FAKE_ONLY_METRICS = ('is', 'coverage', 'accuracy')
MODEL_METRICS = ('bpd', 'recon')
FEATURES = ('inception', 'mnist')
REFERENCE_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A feature network. `fn`: uint8 [B, H, W, C] -> (features [B, D], logits [B, K])."""
  name: str
  label: str  # '' for Inception, else ' (MNIST features)'
  fn: Callable[[np.ndarray], tuple[jax.Array, jax.Array]]
  image_shape: tuple[int, int, int] | None  # the input it requires; None: any size


def get_extractor(name: str) -> Extractor:
  """Loads the extractor called `name` ('inception' or 'mnist')."""
  if name == 'inception':
    from jaxgen.eval import inception  # pylint: disable=g-import-not-at-top
    variables = inception.load_inception_params()
    fn = jax.jit(lambda x: inception.inception_features(variables, x))
    return Extractor('inception', '', fn, None)
  if name == 'mnist':
    from jaxgen.eval import domain  # pylint: disable=g-import-not-at-top
    domain_fn, _ = domain.load_domain_extractor('mnist')
    fn = lambda x: domain_fn(x.astype(np.float32) / 127.5 - 1.0)  # noqa: E731 uint8 -> [-1, 1]
    return Extractor('mnist', ' (MNIST features)', fn, (28, 28, 1))
  raise JaxgenError(f'unknown feature extractor {name!r}; use one of {", ".join(FEATURES)}.')


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
  """'fid,kid' -> ('fid', 'kid'), naming any unknown metric."""
  names = tuple(m.strip().lower() for m in (spec.split(',') if isinstance(spec, str) else spec) if m.strip())
  unknown = [m for m in names if m not in METRICS]
  if unknown or not names:
    raise JaxgenError(f'unknown metric {unknown[0] if unknown else spec!r}; choose from {",".join(METRICS)}.')
  return names


@dataclasses.dataclass
class FeatureSet:
  """What the metrics need of one image set."""
  stats: metrics_lib.FeatureStats
  features: np.ndarray  # [min(N, max_kept), D] float32
  logits: np.ndarray  # [min(N, max_kept), K] float32


def extract(extractor: Extractor, batches: Iterable[np.ndarray], *, max_kept: int = 10_000,
            mesh: jax.sharding.Mesh | None = None) -> FeatureSet:
  """Streams uint8 [B, H, W, C] batches through `extractor`.

  Each batch whose size divides the device count is split over the mesh.
  Raises JaxgenError if the images do not have the shape the extractor needs.
  """
  mesh = mesh or mesh_lib.make_mesh()
  sharding = mesh_lib.batch_sharding(mesh)
  stats, kept_f, kept_l, n_kept = None, [], [], 0
  for batch in batches:
    if extractor.image_shape and tuple(batch.shape[1:]) != extractor.image_shape:
      raise JaxgenError(f'the {extractor.name} feature network takes images of shape '
                        f'{extractor.image_shape}, got {tuple(batch.shape[1:])}; use --features inception.')
    x = jax.device_put(batch, sharding) if len(batch) % mesh.devices.size == 0 else batch
    features, logits = jax.device_get(extractor.fn(x))
    features = np.asarray(features, np.float32)
    stats = (stats or metrics_lib.FeatureStats.empty(features.shape[1])).update(features)
    if n_kept < max_kept:
      take = min(len(features), max_kept - n_kept)
      kept_f.append(features[:take])
      kept_l.append(np.asarray(logits, np.float32)[:take])
      n_kept += take
  if stats is None:
    raise JaxgenError('no images to evaluate.')
  return FeatureSet(stats, np.concatenate(kept_f), np.concatenate(kept_l))


def compute(metrics: Sequence[str], fake: FeatureSet, real: FeatureSet | None,
            extractor: Extractor, labels: np.ndarray | None = None) -> dict[str, float]:
  """The requested metrics of `fake` against `real`, named with the extractor's label.

  `accuracy` needs `labels` [N], the classes the images were asked for (in order).
  """
  out, label = {}, extractor.label
  if real is None and set(metrics) - set(FAKE_ONLY_METRICS):
    raise JaxgenError('FID, KID and precision/recall need reference images; pass --real.')
  if 'fid' in metrics:
    out[f'FID{label}'] = metrics_lib.fid_from_stats(real.stats, fake.stats)
  if 'kid' in metrics:
    subset = min(1000, len(real.features), len(fake.features))
    mean, std = metrics_lib.kernel_inception_distance(real.features, fake.features, subset_size=subset)
    out[f'KID{label}'], out[f'KID{label} std'] = mean, std
  if 'is' in metrics:
    splits = 10 if len(fake.logits) >= 100 else 1
    mean, std = metrics_lib.inception_score(fake.logits, num_splits=splits, from_logits=True)
    out[f'IS{label}'], out[f'IS{label} std'] = mean, std
  if 'coverage' in metrics:
    # Mode coverage by the feature network's classifier (meaningful for the MNIST domain network).
    counts, ratio = metrics_lib.class_coverage(fake.logits)
    out[f'class ratio max/min{label}'] = ratio
    out[f'classes covered{label}'] = float(np.count_nonzero(counts))
    out.update({f'class {k} fraction{label}': float(c / counts.sum()) for k, c in enumerate(counts)})
  if 'accuracy' in metrics:
    # Agreement of the feature network's classifier with the class each sample was asked for.
    n = len(fake.logits)
    if labels is None or len(labels) < n:
      raise JaxgenError('accuracy needs the class each image was asked for: evaluate a conditional '
                        'run (--workdir) or an .npz with a "labels" array beside "images".')
    out[f'accuracy{label}'] = float(np.mean(np.argmax(fake.logits, axis=1) == np.asarray(labels)[:n]))
  if 'pr' in metrics:
    precision, recall = metrics_lib.precision_recall(real.features, fake.features, k=3)
    out[f'precision{label}'], out[f'recall{label}'] = precision, recall
  return out


# ------------------------------------------------------------------- image sources


def npz_batches(path: str, num: int | None = None, batch: int = 500) -> tuple[Iterator[np.ndarray], int]:
  """(uint8 batches, count) of the images in an .npz under the key 'images', checked first."""
  if not os.path.isfile(path):
    raise JaxgenError(f'sample file {path} does not exist.')
  try:
    data = np.load(path, mmap_mode='r', allow_pickle=False)
  except (ValueError, OSError) as e:
    raise JaxgenError(f'{path} is not a readable .npz file ({e}).') from None
  if 'images' not in data:
    raise JaxgenError(f'{path} has no key "images" (it has {", ".join(data.files) or "none"}); '
                      'save uint8 NHWC images under that key.')
  images = data['images']
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise JaxgenError(f'{path}: "images" must be NHWC with 1 or 3 channels, got shape {images.shape}.')
  if images.dtype != np.uint8:
    raise JaxgenError(f'{path}: "images" must be uint8 in [0, 255], got dtype {images.dtype}.')
  num = len(images) if num is None else num
  if len(images) < num:
    raise JaxgenError(f'{path} holds {len(images)} images, fewer than the {num} asked for; '
                      f'sample more or lower --num.')
  return (np.asarray(images[i:min(i + batch, num)]) for i in range(0, num, batch)), num


def dataset_batches(name: str, split: str, batch: int = 500) -> Iterator[np.ndarray]:
  """uint8 batches of a dataset split (padding dropped)."""
  config = ml_collections.ConfigDict(dict(name=name, random_flip=False))
  data_lib.prepare_for(config)
  for b in data_lib.eval_batches(config, batch_size=batch, split=split, process_count=1, process_index=0):
    yield images_lib.to_uint8(b['image'][b['mask']])


def reference(spec: str, extractor: Extractor, *, max_kept: int = 10_000) -> FeatureSet:
  """The FeatureSet of 'DATASET[:SPLIT]' (default split 'train'), cached, or of an .npz file."""
  if spec.endswith('.npz'):
    batches, _ = npz_batches(spec)
    return extract(extractor, batches, max_kept=max_kept)
  name, _, split = spec.partition(':')
  split = split or 'train'
  path = cache_dir('reference', f'{name}_{split}_{extractor.name}_{max_kept}.npz')
  if os.path.isfile(path):
    with np.load(path, allow_pickle=False) as f:
      if int(f['version']) == REFERENCE_FORMAT_VERSION:
        stats = metrics_lib.FeatureStats(int(f['count']), f['mean'], f['m2'])
        return FeatureSet(stats, f['features'], f['logits'])
  ref = extract(extractor, dataset_batches(name, split), max_kept=max_kept)

  def write(tmp):
    with open(tmp, 'wb') as fh:
      np.savez(fh, version=REFERENCE_FORMAT_VERSION, count=ref.stats.count, mean=ref.stats.mean,
               m2=ref.stats.m2, features=ref.features, logits=ref.logits)

  images_lib.atomic_write(path, write)
  return ref


# ------------------------------------------------------------------- front ends


def default_features(dataset: str) -> str:
  return 'mnist' if dataset == 'mnist' else 'inception'


def evaluate_images(batches: Iterable[np.ndarray], real: str, *, metrics: Sequence[str],
                    features: str, labels: Sequence[int] | None = None) -> dict[str, Any]:
  """Metrics of uint8 image batches against the reference `real` ('DATASET[:SPLIT]' or .npz).

  `labels`: the class each image was asked for (for `accuracy`); may be a list that
  fills while `batches` is consumed.
  """
  metrics = parse_metrics(metrics)
  extractor = get_extractor(features)
  ref = reference(real, extractor) if set(metrics) - set(FAKE_ONLY_METRICS) else None
  fake = extract(extractor, batches)
  values = compute(metrics, fake, ref, extractor,
                   labels=None if labels is None else np.asarray(labels, np.int64))
  return dict(metrics=values, num_fake=fake.stats.count,
              num_real=ref.stats.count if ref else None, real=real if ref else None,
              features=extractor.name, date=datetime.datetime.now().isoformat(timespec='seconds'))


def evaluate_npz(fake: str, real: str, *, metrics: Sequence[str] = ('fid',), features: str | None = None,
                 num: int | None = None, write: bool = True) -> dict[str, Any]:
  """Evaluates an .npz of samples (any library's) and writes `FAKE.eval.json` beside it."""
  metrics = parse_metrics(metrics)
  for name in set(metrics) & set(MODEL_METRICS):
    raise JaxgenError(f'{name} is a measure of a model, not of a sample file; use --workdir.')
  features = features or default_features(real.partition(':')[0])
  batches, count = npz_batches(fake, num)  # checked before any work
  labels = None
  if 'accuracy' in metrics:
    with np.load(fake, allow_pickle=False) as data:
      if 'labels' not in data or data['labels'].shape[:1] != data['images'].shape[:1]:
        raise JaxgenError(f'accuracy needs a "labels" array in {fake} with one class per image '
                          '(the class each image was asked for).')
      labels = data['labels'][:count]
  result = dict(fake=os.path.abspath(fake), **evaluate_images(batches, real, metrics=metrics,
                                                                  features=features, labels=labels))
  if write:
    _write_json(os.path.splitext(fake)[0] + '.eval.json', result)
  return result


def evaluate_run(run: Any, *, metrics: Sequence[str] = ('fid',), num: int = 10_000,
                 features: str | None = None, real: str | None = None, seed: int = 0,
                 batch: int = 256, write: bool = True, iwae_samples: int | None = None,
                 **sample_options: Any) -> dict[str, Any]:
  """Evaluates a loaded run: sample metrics on `num` samples against its dataset's train split
  (or `real`), and `bpd` on the first `num` images of its test split (for the VAE family
  the IWAE bound with `iwae_samples` importance samples; default 1, the ELBO).

  Writes `WORKDIR/eval_step_XXXXXXX_<metrics>.json` (e.g. `eval_step_0003000_fid-kid.json`).
  """
  metrics = parse_metrics(metrics)
  dataset = run.config.data.name
  params_kind = getattr(run, 'params_kind', 'ema')
  result = dict(workdir=os.path.abspath(run.workdir), step=run.step, params=params_kind, seed=seed,
                metrics={})
  sample_metrics = tuple(m for m in metrics if m not in MODEL_METRICS)
  if sample_metrics:
    labels = None
    batches = run.iter_generate(num, seed=seed, batch=batch, progress=True, **sample_options)
    if 'accuracy' in sample_metrics:
      batches, labels = with_requested_labels(run.model, batches, sample_options)
    result.update(sample_options=run.model.sample_options(**sample_options),
                  **evaluate_images(batches, real or f'{dataset}:train', metrics=sample_metrics,
                                    features=features or default_features(dataset), labels=labels))
  if 'bpd' in metrics:
    bpd = likelihood_metrics(run, num=num, batch=batch, seed=seed,
                             **({} if iwae_samples is None else {'num_samples': iwae_samples}))
    result['metrics'].update(bpd.pop('metrics'))
    result.update(bpd)
  if 'recon' in metrics:
    recon = reconstruction_metrics(run, num=num, batch=batch)
    result['metrics'].update(recon.pop('metrics'))
    result.update(recon)
  if write:
    # The metric set is in the name, so evaluating bpd does not overwrite an FID result.
    name = '-'.join(metrics) + (f'-iwae{iwae_samples}' if iwae_samples else '') + \
        ('-raw' if params_kind == 'raw' else '')
    _write_json(os.path.join(run.workdir, f'eval_step_{run.step:07d}_{name}.json'), result)
  return result


def with_requested_labels(model: Any, batches: Iterator[np.ndarray], options: dict[str, Any],
                          required: bool = True) -> tuple[Iterator[np.ndarray], list[int] | None]:
  """`batches` unchanged, and a list that fills with the class each image was asked for.

  Every sampler call draws for `model.requested_labels(len(batch))` (class `label`,
  or cycling from class 0 in each call); a trimmed last batch keeps a prefix of it.
  A model that draws no asked-for classes is an error, or (required=False) gives None.
  """
  requested = getattr(model, 'requested_labels', None)
  if requested is None or requested(1, **options) is None:
    if not required:
      return batches, None
    raise JaxgenError('accuracy needs a model that draws samples of asked-for classes '
                      '(a conditional model, or a diffusion model with --classifier-scale or --prompt).')
  labels: list[int] = []

  def gen():
    for images in batches:
      labels.extend(requested(len(images), **options).tolist())
      yield images
  return gen(), labels


def likelihood_metrics(run: Any, *, num: int, batch: int = 256, seed: int = 0,
                       split: str = 'test', **nll_options: Any) -> dict[str, Any]:
  """The model's NLL bound on the first `num` images of `split`: nats per image and bits/dim.

  Batches have one shape (padded, then masked), spread over the devices, so
  the bound compiles once. `nll_options` go to the model's `nll` (the VAE
  family's `num_samples`).
  """
  if not hasattr(run.model, 'nll'):
    raise JaxgenError(f'the {run.config.family} family has no likelihood; drop bpd from --metrics.')
  if 'num_samples' in nll_options and run.config.family != 'vae':
    raise JaxgenError('--iwae-samples applies to the vae family only.')
  n_dev = run.mesh.devices.size
  batch = -(-min(batch, num) // n_dev) * n_dev
  sharding = mesh_lib.batch_sharding(run.mesh)
  nll_fn = jax.jit(lambda params, b, rng: run.model.nll(params, b, rng, sharding=sharding,
                                                        **nll_options))
  config = ml_collections.ConfigDict(dict(name=run.config.data.name, random_flip=False))
  data_lib.prepare_for(config)
  total, count = 0.0, 0
  rng = jax.random.PRNGKey(seed)
  for i, b in enumerate(data_lib.eval_batches(config, batch_size=batch, split=split,
                                                process_count=1, process_index=0)):
    mask = b.pop('mask')[:max(num - count, 0)]
    nll = np.asarray(jax.device_get(nll_fn(run.params, jax.device_put(b, sharding),
                                           jax.random.fold_in(rng, i))))
    total += float(nll[:len(mask)][mask].sum())
    count += int(mask.sum())
    if count >= num:
      break
  num_dims = int(np.prod(run.model.image_shape))
  nats = total / count
  return dict(metrics={'NLL bound (nats)': nats,
                       'bits/dim': metrics_lib.bits_per_dim(nats, num_dims)},
              num_test=count, test_split=split, **nll_options)


def reconstruction_metrics(run: Any, *, num: int, batch: int = 256,
                           split: str = 'test') -> dict[str, Any]:
  """Reconstruction error of an autoencoder on the first `num` images of `split`.

  Reconstructions are rounded to 8 bits like any output image; MSE is over all
  sub-pixels on the [0, 1] scale, and PSNR (dB) is 10 log10(1 / MSE) of each
  image, averaged over the images.
  """
  if not hasattr(run.model, 'reconstruct'):
    raise JaxgenError(f'the {run.config.family} family does not reconstruct; drop recon from --metrics.')
  n_dev = run.mesh.devices.size
  batch = -(-min(batch, num) // n_dev) * n_dev
  sharding = mesh_lib.batch_sharding(run.mesh)
  recon_fn = jax.jit(run.model.reconstruct)
  config = ml_collections.ConfigDict(dict(name=run.config.data.name, random_flip=False))
  data_lib.prepare_for(config)
  squared, psnr, count = 0.0, 0.0, 0
  for b in data_lib.eval_batches(config, batch_size=batch, split=split, process_count=1,
                                 process_index=0):
    mask = b['mask'][:max(num - count, 0)]
    out = images_lib.to_uint8(jax.device_get(recon_fn(run.params, jax.device_put(b['image'], sharding))))
    real = images_lib.to_uint8(b['image'])
    err = np.square(out.astype(np.float64) / 255.0 - real.astype(np.float64) / 255.0)
    per_image = err.reshape(len(err), -1).mean(-1)[:len(mask)][mask]  # [n]
    squared += float(per_image.sum())
    psnr += float(np.sum(10.0 * np.log10(1.0 / np.maximum(per_image, 1e-10))))
    count += len(per_image)
    if count >= num:
      break
  return dict(metrics={'reconstruction MSE': squared / count, 'PSNR (dB)': psnr / count},
              num_test=count, test_split=split)


def _write_json(path: str, result: dict[str, Any]) -> None:
  result['json'] = path
  images_lib.atomic_write(path, lambda tmp: open(tmp, 'w').write(json.dumps(result, indent=2) + '\n'))


def format_table(result: dict[str, Any]) -> str:
  """A two-column table of the metric values, with what they were computed on."""
  rows = [(k, f'{v:.6g}') for k, v in result['metrics'].items()]
  width = max(len(k) for k, _ in rows)
  lines = [f'{k:<{width}}  {v}' for k, v in rows]
  if 'num_fake' in result:
    lines.append(f'({result["num_fake"]} samples'
                 + (f' vs {result["num_real"]} of {result["real"]}' if result.get('real') else '')
                 + f'; features: {result["features"]})')
  if 'num_test' in result:
    measured = [name for name, key in (('bits/dim', 'bits/dim'), ('reconstruction error', 'PSNR (dB)'))
                if key in result['metrics']]
    lines.append(f'({" and ".join(measured)} on {result["num_test"]} images of the '
                 f'{result["test_split"]} split)')
  return '\n'.join(lines)
