"""What a model needs to know about its dataset before any of it is read.

Kept free of TFDS and grain, so that building a model (sampling a trained run,
benchmarking on a machine without the input stack) never imports them.
"""

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model needs to know about its data before any of it is read."""

  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int | None  # None: no labels worth conditioning on (a flat image folder)
  num_train_examples: int


FIXED_SPECS = {
    'mnist': DatasetSpec((28, 28, 1), 10, 60000),
    'cifar10': DatasetSpec((32, 32, 3), 10, 50000),
}


def dataset_spec(data_config: ml_collections.ConfigDict) -> DatasetSpec:
  """Image shape, class count and train size of `data_config`'s dataset, without preparing it.

  MNIST and CIFAR-10 are known without reading anything; an 'image_folder' is
  listed (JaxgenError if it is missing or has no images), which needs the input
  stack. Unknown names: JaxgenError naming the known ones.
  """
  spec = FIXED_SPECS.get(getattr(data_config, 'name', None))
  if spec is not None:
    return spec
  from jaxgen.data import pipeline  # pylint: disable=g-import-not-at-top (TFDS, grain)
  return pipeline.folder_spec(data_config)
