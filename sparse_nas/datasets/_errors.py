"""Errors raised by :mod:`sparse_nas.datasets`."""

from __future__ import annotations

from sparse_nas.errors import SparseNASError


class DatasetError(SparseNASError, ValueError):
    """Root of the dataset errors: a bad dataset name, option, configuration or download."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A file or directory that a dataset needs is missing; the message says how to get it."""


class DatasetCorruptError(DatasetError):
    """A dataset file exists but is not what its format promises, or fails its checksum."""


class DatasetDownloadError(DatasetError):
    """A download failed for a reason other than a checksum mismatch (network, HTTP status)."""
