"""MNIST / Fashion-MNIST from small IDX files (gzip and raw) that the tests write."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_nas.datasets import (
    DatasetConfig,
    DatasetCorruptError,
    DatasetNotFoundError,
    load_dataset,
)

N_TRAIN, N_TEST = 40, 20


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file, written from the format description (LeCun et al.)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose top-left pixel is 20 * label, so images and labels can be matched."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels * 20
    return images, labels


def write_idx_dataset(data_dir: Path, folder: str, *, compress: bool) -> dict[str, np.ndarray]:
    target = data_dir / folder
    target.mkdir(parents=True)
    x_train, y_train = make_split(N_TRAIN, 0)
    x_test, y_test = make_split(N_TEST, 1)
    arrays = {
        "train-images-idx3-ubyte": x_train,
        "train-labels-idx1-ubyte": y_train,
        "t10k-images-idx3-ubyte": x_test,
        "t10k-labels-idx1-ubyte": y_test,
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if compress:
            (target / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (target / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_loads_idx_files(tmp_path: Path, name: str, compress: bool) -> None:
    arrays = write_idx_dataset(tmp_path, name, compress=compress)
    splits = load_dataset(DatasetConfig(name, val_fraction=0.25), tmp_path)
    assert splits.input_shape == (1, 28, 28)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 20)
    assert splits.num_classes == 10
    assert splits.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")
    norm = splits.normalization
    assert norm.scale == pytest.approx(1 / 255)
    for split in (splits.train, splits.val, splits.test):
        pixels = (split.x[:, 0, 0, 0] * norm.std[0] + norm.mean[0]) / norm.scale
        assert torch.allclose(pixels, split.y.float() * 20, atol=1e-3)
    test_pixels = splits.test.x * norm.std[0] + norm.mean[0]
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.allclose(test_pixels, expected, atol=1e-5), "test set kept in file order"


def test_missing_file_names_file_directory_and_remedy(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, "mnist", compress=True)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(DatasetConfig("mnist"), tmp_path)
    message = str(caught.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "t10k-labels-idx1-ubyte'" in message, "the uncompressed name is accepted too"
    assert str(tmp_path / "mnist") in message
    assert f"sparse-nas datasets download mnist --data-dir {tmp_path}" in message


def test_missing_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=re.escape("train-images-idx3-ubyte.gz")):
        load_dataset(DatasetConfig("fashion_mnist"), tmp_path)


def _corrupt(tmp_path: Path, file_name: str, data: bytes) -> DatasetCorruptError:
    write_idx_dataset(tmp_path, "mnist", compress=False)
    (tmp_path / "mnist" / file_name).write_bytes(data)
    with pytest.raises(DatasetCorruptError) as caught:
        load_dataset(DatasetConfig("mnist"), tmp_path)
    message = str(caught.value)
    assert file_name in message and str(tmp_path / "mnist") in message
    return caught.value


def test_bad_magic_number_is_corrupt(tmp_path: Path) -> None:
    labels_as_images = idx_bytes(np.zeros(N_TRAIN, dtype=np.uint8))
    error = _corrupt(tmp_path, "train-images-idx3-ubyte", labels_as_images)
    assert "bad magic number 0x00000801, expected 0x00000803" in str(error)


def test_size_mismatch_is_corrupt(tmp_path: Path) -> None:
    images, _ = make_split(N_TRAIN, 0)
    error = _corrupt(tmp_path, "train-images-idx3-ubyte", idx_bytes(images)[:-5])
    assert "size mismatch" in str(error)


def test_too_short_header_is_corrupt(tmp_path: Path) -> None:
    error = _corrupt(tmp_path, "t10k-labels-idx1-ubyte", b"\x00\x00")
    assert "header" in str(error)


def test_label_count_mismatch_is_corrupt(tmp_path: Path) -> None:
    error = _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))
    assert "3 labels for 40 images" in str(error)


def test_label_out_of_range_is_corrupt(tmp_path: Path) -> None:
    bad = idx_bytes(np.full(N_TRAIN, 10, dtype=np.uint8))
    assert "label 10" in str(_corrupt(tmp_path, "train-labels-idx1-ubyte", bad))


def test_wrong_image_size_is_corrupt(tmp_path: Path) -> None:
    error = _corrupt(tmp_path, "t10k-images-idx3-ubyte", idx_bytes(np.zeros((N_TEST, 8, 8))))
    assert "expected 28 x 28" in str(error)


def test_broken_gzip_is_corrupt(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, "mnist", compress=True)
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DatasetCorruptError, match=re.escape("train-labels-idx1-ubyte.gz")):
        load_dataset(DatasetConfig("mnist"), tmp_path)
