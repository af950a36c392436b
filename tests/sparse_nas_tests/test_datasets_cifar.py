"""CIFAR-10 from small "python version" pickles that the tests write."""

from __future__ import annotations

import os
import pickle
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

PER_BATCH = 10
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]  # fmt: skip


def make_batch(seed: int, n: int = PER_BATCH) -> dict:
    """A batch as the CIFAR page describes it; red of pixel 0 is 25 * label."""
    rng = np.random.default_rng(seed)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.array(labels) * 25
    data[:, 2048:] = 200  # a constant blue channel
    return {"batch_label": f"batch {seed}", "labels": labels, "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)]}  # fmt: skip


def write_cifar(data_dir: Path) -> Path:
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(make_batch(i), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(make_batch(0), protocol=2))
    meta = {"label_names": CLASS_NAMES, "num_cases_per_batch": PER_BATCH, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_loads_cifar_pickles(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    splits = load_dataset(DatasetConfig("cifar10", val_fraction=0.2), tmp_path)
    assert splits.input_shape == (3, 32, 32)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 10)
    assert splits.class_names == tuple(CLASS_NAMES)
    norm = splits.normalization
    assert len(norm.mean) == 3 and norm.dim == -3
    assert norm.std[2] == 1.0, "a constant channel is not divided by zero"
    assert norm.mean[2] == pytest.approx(200 / 255)
    assert splits.train.x[:, 2].abs().max() < 1e-6
    red = (splits.test.x[:, 0, 0, 0] * norm.std[0] + norm.mean[0]) / norm.scale
    assert torch.allclose(red, splits.test.y.float() * 25, atol=1e-3)
    expected = torch.tensor(make_batch(0)["labels"])
    assert torch.equal(splits.test.y, expected)
    # Channel-major rows: value 1024 of a row is the first green pixel.
    green = splits.test.x[:, 1, 0, 0] * norm.std[1] + norm.mean[1]
    assert torch.allclose(green * 255, torch.from_numpy(make_batch(0)["data"][:, 1024]).float(),
                          atol=1e-3)  # fmt: skip


def test_missing_batch_names_file_directory_and_remedy(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(DatasetConfig("cifar10"), tmp_path)
    message = str(caught.value)
    assert "'data_batch_3'" in message and str(folder) in message
    assert "sparse-nas datasets download cifar10" in message


@pytest.mark.parametrize(
    ("file_name", "content", "problem"),
    [
        ("data_batch_2", b"not a pickle at all", "cannot unpickle"),
        ("test_batch", pickle.dumps(os.getcwd), "refusing to load global"),
        ("data_batch_1", pickle.dumps([1, 2, 3]), "holds a list"),
        ("data_batch_4", pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}),
         "100 columns"),
        ("data_batch_5", pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}),
         "1 labels for 2 images"),
        ("data_batch_5", pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [12]}),
         "labels outside 0-9"),
        ("data_batch_1", pickle.dumps({"labels": [0]}), "'data' is not a 2-D uint8 array"),
        ("batches.meta", pickle.dumps({"label_names": ["a"]}), "'label_names' is not 10"),
    ],
)  # fmt: skip
def test_corrupt_pickles_name_the_file(
    tmp_path: Path, file_name: str, content: bytes, problem: str
) -> None:
    folder = write_cifar(tmp_path)
    (folder / file_name).write_bytes(content)
    with pytest.raises(DatasetCorruptError) as caught:
        load_dataset(DatasetConfig("cifar10"), tmp_path)
    message = str(caught.value)
    assert f"'{file_name}'" in message and str(folder) in message and problem in message
