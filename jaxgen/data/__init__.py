"""Datasets as TFDS array_record files, read through grain pipelines.

Set $JAXGEN_MANUAL_DIR to a folder holding `mnist/` (the four original idx
`.gz` files) and/or `cifar10/cifar-10-python.tar.gz`; prepared files go to
$JAXGEN_DATA_DIR (default: TFDS's data dir). Without the manual files the
datasets are downloaded, when the network allows.
"""

from jaxgen.data.builders import DATA_DIR_ENV
from jaxgen.data.builders import MANUAL_DIR_ENV
from jaxgen.data.builders import prepare
from jaxgen.data.pipeline import DatasetSpec
from jaxgen.data.pipeline import dataset_spec
from jaxgen.data.pipeline import eval_batches
from jaxgen.data.pipeline import flip_mask
from jaxgen.data.pipeline import prepare_for
from jaxgen.data.pipeline import train_batches

__all__ = [
    'DATA_DIR_ENV',
    'MANUAL_DIR_ENV',
    'DatasetSpec',
    'dataset_spec',
    'eval_batches',
    'flip_mask',
    'prepare',
    'prepare_for',
    'train_batches',
]
