"""The dataset registry: what each dataset is, its options, its loader and its download.

Each dataset module registers itself at import time with :func:`register_dataset`
(one dataset per call, the name once only). Nothing here imports torch, so listing the
datasets and describing them stays cheap for the service.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparse_nas.datasets._errors import DatasetCorruptError, DatasetError, DatasetNotFoundError

if TYPE_CHECKING:
    import numpy as np

    from sparse_nas.datasets._download import BaseDownload


@dataclass(frozen=True)
class OptionSpec:
    """One dataset-specific option of :attr:`DatasetConfig.options`.

    Attributes:
        name: Key in the options mapping.
        default: Value used when the key is absent.
        description: One line for users (CLI help, API).
        choices: Allowed values, or ``None`` for a numeric option.
        minimum: Smallest allowed value of a numeric option (inclusive).
        maximum: Largest allowed value of a numeric option (inclusive).
    """

    name: str
    default: str | int | float
    description: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def validate(self, dataset: str, value: Any) -> str | int | float:
        """Return ``value`` checked against this spec (ints accepted for float options).

        Raises:
            DatasetError: The value has the wrong type or is out of range; the message
                names the dataset and the option.
        """
        where = f"options[{self.name!r}] of dataset {dataset!r}"
        if self.choices is not None:
            if value not in self.choices:
                raise DatasetError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        wants_int = isinstance(self.default, int)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (wants_int and not isinstance(value, int)):
            kind = "an integer" if wants_int else "a number"
            raise DatasetError(f"{where} must be {kind}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise DatasetError(f"{where} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise DatasetError(f"{where} must be <= {self.maximum}, got {value!r}")
        return value if wants_int else float(value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the API."""
        return {
            "name": self.name,
            "default": self.default,
            "description": self.description,
            "choices": list(self.choices) if self.choices is not None else None,
            "minimum": self.minimum,
            "maximum": self.maximum,
        }


@dataclass(frozen=True)
class DatasetInfo:
    """What a registered dataset is, for users and the service (``GET /api/datasets``).

    Attributes:
        name: Registry key, as in :attr:`DatasetConfig.name`.
        description: One or two sentences.
        input_shape: Per-sample shape with the default options, torch layout.
        num_classes: Number of classes.
        class_names: Class names in label order.
        needs_data_dir: Whether loading reads files from a data directory.
        expected_files: Files the loader reads, relative to the data directory
            (``*`` matches many files).
        options: The dataset-specific options and their defaults.
        downloadable: Whether :func:`download_dataset` can fetch it (with checksums).
        source: Where the original files come from, and what to cite.
        license: The license of the data.
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    needs_data_dir: bool
    expected_files: tuple[str, ...]
    options: tuple[OptionSpec, ...]
    source: str
    license: str
    downloadable: bool = False

    @property
    def default_options(self) -> dict[str, str | int | float]:
        """The options used when :attr:`DatasetConfig.options` leaves them out."""
        return {spec.name: spec.default for spec in self.options}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for the API."""
        return {
            "name": self.name,
            "description": self.description,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "needs_data_dir": self.needs_data_dir,
            "expected_files": list(self.expected_files),
            "default_options": self.default_options,
            "options": [spec.to_dict() for spec in self.options],
            "downloadable": self.downloadable,
            "source": self.source,
            "license": self.license,
        }


@dataclass(frozen=True)
class RawDataset:
    """What a loader returns: the original train and test sets, before any split.

    Attributes:
        x_train: Samples in their final per-sample layout, ``(N, C, H, W)`` or
            ``(N, T, F)``; uint8 or float32, in raw units (multiplied by ``scale``
            before normalisation).
        y_train: Class labels ``(N,)``, integers in ``[0, len(class_names))``.
        x_test: Like ``x_train``.
        y_test: Like ``y_train``.
        class_names: Class names in label order.
        scale: Factor from raw units to the units that normalisation statistics are in
            (``1 / 255`` for 8-bit pixels).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    scale: float = 1.0


Loader = Callable[[Path | None, Mapping[str, Any]], RawDataset]
"""Signature of a loader: ``(data_dir or None, resolved options) -> RawDataset``."""

OptionsCheck = Callable[[Mapping[str, Any]], None]
"""Checks rules between options (raises :class:`DatasetError`)."""

ShapeFn = Callable[[Mapping[str, Any]], tuple[int, ...]]
"""Per-sample input shape from resolved options, computed without reading any file."""


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    loader: Loader
    download: BaseDownload | None
    check_options: OptionsCheck | None
    input_shape: ShapeFn | None


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    info: DatasetInfo,
    loader: Loader,
    *,
    download: BaseDownload | None = None,
    check_options: OptionsCheck | None = None,
    input_shape: ShapeFn | None = None,
) -> None:
    """Add a dataset to the registry.

    Args:
        info: Its description; ``downloadable`` is set from ``download``.
        loader: Reads the original files (see :data:`Loader`).
        download: How to fetch and verify the original files, if they can be.
        check_options: Checks rules between options, beyond each option's own spec.
        input_shape: The per-sample shape the loader produces for given options, for
            datasets whose options change it; ``None`` means always ``info.input_shape``.

    Raises:
        DatasetError: The name is already registered.
    """
    if info.name in _REGISTRY:
        raise DatasetError(f"dataset {info.name!r} is already registered")
    info = replace(info, downloadable=download is not None)
    _REGISTRY[info.name] = _Entry(info, loader, download, check_options, input_shape)


def available_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> _Entry:
    """The registry entry of ``name``.

    Raises:
        DatasetError: No dataset has that name; the message lists those that exist.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; available: {', '.join(available_datasets())}"
        ) from None


