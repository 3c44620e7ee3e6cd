"""Tests of jaxgen.data: the three TFDS builders, `prepare`, and the grain pipelines.

Real MNIST is prepared once per module from the manual files in
$JAXGEN_MANUAL_DIR (or `<repo>/../shared/data`); those tests are skipped when
the files are absent. Everything else runs on tiny data the tests write. No
test touches the network: the connectivity probe is patched where it matters.
"""

import io
import os
import pathlib
import pickle
import tarfile
import tempfile

import ml_collections
import numpy as np
from PIL import Image
import pytest

from jaxgen import data
from jaxgen.data import builders
from jaxgen.errors import JaxgenError

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _manual_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get('JAXGEN_MANUAL_DIR') or _REPO.parent / 'shared' / 'data')


def _config(name: str, **kwargs) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'name': name, 'random_flip': False, **kwargs})


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(n)]


@pytest.fixture(scope='module')
def mnist_dir(tmp_path_factory) -> str:
  """A data dir with real MNIST prepared in it (from the manual files, never the network)."""
  manual = _manual_root()
  if not all((manual / 'mnist' / f).is_file() for f in builders.MNIST_FILES.values()):
    pytest.skip(f'MNIST manual files not found in {manual / "mnist"}')
  data_dir = str(tmp_path_factory.mktemp('mnist_data'))
  data.prepare('mnist', data_dir=data_dir, manual_dir=str(manual))
  return data_dir


def _train(data_dir: str, *, flip: bool = False, **kwargs):
  cfg = _config('mnist', random_flip=flip)
  kwargs.setdefault('global_batch_size', 8)
  kwargs.setdefault('seed', 0)
  return data.train_batches(cfg, data_dir=data_dir, **kwargs)


# ---------------------------------------------------------------------------- MNIST builder


def test_mnist_prepared(mnist_dir):
  builder = data.prepare('mnist', data_dir=mnist_dir)
  # `prepare` looks for prepared files there before it makes a builder.
  assert builders.variant_dir('mnist', mnist_dir) == builder.data_dir
  train, test = builder.as_data_source('train'), builder.as_data_source('test')
  assert (len(train), len(test)) == (60000, 10000)
  first = train[0]
  assert first['image'].dtype == np.uint8 and first['image'].shape == (28, 28, 1)
  # The files' order is kept: these are the first labels of the original files.
  assert [int(train[i]['label']) for i in range(5)] == [5, 0, 4, 1, 9]
  assert [int(test[i]['label']) for i in range(5)] == [7, 2, 1, 0, 4]
  assert first['image'].max() == 255 and first['image'].min() == 0


def test_prepare_is_idempotent(mnist_dir):
  files = sorted(pathlib.Path(mnist_dir).rglob('*'))
  stamps = [f.stat().st_mtime_ns for f in files]
  # No manual dir now: being prepared, it must need none (and must not download).
  data.prepare('mnist', data_dir=mnist_dir, manual_dir='/nonexistent')
  assert sorted(pathlib.Path(mnist_dir).rglob('*')) == files
  assert [f.stat().st_mtime_ns for f in files] == stamps


def test_dataset_spec():
  assert data.dataset_spec(_config('mnist')) == data.DatasetSpec((28, 28, 1), 10, 60000)
  assert data.dataset_spec(_config('cifar10')) == data.DatasetSpec((32, 32, 3), 10, 50000)
  with pytest.raises(JaxgenError, match='mnist, cifar10, image_folder'):
    data.dataset_spec(_config('imagenet'))


# ---------------------------------------------------------------------------- missing data


