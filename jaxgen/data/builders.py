"""TFDS builders for MNIST, CIFAR-10 and a folder of images, written as array_record.

All three builders run without TensorFlow: images are stored as
`tfds.features.Tensor` with ZLIB encoding (the `Image` feature needs TF) and
read back through `builder.as_data_source(split)`, a random-access source whose
items are dicts of numpy arrays: {'image': uint8 [H, W, C], 'label': int64 []}.

Where the data comes from:
  * `$JAXGEN_MANUAL_DIR/mnist/` holding the four original idx `.gz` files, and
    `$JAXGEN_MANUAL_DIR/cifar10/cifar-10-python.tar.gz`; otherwise the files are
    downloaded from their official hosts.
  * Prepared files go to `$JAXGEN_DATA_DIR` (default: TFDS's data dir,
    `~/tensorflow_datasets`).

`prepare` is the entry point: it is idempotent, and when a dataset is neither
prepared nor obtainable it raises `JaxgenError` before writing anything.
"""

import dataclasses
import gzip
import hashlib
import os
import pickle
import socket
import tarfile
from typing import Any, Iterator, Sequence
import urllib.parse

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.errors import JaxgenError

MANUAL_DIR_ENV = 'JAXGEN_MANUAL_DIR'
DATA_DIR_ENV = 'JAXGEN_DATA_DIR'

MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
MNIST_FILES = {
    'train_images': 'train-images-idx3-ubyte.gz',
    'train_labels': 'train-labels-idx1-ubyte.gz',
    'test_images': 't10k-images-idx3-ubyte.gz',
    'test_labels': 't10k-labels-idx1-ubyte.gz',
}
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
CIFAR10_FILE = 'cifar-10-python.tar.gz'
CIFAR10_TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
CIFAR10_TEST_BATCHES = ('test_batch',)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')

# idx magic numbers: 0x00000801 = ubyte vector (labels), 0x00000803 = ubyte 3-tensor (images).
_IDX_LABELS_MAGIC = 2049
_IDX_IMAGES_MAGIC = 2051

_VERSION = tfds.core.Version('1.0.0')
# TFDS derives `code_path` from the top-level package, which fails when `jaxgen` is
# imported as a namespace package (as some editable installs do); it only uses it to
# look for a checksums file beside the builder, which we do not ship.
_CODE_PATH = epath.Path(__file__)


def data_dir_root(data_dir: str | None = None) -> str:
  """Where prepared datasets live: `data_dir`, else $JAXGEN_DATA_DIR, else TFDS's default."""
  path = data_dir or os.environ.get(DATA_DIR_ENV) or tfds.core.constants.DATA_DIR
  return os.path.abspath(os.path.expanduser(os.fspath(path)))


def manual_dir_root(manual_dir: str | None = None) -> str | None:
  """Root of manual downloads: `manual_dir`, else $JAXGEN_MANUAL_DIR, else None."""
  path = manual_dir or os.environ.get(MANUAL_DIR_ENV)
  return os.path.abspath(os.path.expanduser(os.fspath(path))) if path else None


def can_download(url: str, timeout: float = 3.0) -> bool:
  """Whether `url` looks downloadable: a TCP connection to its host, port 443, opens in `timeout` s."""
  host = urllib.parse.urlparse(url).hostname
  try:
    with socket.create_connection((host, 443), timeout=timeout):
      return True
  except OSError:
    return False


def _manual_paths(dl_manager: tfds.download.DownloadManager,
                  names: dict[str, str]) -> dict[str, str] | None:
  """`names` resolved in the manual dir, or None unless every file is there."""
  try:
    # TFDS raises (AssertionError) when the manual dir is unset, missing or empty.
    root = os.fspath(dl_manager.manual_dir)
  except (AssertionError, ValueError):
    return None
  paths = {k: os.path.join(root, f) for k, f in names.items()}
  return paths if all(os.path.isfile(p) for p in paths.values()) else None


def _features(shape: tuple[int, int, int], labels: tfds.features.ClassLabel) -> Any:
  return tfds.features.FeaturesDict({
      # ZLIB-encoded raw tensors: `tfds.features.Image` would need TensorFlow to decode.
      'image': tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
      'label': labels,
  })


