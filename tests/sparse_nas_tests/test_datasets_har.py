"""UCI HAR from small text files in its original layout, written by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_nas.datasets import (
    DatasetConfig,
    DatasetCorruptError,
    DatasetError,
    DatasetNotFoundError,
    download_dataset,
    load_dataset,
)

SIGNALS = [f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz"]
ACTIVITIES = ["WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING",
              "LAYING"]  # fmt: skip
COUNTS = {"train": 24, "test": 12}


def signal_value(labels: np.ndarray, channel: int) -> np.ndarray:
    """Window values: step 0 of channel k is label + k / 10, so the layout is checkable."""
    rng = np.random.default_rng(channel)
    values = rng.normal(size=(labels.shape[0], 128)).astype(np.float32)
    values[:, 0] = labels + channel / 10
    return values


def write_har(data_dir: Path) -> Path:
    root = data_dir / "UCI HAR Dataset"
    root.mkdir(parents=True)
    (root / "activity_labels.txt").write_text(
        "".join(f"{i} {name}\n" for i, name in enumerate(ACTIVITIES, start=1))
    )
    for split, n in COUNTS.items():
        signal_dir = root / split / "Inertial Signals"
        signal_dir.mkdir(parents=True)
        labels = np.arange(n) % 6 + 1
        (root / split / f"y_{split}.txt").write_text("".join(f"{v}\n" for v in labels))
        for channel, signal in enumerate(SIGNALS):
            rows = signal_value(labels, channel)
            # The original files: fixed-width scientific notation, space separated.
            text = "".join(" " + " ".join(f"{v: .7e}" for v in row) + "\n" for row in rows)
            (signal_dir / f"{signal}_{split}.txt").write_text(text)
    return root


def test_loads_har_text_files(tmp_path: Path) -> None:
    write_har(tmp_path)
    splits = load_dataset(DatasetConfig("uci_har", val_fraction=0.25), tmp_path)
    assert splits.input_shape == (128, 9)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 12)
    assert splits.class_names == tuple(ACTIVITIES)
    norm = splits.normalization
    assert norm.dim == -1 and len(norm.mean) == 9 and norm.scale == 1.0
    assert splits.train.x.mean(dim=(0, 1)).abs().max() < 1e-5
    assert torch.allclose(splits.train.x.std(dim=(0, 1), correction=0), torch.ones(9), atol=1e-4)
    step0 = splits.test.x[:, 0, :] * torch.tensor(norm.std) + torch.tensor(norm.mean)
    expected = (splits.test.y + 1).float()[:, None] + torch.arange(9) / 10
    assert torch.allclose(step0, expected, atol=1e-4)


def test_image_layout(tmp_path: Path) -> None:
    write_har(tmp_path)
    splits = load_dataset(DatasetConfig("uci_har", options={"layout": "image"}), tmp_path)
    assert splits.input_shape == (1, 128, 9)
    assert splits.normalization.dim == -3 and len(splits.normalization.mean) == 1


def test_missing_label_file_names_file_directory_and_source(tmp_path: Path) -> None:
    root = write_har(tmp_path)
    (root / "test" / "y_test.txt").unlink()
    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset(DatasetConfig("uci_har"), tmp_path)
    message = str(caught.value)
    assert "'y_test.txt'" in message and str(root / "test") in message
    assert "archive.ics.uci.edu" in message


def test_wrong_column_count_is_corrupt(tmp_path: Path) -> None:
    root = write_har(tmp_path)
    path = root / "train" / "Inertial Signals" / "body_gyro_y_train.txt"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = " 1.0 2.0\n"
    path.write_text("".join(lines))
    with pytest.raises(DatasetCorruptError) as caught:
        load_dataset(DatasetConfig("uci_har"), tmp_path)
    assert "'body_gyro_y_train.txt'" in str(caught.value)
    assert str(path.parent) in str(caught.value)


def test_consistent_but_wrong_column_count_is_corrupt(tmp_path: Path) -> None:
    root = write_har(tmp_path)
    path = root / "test" / "Inertial Signals" / "total_acc_z_test.txt"
    path.write_text("1.0 2.0 3.0\n" * COUNTS["test"])
    with pytest.raises(DatasetCorruptError, match="3 columns, expected 128"):
        load_dataset(DatasetConfig("uci_har"), tmp_path)


@pytest.mark.parametrize(
    ("relative", "content", "problem"),
    [
        ("train/y_train.txt", "7\n" * 24, "labels must be integers 1-6"),
        ("train/y_train.txt", "1\n" * 5, "24 windows but 5 labels"),
        ("test/y_test.txt", "", "empty"),
        ("activity_labels.txt", "1 WALKING\n", "expected 6 lines"),
    ],
)
def test_corrupt_files_name_the_problem(
    tmp_path: Path, relative: str, content: str, problem: str
) -> None:
    root = write_har(tmp_path)
    (root / relative).write_text(content)
    with pytest.raises(DatasetCorruptError, match=problem):
        load_dataset(DatasetConfig("uci_har"), tmp_path)


def test_har_has_no_verified_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no download with published checksums"):
        download_dataset("uci_har", tmp_path)
