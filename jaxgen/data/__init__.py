"""Datasets as TFDS array_record files, read through grain pipelines.

Set $JAXGEN_MANUAL_DIR to a folder holding `mnist/` (the four original idx
`.gz` files) and/or `cifar10/cifar-10-python.tar.gz`; prepared files go to
$JAXGEN_DATA_DIR (default: TFDS's data dir). Without the manual files the
datasets are downloaded, when the network allows.

TFDS and grain are imported on first use of a name that needs them, so that
`dataset_spec` (all a model needs to be built) works without the input stack.
"""

import importlib
from typing import Any

from jaxgen.data.specs import DatasetSpec, dataset_spec

_LAZY = {
    'DATA_DIR_ENV': 'jaxgen.data.builders',
    'MANUAL_DIR_ENV': 'jaxgen.data.builders',
    'prepare': 'jaxgen.data.builders',
    'eval_batches': 'jaxgen.data.pipeline',
    'flip_mask': 'jaxgen.data.pipeline',
    'prepare_for': 'jaxgen.data.pipeline',
    'train_batches': 'jaxgen.data.pipeline',
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['DatasetSpec', 'dataset_spec', *_LAZY]
