"""scikit-learn's bundled 8x8 digits: the offline default dataset (no data directory).

``sklearn.datasets.load_digits`` ships 1,797 images of 8 x 8 pixels with values 0-16,
from the UCI "Optical Recognition of Handwritten Digits" dataset (Alpaydin & Kaynak,
1998). It has no test split of its own, so this module fixes one: 20 % of the images,
stratified by class and drawn with seed ``_TEST_SPLIT_SEED`` (359 test / 1,438 train).
That seed is deliberately not :attr:`DatasetConfig.seed`: the test set is the same for
every configuration, only the validation split varies.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparse_nas.datasets._registry import DatasetInfo, RawDataset, register_dataset
from sparse_nas.datasets._splits import stratified_take

_NAME = "digits"
_TEST_FRACTION = 0.2
_TEST_SPLIT_SEED = 20_240_501
_MAX_PIXEL = 16.0
_CLASS_NAMES = tuple(str(d) for d in range(10))


def _load(data_dir: Path | None, options: Mapping[str, Any]) -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, np.newaxis]  # (1797, 1, 8, 8), values 0-16
    labels = bunch.target.astype(np.int64)
    n_test = round(_TEST_FRACTION * labels.shape[0])
    train, test = stratified_take(labels, n_test, np.random.default_rng(_TEST_SPLIT_SEED))
    return RawDataset(
        x_train=images[train],
        y_train=labels[train],
        x_test=images[test],
        y_test=labels[test],
        class_names=_CLASS_NAMES,
        scale=1.0 / _MAX_PIXEL,
    )


register_dataset(
    DatasetInfo(
        name=_NAME,
        description="scikit-learn's 8x8 handwritten digits: 1,797 images, 10 classes, "
        "fixed 1,438 train / 359 test split; needs no files (offline default).",
        input_shape=(1, 8, 8),
        num_classes=len(_CLASS_NAMES),
        class_names=_CLASS_NAMES,
        needs_data_dir=False,
        expected_files=(),
        options=(),
        source="sklearn.datasets.load_digits (UCI Optical Recognition of Handwritten "
        "Digits, Alpaydin & Kaynak 1998)",
        license="CC BY 4.0",
    ),
    _load,
)
