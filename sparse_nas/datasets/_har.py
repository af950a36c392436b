"""UCI HAR: human activity recognition from smartphone inertial signals.

Source: Anguita et al., "A Public Domain Dataset for Human Activity Recognition Using
Smartphones", ESANN 2013 (https://archive.ics.uci.edu/dataset/240). The loader reads
the raw windows of its original text layout, ``UCI HAR Dataset/{train,test}/Inertial
Signals/<signal>_<split>.txt``: one window of 128 samples (2.56 s at 50 Hz) per line,
for 9 signals (body acceleration, gyroscope and total acceleration, each x/y/z);
labels 1-6 in ``<split>/y_<split>.txt``, names in ``activity_labels.txt``. The
official split is by subject (21 train / 9 test). Samples are ``(128, 9)`` sequences,
signals in the order of ``_SIGNALS``; ``layout="image"`` gives ``(1, 128, 9)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparse_nas.datasets._registry import (
    DatasetInfo,
    OptionSpec,
    RawDataset,
    corrupt_file_error,
    missing_file_error,
    register_dataset,
    require_data_dir,
)

_NAME = "uci_har"
_FOLDER = "UCI HAR Dataset"
_STEPS = 128
_SIGNALS = tuple(
    f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"
)
_CLASS_NAMES = (
    "WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
)  # fmt: skip
_OPTIONS = (
    OptionSpec("layout", "sequence", "'sequence' (128, 9) for RNNs or 'image' (1, 128, 9) "
               "for CNNs", choices=("sequence", "image")),
)  # fmt: skip


def _read_table(path: Path, data_dir: Path, columns: int) -> np.ndarray:
    """A whitespace-separated numeric text file with exactly ``columns`` columns."""
    if not path.is_file():
        raise missing_file_error(_NAME, path, data_dir)
    if path.stat().st_size == 0:
        raise corrupt_file_error(_NAME, path, data_dir, "the file is empty")
    try:
        table = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise corrupt_file_error(_NAME, path, data_dir, str(exc)) from exc
    if table.shape[1] != columns:
        raise corrupt_file_error(
            _NAME, path, data_dir, f"{table.shape[1]} columns, expected {columns}"
        )
    return table


def _read_class_names(path: Path, data_dir: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise missing_file_error(_NAME, path, data_dir)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    expected = [str(i) for i in range(1, len(_CLASS_NAMES) + 1)]
    if [row[0] for row in rows] != expected or any(len(row) != 2 for row in rows):
        raise corrupt_file_error(
            _NAME, path, data_dir, "expected 6 lines '<1-6> <ACTIVITY_NAME>' in order"
        )
    return tuple(row[1] for row in rows)


def _read_split(root: Path, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    signal_dir = root / split / "Inertial Signals"
    channels = [
        _read_table(signal_dir / f"{signal}_{split}.txt", data_dir, _STEPS) for signal in _SIGNALS
    ]
    label_path = root / split / f"y_{split}.txt"
    labels = _read_table(label_path, data_dir, 1)[:, 0]
    for signal, channel in zip(_SIGNALS, channels, strict=True):
        if channel.shape[0] != labels.shape[0]:
            raise corrupt_file_error(
                _NAME, signal_dir / f"{signal}_{split}.txt", data_dir,
                f"{channel.shape[0]} windows but {labels.shape[0]} labels in {label_path.name}",
            )  # fmt: skip
    y = labels.astype(np.int64)
    if not np.array_equal(y, labels) or y.min() < 1 or y.max() > len(_CLASS_NAMES):
        raise corrupt_file_error(_NAME, label_path, data_dir, "labels must be integers 1-6")
    return np.stack(channels, axis=-1), y - 1


def _input_shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    steps = (_STEPS, len(_SIGNALS))
    return (1, *steps) if options["layout"] == "image" else steps


def _load(data_dir: Path | None, options: Mapping[str, Any]) -> RawDataset:
    data_dir = require_data_dir(_NAME, data_dir)
    root = data_dir / _FOLDER
    class_names = _read_class_names(root / "activity_labels.txt", data_dir)
    x_train, y_train = _read_split(root, "train", data_dir)
    x_test, y_test = _read_split(root, "test", data_dir)
    if options["layout"] == "image":
        x_train, x_test = x_train[:, np.newaxis], x_test[:, np.newaxis]
    return RawDataset(x_train, y_train, x_test, y_test, class_names)


register_dataset(
    DatasetInfo(
        name=_NAME,
        description="UCI HAR: smartphone inertial signals, 9 channels x 128 steps (50 Hz), "
        "6 activities, 7,352 train / 2,947 test windows (split by subject).",
        input_shape=(_STEPS, len(_SIGNALS)),
        num_classes=len(_CLASS_NAMES),
        class_names=_CLASS_NAMES,
        needs_data_dir=True,
        expected_files=(
            f"{_FOLDER}/activity_labels.txt",
            *(f"{_FOLDER}/{s}/y_{s}.txt" for s in ("train", "test")),
            *(
                f"{_FOLDER}/{s}/Inertial Signals/{signal}_{s}.txt"
                for s in ("train", "test")
                for signal in _SIGNALS
            ),
        ),
        options=_OPTIONS,
        source="https://archive.ics.uci.edu/dataset/240 (Anguita et al., ESANN 2013; "
        "'UCI HAR Dataset.zip')",
        license="CC BY 4.0",
    ),
    _load,
    input_shape=_input_shape,
)
