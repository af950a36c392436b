"""Smoke tests on the real files in ../shared/data (MNIST IDX, FSDD wav); slow.

Expected figures come from shared/data/*/README.md and the datasets' own documentation,
not from this code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sparse_nas.datasets import DatasetConfig, load_dataset
from sparse_nas.datasets._download import sha256_listing
from sparse_nas.datasets._registry import get_entry

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

pytestmark = pytest.mark.slow


def _require(folder: str) -> Path:
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} does not exist")
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mnist_counts_and_class_balance() -> None:
    _require("mnist")
    splits = load_dataset(DatasetConfig("mnist", seed=0), SHARED_DATA)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54_000, 6_000, 10_000)
    assert splits.input_shape == (1, 28, 28)
    # Per-class counts from shared/data/mnist/README.md.
    train_counts = torch.bincount(torch.cat([splits.train.y, splits.val.y]), minlength=10)
    assert train_counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(splits.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                      1028, 974, 1009]  # fmt: skip
    # The well-known MNIST statistics (0.1307, 0.3081) over all 60,000 training images.
    assert splits.normalization.mean[0] == pytest.approx(0.1307, abs=1e-3)
    assert splits.normalization.std[0] == pytest.approx(0.3081, abs=1e-3)


def test_fsdd_official_split_and_feature_shape() -> None:
    _require("fsdd")
    splits = load_dataset(DatasetConfig("fsdd", seed=0, val_fraction=0.0), SHARED_DATA)
    assert (len(splits.train), len(splits.test)) == (2_700, 300)
    assert splits.input_shape == (1, 49, 10)
    assert torch.bincount(splits.test.y).tolist() == [30] * 10
    assert torch.isfinite(splits.train.x).all()
    sequences = load_dataset(
        DatasetConfig("fsdd", options={"layout": "sequence", "features": "logmel"}), SHARED_DATA
    )
    assert sequences.input_shape == (49, 40)
    assert len(sequences.train) + len(sequences.val) == 2_700


def test_download_checksums_match_the_shared_originals() -> None:
    """The constants the downloader checks equal those of the verified shared copies."""
    fsdd = get_entry("fsdd").download
    assert sha256_listing(_require("fsdd"), fsdd.paths) == fsdd.listing_sha256
    mnist = get_entry("mnist").download
    for remote in mnist.files:
        assert remote.checksum.matches_file(SHARED_DATA / remote.target), remote.target