@pytest.mark.parametrize('name, files', [
    ('mnist', list(builders.MNIST_FILES.values())),
    ('cifar10', [builders.CIFAR10_FILE]),
])
def test_missing_dataset_raises_before_writing(tmp_path, monkeypatch, name, files):
  data_dir, manual, tmp = tmp_path / 'data', tmp_path / 'manual', tmp_path / 'tmp'
  for d in (data_dir, manual / name, tmp):
    d.mkdir(parents=True)
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp))  # TFDS makes temp dirs for new builders
  monkeypatch.setenv('JAXGEN_DATA_DIR', str(data_dir))
  monkeypatch.setenv('JAXGEN_MANUAL_DIR', str(manual))
  probed = []
  monkeypatch.setattr(builders, 'can_download', lambda url: probed.append(url) or False)
  with pytest.raises(JaxgenError) as e:
    data.prepare(name)
  message = str(e.value)
  assert 'JAXGEN_MANUAL_DIR' in message and str(manual / name) in message
  assert str(data_dir) in message
  assert all(f in message for f in files)
  assert probed  # it did ask whether downloading was possible
  assert list(data_dir.iterdir()) == [] and list(tmp.iterdir()) == []  # nothing written


def test_unknown_dataset_and_bad_folder(tmp_path):
  with pytest.raises(JaxgenError, match='known datasets are mnist, cifar10, image_folder'):
    data.prepare('imagenet', data_dir=str(tmp_path / 'd'))
  with pytest.raises(JaxgenError, match='does not exist'):
    data.prepare('image_folder', data_dir=str(tmp_path / 'd'), folder=str(tmp_path / 'nope'),
                 image_size=8)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(JaxgenError, match='contains no images'):
    data.prepare('image_folder', data_dir=str(tmp_path / 'd'), folder=str(tmp_path / 'empty'),
                 image_size=8)
  with pytest.raises(JaxgenError, match='image_size'):
    data.prepare('image_folder', data_dir=str(tmp_path / 'd'), folder=str(tmp_path), image_size=None)
  assert not (tmp_path / 'd').exists()


# ---------------------------------------------------------------------------- pipeline


def test_scaling_is_exact(mnist_dir):
  source = data.prepare('mnist', data_dir=mnist_dir).as_data_source('test')
  batch = next(data.eval_batches(_config('mnist'), batch_size=4, data_dir=mnist_dir))
  raw = np.stack([source[i]['image'] for i in range(4)])
  assert batch['image'].dtype == np.float32 and batch['image'].shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(batch['image'], raw.astype(np.float32) / 127.5 - 1)
  assert np.all(batch['image'][raw == 0] == -1.0) and np.all(batch['image'][raw == 255] == 1.0)
  train = next(_train(mnist_dir, global_batch_size=64))
  assert train['image'].min() == -1.0 and train['image'].max() == 1.0
  assert train['label'].dtype == np.int32 and train['label'].shape == (64,)


def test_same_seed_same_stream_other_seed_other_stream(mnist_dir):
  a, b, c = (_take(_train(mnist_dir, seed=s, flip=True), 3) for s in (7, 7, 8))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_resume_from_stream_position(mnist_dir):
  fresh = _take(_train(mnist_dir, seed=3, flip=True, global_batch_size=16), 6)
  resumed = _take(_train(mnist_dir, seed=3, flip=True, global_batch_size=16, start_example=4 * 16), 2)
  for x, y in zip(fresh[4:], resumed):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_resume_with_another_batch_size_continues_the_stream(mnist_dir):
  # 3 batches of 16 = 48 examples, then batches of 24 from position 48: together
  # exactly the first 96 examples of the stream, flips included.
  stream = _take(_train(mnist_dir, seed=3, flip=True, global_batch_size=32), 3)
  head = _take(_train(mnist_dir, seed=3, flip=True, global_batch_size=16), 3)
  tail = _take(_train(mnist_dir, seed=3, flip=True, global_batch_size=24, start_example=48), 2)
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([b[key] for b in head + tail]),
                                  np.concatenate([b[key] for b in stream]))


def test_processes_split_the_global_batch(mnist_dir):
  whole = _take(_train(mnist_dir, global_batch_size=8, flip=True, process_count=1,
                       process_index=0), 3)
  parts = [_take(_train(mnist_dir, global_batch_size=8, flip=True, process_count=2,
                        process_index=p), 3) for p in (0, 1)]
  for step in range(3):
    p0, p1 = parts[0][step], parts[1][step]
    assert p0['image'].shape == (4, 28, 28, 1)
    assert not {im.tobytes() for im in p0['image']} & {im.tobytes() for im in p1['image']}
    for key in ('image', 'label'):
      np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), whole[step][key])
  # A resumed process 1 sees what it would have seen.
  resumed = next(_train(mnist_dir, global_batch_size=8, flip=True, process_count=2,
                        process_index=1, start_example=2 * 8))
  np.testing.assert_array_equal(resumed['image'], parts[1][2]['image'])


