"""Datasets in their original formats, split and normalised for training.

Registered datasets: ``mnist``, ``fashion_mnist`` (IDX), ``cifar10`` (python
pickles), ``fsdd`` (wav -> MFCC / log-mel), ``uci_har`` (text) and ``digits``
(bundled with scikit-learn, no files needed). Files are read from a data directory
passed explicitly; :func:`download_dataset` fetches them with checksums.

Importing this package does not import torch; :func:`load_dataset` does.

Example:
    >>> from sparse_nas.datasets import DatasetConfig, load_dataset
    >>> splits = load_dataset(DatasetConfig("digits", seed=0))
    >>> splits.input_shape
    (1, 8, 8)
"""

from __future__ import annotations

# Each dataset module registers its dataset on import.
from sparse_nas.datasets import _cifar, _digits, _fsdd, _har, _idx  # noqa: F401
from sparse_nas.datasets._config import DatasetConfig
from sparse_nas.datasets._download import download_dataset
from sparse_nas.datasets._errors import (
    DatasetCorruptError,
    DatasetDownloadError,
    DatasetError,
    DatasetNotFoundError,
)
from sparse_nas.datasets._load import load_dataset
from sparse_nas.datasets._registry import (
    DatasetInfo,
    OptionSpec,
    available_datasets,
    dataset_info,
    input_shape_for,
)
from sparse_nas.datasets._types import DatasetSplits, Normalization, TensorSplit

__all__ = [
    "DatasetConfig",
    "DatasetCorruptError",
    "DatasetDownloadError",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "DatasetSplits",
    "Normalization",
    "OptionSpec",
    "TensorSplit",
    "available_datasets",
    "dataset_info",
    "download_dataset",
    "input_shape_for",
    "load_dataset",
]
