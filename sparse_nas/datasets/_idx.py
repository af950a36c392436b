"""MNIST and Fashion-MNIST, read from their original IDX files (gzip-compressed or raw).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header of
two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, one
int32 per dimension, then the data in row-major order. Image files therefore start
with the magic number 2051 (0x00000803), label files with 2049 (0x00000801).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparse_nas.datasets._download import Checksum, FilesDownload, RemoteFile
from sparse_nas.datasets._registry import (
    DatasetInfo,
    Loader,
    RawDataset,
    corrupt_file_error,
    missing_file_error,
    register_dataset,
    require_data_dir,
)

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
_IMAGE_SIDE = 28
_NUM_CLASSES = 10
_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_TEST_IMAGES = "t10k-images-idx3-ubyte"
_TEST_LABELS = "t10k-labels-idx1-ubyte"
_FILES = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)


class _IdxFormatError(ValueError):
    """The bytes are not the IDX file they should be (internal; becomes corrupt_file_error)."""


def parse_idx_ubyte(data: bytes, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file with ``ndim`` dimensions.

    Args:
        data: The whole (decompressed) file.
        ndim: Expected number of dimensions (3 for images, 1 for labels).

    Returns:
        A read-only uint8 array of the shape given in the header.

    Raises:
        _IdxFormatError: Bad magic number, or the data size does not match the header.
    """
    header_bytes = 4 + 4 * ndim
    expected_magic = (_UBYTE << 8) | ndim
    if len(data) < header_bytes:
        raise _IdxFormatError(f"{len(data)} bytes is shorter than the {header_bytes}-byte header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise _IdxFormatError(
            f"bad magic number {magic:#010x}, expected {expected_magic:#010x} "
            f"(IDX{ndim}, unsigned byte)"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    payload_bytes = int(np.prod(shape, dtype=np.int64))
    if len(data) - header_bytes != payload_bytes:
        raise _IdxFormatError(
            f"size mismatch: the header promises {payload_bytes} data bytes for shape "
            f"{shape}, the file has {len(data) - header_bytes}"
        )
    return np.frombuffer(data, np.uint8, offset=header_bytes).reshape(shape)


def _read_idx(name: str, folder: Path, base_name: str, ndim: int, data_dir: Path) -> np.ndarray:
    """Read ``base_name`` + ``.gz`` if present, else the uncompressed ``base_name``."""
    gz_path, raw_path = folder / f"{base_name}.gz", folder / base_name
    path = gz_path if gz_path.is_file() else raw_path
    if not path.is_file():
        raise missing_file_error(name, gz_path, data_dir, alternative=raw_path.name)
    data = path.read_bytes()
    try:
        if data.startswith(_GZIP_MAGIC):
            data = gzip.decompress(data)
        return parse_idx_ubyte(data, ndim)
    except (_IdxFormatError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise corrupt_file_error(name, path, data_dir, str(exc) or type(exc).__name__) from exc


def _load_split(
    name: str, folder: Path, images: str, labels: str, data_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    x = _read_idx(name, folder, images, 3, data_dir)
    y = _read_idx(name, folder, labels, 1, data_dir)
    image_path = folder / images
    if x.shape[1:] != (_IMAGE_SIDE, _IMAGE_SIDE):
        raise corrupt_file_error(
            name, image_path, data_dir, f"images are {x.shape[1:]}, expected 28 x 28"
        )
    if x.shape[0] != y.shape[0]:
        raise corrupt_file_error(
            name, folder / labels, data_dir, f"{y.shape[0]} labels for {x.shape[0]} images"
        )
    if y.size and int(y.max()) >= _NUM_CLASSES:
        raise corrupt_file_error(
            name, folder / labels, data_dir, f"label {int(y.max())} is not a class in 0-9"
        )
    return x[:, np.newaxis], y.astype(np.int64)


def _idx_loader(name: str, class_names: tuple[str, ...]) -> Loader:
    def load(data_dir: Path | None, options: Mapping[str, Any]) -> RawDataset:
        data_dir = require_data_dir(name, data_dir)
        folder = data_dir / name
        x_train, y_train = _load_split(name, folder, _TRAIN_IMAGES, _TRAIN_LABELS, data_dir)
        x_test, y_test = _load_split(name, folder, _TEST_IMAGES, _TEST_LABELS, data_dir)
        return RawDataset(x_train, y_train, x_test, y_test, class_names, scale=1.0 / 255.0)

    return load


def _info(
    name: str, description: str, class_names: tuple[str, ...], source: str, license_: str
) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        description=description,
        input_shape=(1, _IMAGE_SIDE, _IMAGE_SIDE),
        num_classes=_NUM_CLASSES,
        class_names=class_names,
        needs_data_dir=True,
        expected_files=tuple(f"{name}/{f}.gz" for f in _FILES),
        options=(),
        source=source,
        license=license_,
    )


def _files(folder: str, digests: Mapping[str, Checksum]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f, f"{folder}/{f}", digests[f]) for f in digests)


_MNIST_NAMES = tuple(str(d) for d in range(_NUM_CLASSES))
register_dataset(
    _info(
        "mnist",
        "MNIST handwritten digits: 28x28 grayscale, 10 classes, 60,000 train / 10,000 test.",
        _MNIST_NAMES,
        "http://yann.lecun.com/exdb/mnist/ (LeCun, Bottou, Bengio, Haffner, Proc. IEEE 1998)",
        "CC BY-SA 3.0",
    ),
    _idx_loader("mnist", _MNIST_NAMES),
    # SHA-256 of the original files, whose MD5s match those published with MNIST (and
    # checked by torchvision); the mirror is the one Keras/TensorFlow use.
    download=FilesDownload(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        _files(
            "mnist",
            {
                f"{_TRAIN_IMAGES}.gz": Checksum(
                    "sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
                ),
                f"{_TRAIN_LABELS}.gz": Checksum(
                    "sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
                ),
                f"{_TEST_IMAGES}.gz": Checksum(
                    "sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
                ),
                f"{_TEST_LABELS}.gz": Checksum(
                    "sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
                ),
            },
        ),
    ),
)

_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
register_dataset(
    _info(
        "fashion_mnist",
        "Fashion-MNIST clothing images: 28x28 grayscale, 10 classes, 60,000 train / 10,000 test.",
        _FASHION_NAMES,
        "https://github.com/zalandoresearch/fashion-mnist (Xiao, Rasul, Vollgraf, "
        "arXiv 1708.07747)",
        "MIT",
    ),
    _idx_loader("fashion_mnist", _FASHION_NAMES),
    # MD5s as published in the Fashion-MNIST README (the only digests it gives).
    download=FilesDownload(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        _files(
            "fashion_mnist",
            {
                f"{_TRAIN_IMAGES}.gz": Checksum("md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                f"{_TRAIN_LABELS}.gz": Checksum("md5", "25c81989df183df01b3e8a0aad5dffbe"),
                f"{_TEST_IMAGES}.gz": Checksum("md5", "bef4ecab320f06d8554ea6380940ec79"),
                f"{_TEST_LABELS}.gz": Checksum("md5", "bb300cfdad3c16e7a12a480ee83cd310"),
            },
        ),
    ),
)