def test_flips_only_mirror(mnist_dir):
  plain = _take(_train(mnist_dir, seed=5, global_batch_size=32), 2)
  flipped = _take(_train(mnist_dir, seed=5, global_batch_size=32, flip=True), 2)
  mirrored = 0
  for step, (x, y) in enumerate(zip(plain, flipped)):
    np.testing.assert_array_equal(x['label'], y['label'])
    expected = data.flip_mask(5, np.arange(step * 32, (step + 1) * 32))
    for i in range(32):
      want = x['image'][i, :, ::-1] if expected[i] else x['image'][i]
      np.testing.assert_array_equal(y['image'][i], want)
    mirrored += expected.sum()
  assert 0 < mirrored < 64


def test_bad_batch_size(mnist_dir):
  with pytest.raises(JaxgenError, match='multiple of the process count'):
    _train(mnist_dir, global_batch_size=9, process_count=2, process_index=0)


def test_eval_batches_pad_and_mask(mnist_dir):
  batches = list(data.eval_batches(_config('mnist'), batch_size=3000, data_dir=mnist_dir))
  assert len(batches) == 4
  assert [int(b['mask'].sum()) for b in batches] == [3000, 3000, 3000, 1000]
  last = batches[-1]
  assert np.all(last['image'][1000:] == -1.0) and np.all(last['label'][1000:] == 0)
  assert list(batches[0]['label'][:5]) == [7, 2, 1, 0, 4]
  halves = [list(data.eval_batches(_config('mnist'), batch_size=3000, data_dir=mnist_dir,
                                   process_index=p, process_count=2)) for p in (0, 1)]
  assert len(halves[0]) == len(halves[1]) == 4
  for k in range(4):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]),
                                    batches[k][key])
  with pytest.raises(JaxgenError, match="no split 'validation'"):
    data.eval_batches(_config('mnist'), batch_size=8, split='validation', data_dir=mnist_dir)


# ---------------------------------------------------------------------------- CIFAR-10 builder


def _write_fake_cifar10(path: pathlib.Path, per_batch: int = 2) -> dict[str, dict]:
  """Writes a tiny tarball in the official layout; returns its batches by name."""
  rng = np.random.default_rng(0)
  batches = {}
  with tarfile.open(path, 'w:gz') as tar:
    for name in [*builders.CIFAR10_TRAIN_BATCHES, *builders.CIFAR10_TEST_BATCHES]:
      batch = {b'batch_label': name.encode(),
               b'labels': [int(x) for x in rng.integers(0, 10, per_batch)],
               b'data': rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
               b'filenames': [f'{name}_{i}.png'.encode() for i in range(per_batch)]}
      payload = pickle.dumps(batch, protocol=2)
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
      batches[name] = batch
  return batches