def dataset_info(name: str) -> DatasetInfo:
    """Describe the registered dataset ``name``.

    Raises:
        DatasetError: No dataset has that name.
    """
    return get_entry(name).info


def resolve_options(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``given`` against the options of dataset ``name`` and fill in defaults.

    Raises:
        DatasetError: Unknown dataset or option, or a bad option value.
    """
    entry = get_entry(name)
    specs = {spec.name: spec for spec in entry.info.options}
    unknown = sorted(set(given) - set(specs))
    if unknown:
        known = ", ".join(specs) if specs else "none"
        raise DatasetError(
            f"unknown option(s) {unknown} for dataset {name!r}; known options: {known}"
        )
    resolved = {
        key: spec.validate(name, given[key]) if key in given else spec.default
        for key, spec in specs.items()
    }
    if entry.check_options is not None:
        entry.check_options(resolved)
    return resolved


def input_shape_for(name: str, options: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """The per-sample input shape (torch layout) of dataset ``name`` with ``options``.

    Computed from the options alone, without reading the data: a job spec is checked
    against its search space before anything is loaded.

    Example:
        >>> input_shape_for("fsdd", {"layout": "sequence"})
        (49, 10)

    Raises:
        DatasetError: Unknown dataset or option, or a bad option value.
    """
    resolved = resolve_options(name, options or {})
    entry = get_entry(name)
    if entry.input_shape is None:
        return entry.info.input_shape
    return entry.input_shape(resolved)


def how_to_obtain(name: str, data_dir: str | os.PathLike[str]) -> str:
    """The sentence an error message ends with: how to get dataset ``name``'s files."""
    entry = get_entry(name)
    if entry.download is not None:
        return (
            f"run `sparse-nas datasets download {name} --data-dir {data_dir}` "
            f"or place the original files there (source: {entry.info.source})"
        )
    return (
        f"download the original files from {entry.info.source} and place them there "
        f"(expected: {', '.join(entry.info.expected_files)})"
    )


def missing_file_error(
    name: str, path: Path, data_dir: Path, *, alternative: str | None = None
) -> DatasetNotFoundError:
    """The error for a missing file of dataset ``name``: names the file, where, and what to do.

    Args:
        name: Registry name.
        path: The file looked for.
        data_dir: The data directory (for the download command in the message).
        alternative: Another accepted name of the same file, in the same directory.
    """
    also = f" (nor {alternative!r})" if alternative is not None else ""
    return DatasetNotFoundError(
        f"dataset {name!r}: {path.name!r}{also} not found in directory {path.parent}; "
        f"{how_to_obtain(name, data_dir)}"
    )


def corrupt_file_error(name: str, path: Path, data_dir: Path, problem: str) -> DatasetCorruptError:
    """The error for a corrupt file of dataset ``name``: names the file, where, and the problem."""
    return DatasetCorruptError(
        f"dataset {name!r}: file {path.name!r} in directory {path.parent} is corrupt "
        f"({problem}); replace it with the original: {how_to_obtain(name, data_dir)}"
    )


def require_data_dir(name: str, data_dir: Path | None) -> Path:
    """``data_dir`` for a dataset that reads files, or the error that says it is missing.

    Raises:
        DatasetNotFoundError: ``data_dir`` is None or not a directory.
    """
    if data_dir is None:
        raise DatasetNotFoundError(
            f"dataset {name!r} is read from a data directory, but data_dir is None; pass "
            f"data_dir (the service takes it from SPARSE_NAS_DATA_DIR), then "
            f"{how_to_obtain(name, '<data-dir>')}"
        )
    if not data_dir.is_dir():
        raise DatasetNotFoundError(
            f"dataset {name!r}: data directory {data_dir} does not exist; "
            f"{how_to_obtain(name, data_dir)}"
        )
    return data_dir