# ---------------------------------------------------------------------------- MNIST


def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads a gzipped idx file; uint8 [N] for labels (2049), [N, 28, 28] for images (2051)."""
  with gzip.open(path, 'rb') as f:
    data = f.read()
  ndim = magic & 0xFF
  found = int.from_bytes(data[:4], 'big')
  if found != magic:
    raise JaxgenError(f'{path} is not an idx file of the expected kind (magic number {found}, '
                      f'expected {magic}); replace it with the original MNIST file.')
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)):
    raise JaxgenError(f'{path} is truncated ({len(data) - offset} bytes of data for shape '
                      f'{shape}); replace it with the original MNIST file.')
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def check_idx_header(path: str, magic: int) -> None:
  """Raises JaxgenError unless `path` is gzip with the idx `magic` number (reads 4 bytes)."""
  try:
    with gzip.open(path, 'rb') as f:
      found = int.from_bytes(f.read(4), 'big')
  except (OSError, EOFError):
    found = None
  if found != magic:
    raise JaxgenError(f'{path} is not a gzipped MNIST idx file (magic {found}, expected '
                      f'{magic}); replace it with the original file.')


class JaxgenMnist(tfds.core.GeneratorBasedBuilder):
  """MNIST from the four original idx files: train 60000, test 10000, image uint8 [28, 28, 1]."""

  name = 'jaxgen_mnist'
  VERSION = _VERSION
  code_path = _CODE_PATH
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {", ".join(MNIST_FILES.values())} in ${MANUAL_DIR_ENV}/mnist/, or let them be '
      f'downloaded from {MNIST_URL}.')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='MNIST handwritten digits, parsed from the original idx files.',
        features=_features((28, 28, 1), tfds.features.ClassLabel(num_classes=10)),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the files' order; the input pipeline shuffles
        homepage='https://yann.lecun.com/exdb/mnist/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    paths = _manual_paths(dl_manager, MNIST_FILES)
    if paths is None:
      paths = dl_manager.download({k: MNIST_URL + f for k, f in MNIST_FILES.items()})
    paths = {k: os.fspath(p) for k, p in paths.items()}
    return {
        'train': self._generate_examples(paths['train_images'], paths['train_labels']),
        'test': self._generate_examples(paths['test_images'], paths['test_labels']),
    }

  def _generate_examples(self, images_path: str, labels_path: str) -> Iterator[tuple[int, dict]]:
    images = read_idx(images_path, _IDX_IMAGES_MAGIC)  # [N, 28, 28]
    labels = read_idx(labels_path, _IDX_LABELS_MAGIC)  # [N]
    if len(images) != len(labels):
      raise JaxgenError(f'{images_path} has {len(images)} images but {labels_path} has '
                        f'{len(labels)} labels; replace them with the original MNIST files.')
    for i in range(len(images)):
      yield i, {'image': images[i][..., None], 'label': int(labels[i])}


# ---------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only builtins and numpy arrays, so a tampered tarball cannot run code."""

  _ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
      ('numpy', 'ndarray'), ('numpy', 'dtype'),
      ('_codecs', 'encode'),  # how protocol-2 pickles written by Python 3 rebuild bytes
  }

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f'{module}.{name} is not allowed in a CIFAR-10 batch file')