def test_cifar10_builder_on_fake_tarball(tmp_path, monkeypatch):
  (tmp_path / 'manual' / 'cifar10').mkdir(parents=True)
  batches = _write_fake_cifar10(tmp_path / 'manual' / 'cifar10' / builders.CIFAR10_FILE)
  monkeypatch.setattr(builders, 'can_download', lambda url: pytest.fail('probed the network'))
  builder = data.prepare('cifar10', data_dir=str(tmp_path / 'data'),
                         manual_dir=str(tmp_path / 'manual'))
  train, test = builder.as_data_source('train'), builder.as_data_source('test')
  assert (len(train), len(test)) == (10, 2)
  expected = [(name, i) for name in builders.CIFAR10_TRAIN_BATCHES for i in range(2)]
  for k, (name, i) in enumerate(expected):
    image, row = train[k]['image'], batches[name][b'data'][i]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert int(train[k]['label']) == batches[name][b'labels'][i]
    # Rows are CHW: the byte of pixel (h, w), channel c is at c*1024 + h*32 + w.
    for h, w, c in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (0, 0, 1), (31, 30, 2), (5, 17, 1)]:
      assert image[h, w, c] == row[c * 1024 + h * 32 + w]
    np.testing.assert_array_equal(image, row.reshape(3, 32, 32).transpose(1, 2, 0))
  np.testing.assert_array_equal(
      test[1]['image'], batches['test_batch'][b'data'][1].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_unpickler_refuses_code():
  payload = pickle.dumps({b'data': os.getcwd}, protocol=2)  # a global that is not numpy
  with pytest.raises(pickle.UnpicklingError):
    builders._ArrayUnpickler(io.BytesIO(payload), encoding='bytes').load()


# ---------------------------------------------------------------------------- image folder


def _write_png(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_image_folder_builder(tmp_path):
  folder = tmp_path / 'images'
  # A tall image whose middle 8x8 square is the only part a center crop keeps.
  tall = np.zeros((16, 8, 3), np.uint8)
  tall[:4], tall[4:12], tall[12:] = 10, 200, 30
  _write_png(folder / 'b_dogs' / 'tall.png', tall)
  _write_png(folder / 'a_cats' / 'x.png', np.full((20, 30, 3), 77, np.uint8))
  _write_png(folder / 'a_cats' / 'y.png', np.full((8, 8), 120, np.uint8))  # grayscale file
  (folder / 'a_cats' / 'notes.txt').write_text('not an image')

  data_dir = str(tmp_path / 'data')
  cfg = _config('image_folder', folder=str(folder), image_size=8, channels=3)
  assert data.dataset_spec(cfg) == data.DatasetSpec((8, 8, 3), 2, 3)
  builder = data.prepare_for(cfg, data_dir=data_dir)
  assert builders.variant_dir('image_folder', data_dir, builder.builder_config) == builder.data_dir
  source = builder.as_data_source('train')
  assert len(source) == 3
  records = [source[i] for i in range(3)]
  assert [int(r['label']) for r in records] == [0, 0, 1]  # sorted subfolders: a_cats, b_dogs
  assert all(r['image'].shape == (8, 8, 3) and r['image'].dtype == np.uint8 for r in records)
  assert np.all(records[0]['image'] == 77) and np.all(records[1]['image'] == 120)
  np.testing.assert_array_equal(records[2]['image'], tall[4:12])
  assert builder.info.features['label'].names == ['a_cats', 'b_dogs']

  # Another size or channel count is another dataset, prepared beside the first.
  gray = data.prepare('image_folder', data_dir=data_dir, folder=str(folder), image_size=4,
                      channels=1)
  assert gray.data_dir != builder.data_dir
  assert gray.as_data_source('train')[0]['image'].shape == (4, 4, 1)

  batch = next(data.train_batches(cfg, global_batch_size=2, seed=0, data_dir=data_dir))
  assert batch['image'].shape == (2, 8, 8, 3)

  # Adding an image after preparation is caught rather than silently ignored.
  _write_png(folder / 'b_dogs' / 'new.png', tall)
  with pytest.raises(JaxgenError, match='changed since it was prepared'):
    data.prepare_for(cfg, data_dir=data_dir)


def test_image_folder_flat_and_epochs(tmp_path):
  folder = tmp_path / 'flat'
  for v in range(10):
    _write_png(folder / f'{v}.png', np.full((6, 6, 3), v, np.uint8))
  cfg = _config('image_folder', folder=str(folder), image_size=6, channels=3)
  assert data.dataset_spec(cfg) == data.DatasetSpec((6, 6, 3), None, 10)
  batches = _take(data.train_batches(cfg, global_batch_size=5, seed=1,
                                     data_dir=str(tmp_path / 'data')), 6)
  assert all(np.all(b['label'] == 0) for b in batches)
  values = [int(round((im[0, 0, 0] + 1) * 127.5)) for b in batches for im in b['image']]
  epochs = [values[i:i + 10] for i in range(0, 30, 10)]
  assert all(sorted(e) == list(range(10)) for e in epochs)  # each epoch sees every image once
  assert len({tuple(e) for e in epochs}) > 1  # and is reshuffled
