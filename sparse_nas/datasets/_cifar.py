"""CIFAR-10, read from the original "python version" pickles.

Format (Krizhevsky, https://www.cs.toronto.edu/~kriz/cifar.html): each of
``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` unpickles to a dict whose
``data`` is a uint8 array of 10,000 x 3,072 (1,024 red, then green, then blue values,
each a 32 x 32 image in row-major order) and whose ``labels`` lists 10,000 labels in
0-9; ``batches.meta`` holds ``label_names``. The pickles were written by Python 2, so
they are read with ``encoding="latin1"`` as the page above advises for numpy data.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparse_nas.datasets._download import ArchiveMember, Checksum, RemoteFile, TarArchiveDownload
from sparse_nas.datasets._registry import (
    DatasetInfo,
    RawDataset,
    corrupt_file_error,
    missing_file_error,
    register_dataset,
    require_data_dir,
)

_NAME = "cifar10"
_FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_META = "batches.meta"
_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32
_NUM_CLASSES = 10
_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# What an ndarray pickle refers to, under numpy 1's and numpy 2's module names. Only
# these globals may be loaded: unpickling a data file must never run arbitrary code.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 pickles of bytes at protocol 2.
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only numpy arrays are expected)"
            ) from None


def _unpickle(path: Path, data_dir: Path) -> dict[str, Any]:
    if not path.is_file():
        raise missing_file_error(_NAME, path, data_dir)
    try:
        with path.open("rb") as stream:
            content = _RestrictedUnpickler(stream, encoding="latin1").load()
    except Exception as exc:  # unpickling a damaged file can raise nearly anything
        raise corrupt_file_error(_NAME, path, data_dir, f"cannot unpickle: {exc!r}") from exc
    if not isinstance(content, dict):
        raise corrupt_file_error(
            _NAME, path, data_dir, f"holds a {type(content).__name__}, expected a dict"
        )
    return content


def _read_batch(path: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    content = _unpickle(path, data_dir)
    data, labels = content.get("data"), content.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise corrupt_file_error(_NAME, path, data_dir, "'data' is not a 2-D uint8 array")
    if data.shape[1] != _PIXELS:
        raise corrupt_file_error(
            _NAME, path, data_dir, f"'data' has {data.shape[1]} columns, expected {_PIXELS}"
        )
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise corrupt_file_error(_NAME, path, data_dir, f"bad 'labels': {exc}") from exc
    if y.shape != (data.shape[0],):
        raise corrupt_file_error(
            _NAME, path, data_dir, f"{y.size} labels for {data.shape[0]} images"
        )
    if y.size and (y.min() < 0 or y.max() >= _NUM_CLASSES):
        raise corrupt_file_error(_NAME, path, data_dir, "labels outside 0-9")
    return data.reshape((-1, *_SHAPE)), y


def _read_class_names(path: Path, data_dir: Path) -> tuple[str, ...]:
    names = _unpickle(path, data_dir).get("label_names")
    if (
        not isinstance(names, list)
        or len(names) != _NUM_CLASSES
        or not all(isinstance(n, str) for n in names)
    ):
        raise corrupt_file_error(_NAME, path, data_dir, "'label_names' is not 10 strings")
    return tuple(names)


def _load(data_dir: Path | None, options: Mapping[str, Any]) -> RawDataset:
    data_dir = require_data_dir(_NAME, data_dir)
    folder = data_dir / _FOLDER
    class_names = _read_class_names(folder / _META, data_dir)
    batches = [_read_batch(folder / name, data_dir) for name in _TRAIN_BATCHES]
    x_test, y_test = _read_batch(folder / _TEST_BATCH, data_dir)
    return RawDataset(
        x_train=np.concatenate([x for x, _ in batches]),
        y_train=np.concatenate([y for _, y in batches]),
        x_test=x_test,
        y_test=y_test,
        class_names=class_names,
        scale=1.0 / 255.0,
    )


# MD5s of the archive and of each batch, as published on the CIFAR page and checked
# by torchvision (torchvision/datasets/cifar.py).
_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}

register_dataset(
    DatasetInfo(
        name=_NAME,
        description="CIFAR-10 colour images: 32x32 RGB, 10 classes, 50,000 train / 10,000 test.",
        input_shape=_SHAPE,
        num_classes=_NUM_CLASSES,
        class_names=_CLASS_NAMES,
        needs_data_dir=True,
        expected_files=tuple(f"{_FOLDER}/{name}" for name in _BATCH_MD5),
        options=(),
        source="https://www.cs.toronto.edu/~kriz/cifar.html (Krizhevsky, Learning Multiple "
        "Layers of Features from Tiny Images, 2009)",
        license="no explicit license; cite the technical report",
    ),
    _load,
    download=TarArchiveDownload(
        "https://www.cs.toronto.edu/~kriz/",
        RemoteFile(
            "cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            Checksum("md5", "c58f30108f718f92721af3b95e74349a"),
        ),
        tuple(
            ArchiveMember(f"{_FOLDER}/{name}", f"{_FOLDER}/{name}", Checksum("md5", md5))
            for name, md5 in _BATCH_MD5.items()
        ),
    ),
)