def read_cifar10_batches(tar_path: str, batch_names: Sequence[str]
                         ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """Yields (batch name, images uint8 [N, 32, 32, 3], labels int64 [N]) in `batch_names` order."""
  found = {}
  with tarfile.open(tar_path, 'r:gz') as tar:
    for member in tar:
      base = os.path.basename(member.name)
      if member.isfile() and base in batch_names and base not in found:
        with tar.extractfile(member) as f:
          found[base] = _ArrayUnpickler(f, encoding='bytes').load()
  missing = [b for b in batch_names if b not in found]
  if missing:
    raise JaxgenError(f'{tar_path} lacks cifar-10-batches-py/{missing[0]}; replace it with the '
                      f'original {CIFAR10_FILE}.')
  for name in batch_names:
    batch = found[name]
    # Rows are 3072 bytes: the 1024 red, then green, then blue values of a 32x32 image (CHW).
    images = np.asarray(batch[b'data'], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(batch[b'labels'], np.int64)
    yield name, images, labels


class JaxgenCifar10(tfds.core.GeneratorBasedBuilder):
  """CIFAR-10 from the official python tarball: train 50000, test 10000, image uint8 [32, 32, 3]."""

  name = 'jaxgen_cifar10'
  VERSION = _VERSION
  code_path = _CODE_PATH
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Put {CIFAR10_FILE} in ${MANUAL_DIR_ENV}/cifar10/, or let it be downloaded from '
      f'{CIFAR10_URL}.')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='CIFAR-10, parsed from the official python tarball.',
        features=_features((32, 32, 3), tfds.features.ClassLabel(names=[
            'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
            'truck'])),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the files' order; the input pipeline shuffles
        homepage='https://www.cs.toronto.edu/~kriz/cifar.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    paths = _manual_paths(dl_manager, {'tar': CIFAR10_FILE})
    tar_path = os.fspath(paths['tar'] if paths else dl_manager.download(CIFAR10_URL))
    return {
        'train': self._generate_examples(tar_path, CIFAR10_TRAIN_BATCHES),
        'test': self._generate_examples(tar_path, CIFAR10_TEST_BATCHES),
    }

  def _generate_examples(self, tar_path: str, batch_names: Sequence[str]) -> Iterator[tuple[int, dict]]:
    # Integer keys: with shuffling disabled TFDS orders the examples by key.
    key = 0
    for name, images, labels in read_cifar10_batches(tar_path, batch_names):
      if len(images) != len(labels):
        raise JaxgenError(f'{tar_path}: {name} has {len(images)} images but {len(labels)} '
                          f'labels; replace it with the original {CIFAR10_FILE}.')
      for i in range(len(images)):
        yield key, {'image': images[i], 'label': int(labels[i])}
        key += 1


# ---------------------------------------------------------------------------- image folder


def list_image_folder(folder: str) -> tuple[list[tuple[str, int]], list[str]]:
  """Lists a folder of images: ([(path relative to folder, label)], class names).

  Images directly in `folder` get label 0 and no class names; otherwise every
  subfolder is a class (label = its index in sorted order) whose images are
  found recursively. Hidden files and folders are skipped. Raises JaxgenError
  for a missing folder, one without images, or one that mixes top-level images
  with class subfolders.
  """
  if not os.path.isdir(folder):
    raise JaxgenError(f'image folder {folder} does not exist; set data.folder to a directory of '
                      f'images ({", ".join(IMAGE_EXTENSIONS)}).')

  def is_image(name: str) -> bool:
    return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)

  def walk(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      found.extend(os.path.relpath(os.path.join(dirpath, f), folder)
                   for f in sorted(filenames) if is_image(f))
    return found

  entries = sorted(os.listdir(folder))
  top = [e for e in entries if is_image(e) and os.path.isfile(os.path.join(folder, e))]
  subdirs = [e for e in entries if not e.startswith('.') and os.path.isdir(os.path.join(folder, e))]
  classes = [(d, walk(os.path.join(folder, d))) for d in subdirs]
  classes = [(d, files) for d, files in classes if files]  # folders without images are no class
  if top and classes:
    raise JaxgenError(f'image folder {folder} has images both at its top level and in class '
                      f'subfolders ({classes[0][0]}/); move the top-level images into a subfolder.')
  if classes:
    items = [(path, label) for label, (_, files) in enumerate(classes) for path in files]
    return items, [d for d, _ in classes]
  if not top:
    raise JaxgenError(f'image folder {folder} contains no images; add '
                      f'{"/".join(IMAGE_EXTENSIONS)} files to it or to class subfolders.')
  return [(path, 0) for path in top], []


def load_image(path: str, image_size: int, channels: int) -> np.ndarray:
  """Reads an image, center-crops it to a square, resizes it: uint8 [S, S, channels]."""
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top

  with Image.open(path) as im:
    im = ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
    im = im.convert('RGB' if channels == 3 else 'L')
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != image_size:
      # LANCZOS antialiases when shrinking, which BICUBIC alone does poorly on large photos.
      im = im.resize((image_size, image_size), Image.Resampling.LANCZOS)
    array = np.asarray(im, np.uint8)
  return array.reshape(image_size, image_size, channels)


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
  """One (folder, image_size, channels); its name is a hash of them, so prepared files never mix."""

  folder: str = ''
  image_size: int = 0
  channels: int = 3


def image_folder_config(folder: str | None, image_size: int | None,
                        channels: int = 3) -> ImageFolderConfig:
  """Validates the options and names the config `<size>px<channels>c_<hash of all three>`."""
  if not folder:
    raise JaxgenError("dataset 'image_folder' needs a folder; set data.folder to a directory of "
                      'images.')
  if not isinstance(image_size, int) or image_size <= 0:
    raise JaxgenError(f"dataset 'image_folder' needs a positive integer image_size, got "
                      f'{image_size!r}; set data.image_size.')
  if channels not in (1, 3):
    raise JaxgenError(f'data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.')
  folder = os.path.realpath(os.path.expanduser(folder))
  digest = hashlib.sha256(f'{folder}\0{image_size}\0{channels}'.encode()).hexdigest()[:12]
  config = ImageFolderConfig(name=f'{image_size}px{channels}c_{digest}', folder=folder,
                             image_size=image_size, channels=channels,
                             description=f'{folder} at {image_size}x{image_size}x{channels}')
  # TFDS insists that a config it knows by name is always the same object.
  return _IMAGE_FOLDER_CONFIGS.setdefault(config.name, config)


# Configs made in this process, by name; see `JaxgenImageFolder.get_builder_config`.
_IMAGE_FOLDER_CONFIGS: dict[str, ImageFolderConfig] = {}


class JaxgenImageFolder(tfds.core.GeneratorBasedBuilder):
  """The user's own images, center-cropped and resized: split train, image uint8 [S, S, C]."""

  name = 'jaxgen_image_folder'
  VERSION = _VERSION
  code_path = _CODE_PATH
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = []  # every config is made at run time: see `image_folder_config`

  @classmethod
  def get_builder_config(cls, name: str, version: Any = None) -> ImageFolderConfig | None:
    # Knowing the run-time configs spares a "custom data configuration" warning per construction.
    del version
    return _IMAGE_FOLDER_CONFIGS.get(name)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    _, class_names = list_image_folder(cfg.folder)
    labels = (tfds.features.ClassLabel(names=class_names) if class_names
              else tfds.features.ClassLabel(num_classes=1))
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Images from {cfg.folder}, center-cropped and resized.',
        features=_features((cfg.image_size, cfg.image_size, cfg.channels), labels),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,  # keep the files' order; the input pipeline shuffles
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the images are local
    return {'train': self._generate_examples()}

  def _generate_examples(self) -> Iterator[tuple[int, dict]]:
    cfg = self.builder_config
    items, _ = list_image_folder(cfg.folder)
    for key, (relpath, label) in enumerate(items):
      path = os.path.join(cfg.folder, relpath)
      try:
        image = load_image(path, cfg.image_size, cfg.channels)
      except OSError as e:  # PIL's UnidentifiedImageError is an OSError
        raise JaxgenError(f'cannot read image {path} ({e}); fix or remove it.') from e
      yield key, {'image': image, 'label': label}


# ---------------------------------------------------------------------------- prepare

BUILDERS = {'mnist': JaxgenMnist, 'cifar10': JaxgenCifar10, 'image_folder': JaxgenImageFolder}


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where a downloadable dataset's raw files come from."""
  subdir: str  # under the manual dir root
  files: tuple[str, ...]
  url: str  # probed for connectivity


_SOURCES = {
    'mnist': _Source('mnist', tuple(MNIST_FILES.values()), MNIST_URL),
    'cifar10': _Source('cifar10', (CIFAR10_FILE,), CIFAR10_URL),
}


def _check_known(name: str) -> None:
  if name not in BUILDERS:
    raise JaxgenError(f'unknown dataset {name!r}; known datasets are {", ".join(BUILDERS)}.')


def _builder_kwargs(name: str, data_dir: str | None, folder: str | None, image_size: int | None,
                    channels: int) -> dict[str, Any]:
  _check_known(name)
  kwargs = dict(data_dir=data_dir_root(data_dir), file_format='array_record')
  if name == 'image_folder':
    config = image_folder_config(folder, image_size, channels)
    list_image_folder(config.folder)  # a clear JaxgenError before TFDS calls `_info`
    kwargs['config'] = config
  return kwargs


def variant_dir(name: str, data_dir: str, config: tfds.core.BuilderConfig | None = None) -> str:
  """Where TFDS keeps a prepared dataset: <data_dir>/<builder name>[/<config>]/<version>."""
  parts = [data_dir, BUILDERS[name].name] + ([config.name] if config else []) + [str(_VERSION)]
  return os.path.join(*parts)


def make_builder(name: str, *, data_dir: str | None = None, folder: str | None = None,
                 image_size: int | None = None, channels: int = 3) -> tfds.core.DatasetBuilder:
  """The builder for `name` in the resolved data dir, without preparing anything."""
  return BUILDERS[name](**_builder_kwargs(name, data_dir, folder, image_size, channels))


def prepare(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
            folder: str | None = None, image_size: int | None = None,
            channels: int = 3) -> tfds.core.DatasetBuilder:
  """Prepares dataset `name` ('mnist', 'cifar10' or 'image_folder') as array_record files.

  Returns the prepared builder; read it with `builder.as_data_source(split)`.
  Already prepared: returns at once, writing nothing. Otherwise the raw files
  come from `<manual_dir>/<name>/` when all are there, else are downloaded.
  Raises JaxgenError, before anything is written, for an unknown name, bad
  image-folder options, or a dataset that is neither prepared nor obtainable.
  """
  kwargs = _builder_kwargs(name, data_dir, folder, image_size, channels)
  prepared = os.path.isfile(os.path.join(
      variant_dir(name, kwargs['data_dir'], kwargs.get('config')), 'dataset_info.json'))
  download_config = tfds.download.DownloadConfig()
  # Decided before the builder exists: constructing an unprepared one already makes a temp dir.
  if not prepared and name in _SOURCES:
    source = _SOURCES[name]
    root = manual_dir_root(manual_dir)
    source_dir = os.path.join(root, source.subdir) if root else None
    have = source_dir and all(os.path.isfile(os.path.join(source_dir, f)) for f in source.files)
    if have:
      download_config = tfds.download.DownloadConfig(manual_dir=source_dir)
      if name == 'mnist':  # cheap (4 bytes each), and saves a half-written dataset
        for key, f in MNIST_FILES.items():
          check_idx_header(os.path.join(source_dir, f),
                           _IDX_IMAGES_MAGIC if key.endswith('images') else _IDX_LABELS_MAGIC)
    elif not can_download(source.url):
      looked = f'looked in {source_dir}' if source_dir else f'${MANUAL_DIR_ENV} is not set'
      raise JaxgenError(
          f'Dataset {name!r} is not prepared in {kwargs["data_dir"]} and cannot be downloaded: '
          f'put {", ".join(source.files)} in ${MANUAL_DIR_ENV}/{source.subdir}/ ({looked}).')

  builder = BUILDERS[name](**kwargs)
  if prepared and builder.is_prepared():
    if name == 'image_folder':
      _check_folder_unchanged(builder)
    return builder
  builder.download_and_prepare(download_config=download_config)
  return builder


def _check_folder_unchanged(builder: tfds.core.DatasetBuilder) -> None:
  """Raises JaxgenError when images were added or removed since the folder was prepared."""
  cfg = builder.builder_config
  items, class_names = list_image_folder(cfg.folder)
  prepared = builder.info.splits['train'].num_examples
  # A flat folder is prepared with one class, which ClassLabel names '0'.
  if prepared != len(items) or builder.info.features['label'].names != (class_names or ['0']):
    raise JaxgenError(f'image folder {cfg.folder} changed since it was prepared ({prepared} -> '
                      f'{len(items)} images); delete {builder.data_dir} to prepare it again.')
