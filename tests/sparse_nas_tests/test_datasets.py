"""Tests of sparse_nas.datasets: registry, configuration, splits and normalisation.

Format-specific loaders are tested in test_datasets_<format>.py; the pipeline is
exercised here on ``digits``, which needs no files.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_nas.datasets import (
    DatasetConfig,
    DatasetCorruptError,
    DatasetError,
    DatasetNotFoundError,
    DatasetSplits,
    Normalization,
    TensorSplit,
    available_datasets,
    dataset_info,
    load_dataset,
)
from sparse_nas.datasets._splits import stratified_take
from sparse_nas.errors import SparseNASError

ALL_DATASETS = ["cifar10", "digits", "fashion_mnist", "fsdd", "mnist", "uci_har"]


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset(DatasetConfig("digits", seed=0))


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


# --- registry -------------------------------------------------------------------------


def test_available_datasets_lists_every_registered_name() -> None:
    assert available_datasets() == ALL_DATASETS


@pytest.mark.parametrize("name", ALL_DATASETS)
def test_dataset_info_is_complete_and_json_ready(name: str) -> None:
    info = dataset_info(name)
    assert info.name == name
    assert info.num_classes == len(info.class_names)
    assert info.needs_data_dir == (name != "digits")
    assert info.downloadable == (name in {"mnist", "fashion_mnist", "cifar10", "fsdd"})
    assert all(spec.name in info.default_options for spec in info.options)
    as_json = json.loads(json.dumps(info.to_dict()))
    assert as_json["input_shape"] == list(info.input_shape)
    assert as_json["default_options"] == info.default_options


def test_dataset_info_default_shapes() -> None:
    assert dataset_info("mnist").input_shape == (1, 28, 28)
    assert dataset_info("cifar10").input_shape == (3, 32, 32)
    assert dataset_info("fsdd").input_shape == (1, 49, 10)
    assert dataset_info("uci_har").input_shape == (128, 9)
    assert dataset_info("fsdd").default_options["features"] == "mfcc"


def test_unknown_dataset_names_the_available_ones() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet'.*mnist"):
        dataset_info("imagenet")
    with pytest.raises(DatasetError, match="unknown dataset"):
        DatasetConfig("imagenet")


def test_error_hierarchy() -> None:
    assert issubclass(DatasetError, SparseNASError)
    assert issubclass(DatasetError, ValueError)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(DatasetNotFoundError, DatasetError)
    assert issubclass(DatasetCorruptError, DatasetError)


def test_importing_the_package_does_not_import_torch_or_sklearn() -> None:
    code = (
        "import sys, sparse_nas.datasets as d; d.dataset_info('fsdd');"
        "print('torch' in sys.modules, 'sklearn' in sys.modules)"
    )
    repo_root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert result.stdout.split() == ["False", "False"]


# --- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"train_subset": 0}, "train_subset"),
        ({"train_subset": True}, "train_subset"),
        ({"binary_groups": ((0, 1), (1, 2))}, "binary_groups"),
        ({"binary_groups": ((0,), ())}, "binary_groups"),
        ({"binary_groups": ((0,), (10,))}, "binary_groups"),
        ({"binary_groups": ((0,),)}, "binary_groups"),
        ({"options": {"features": "mfcc"}}, "features"),
    ],
)
def test_config_rejects_bad_fields_naming_them(kwargs: dict, field: str) -> None:
    with pytest.raises(DatasetError, match=field):
        DatasetConfig("digits", **kwargs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"features": "wavelet"}, r"options\['features'\].*one of"),
        ({"n_mfcc": "ten"}, r"options\['n_mfcc'\].*integer"),
        ({"n_mfcc": 10.0}, r"options\['n_mfcc'\].*integer"),
        ({"n_mels": 0}, r"options\['n_mels'\].*>= 1"),
        ({"n_mfcc": 20, "n_mels": 16}, "exceeds"),
        ({"window_ms": 40.01}, "whole number of samples"),
        ({"colour": "red"}, "unknown option.*colour.*known options"),
    ],
)
def test_config_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        DatasetConfig("fsdd", options=options)


def test_config_accepts_json_shaped_input_and_is_hashable_and_picklable() -> None:
    config = DatasetConfig(
        "fsdd", binary_groups=[[0, 1], [2]], options={"n_mfcc": 13, "window_ms": 30}
    )
    assert config.binary_groups == ((0, 1), (2,))
    assert pickle.loads(pickle.dumps(config)) == config
    assert hash(config) == hash(pickle.loads(pickle.dumps(config)))


# --- stratified splitting ---------------------------------------------------------------


def test_stratified_take_uses_largest_remainder_quotas() -> None:
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
    # Quotas 2.5, 1.5, 1.0 -> floors 2, 1, 1; the spare sample goes to the first of the
    # tied largest remainders (class 0).
    rest, taken = stratified_take(labels, 5, np.random.default_rng(0))
    assert Counter(labels[taken].tolist()) == {0: 3, 1: 1, 2: 1}
    assert np.array_equal(np.sort(np.concatenate([rest, taken])), np.arange(10))
    assert np.all(np.diff(taken) > 0) and np.all(np.diff(rest) > 0)


def test_stratified_take_extremes() -> None:
    labels = np.array([1, 1, 0])
    rng = np.random.default_rng(0)
    assert stratified_take(labels, 0, rng)[1].size == 0
    assert stratified_take(labels, 3, rng)[0].size == 0
    with pytest.raises(ValueError, match="cannot take 4 of 3"):
        stratified_take(labels, 4, rng)


# --- loading and splitting (digits) -----------------------------------------------------


def test_digits_shapes_counts_and_dtypes(digits: DatasetSplits) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert digits.class_names == tuple(str(d) for d in range(10))
    # 1,797 images: a fixed 20 % test split (359), then 10 % of the rest as validation.
    assert len(digits.test) == 359
    assert len(digits.train) + len(digits.val) == 1438
    assert len(digits.val) == round(0.1 * 1438)
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert split.x.is_contiguous()


def test_digits_splits_are_disjoint_and_cover_the_dataset(digits: DatasetSplits) -> None:
    images, _ = _raw_digits()
    norm = digits.normalization
    raw = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    pixels = (raw * torch.tensor(norm.std) + torch.tensor(norm.mean)) / norm.scale
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    recovered = sorted(map(bytes, pixels.round().to(torch.uint8).reshape(-1, 64).numpy()))
    assert recovered == sorted(map(bytes, images.astype(np.uint8).reshape(-1, 64)))


def test_validation_split_is_stratified(digits: DatasetSplits) -> None:
    train_counts = torch.bincount(digits.train.y, minlength=10)
    val_counts = torch.bincount(digits.val.y, minlength=10)
    expected = (train_counts + val_counts).double() * 0.1
    assert torch.all((val_counts - expected).abs() <= 1)


def test_same_seed_gives_identical_tensors_other_seed_another_val_split() -> None:
    first = load_dataset(DatasetConfig("digits", seed=7))
    again = load_dataset(DatasetConfig("digits", seed=7))
    other = load_dataset(DatasetConfig("digits", seed=8))
    for a, b in [(first.train, again.train), (first.val, again.val), (first.test, again.test)]:
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert first.normalization == again.normalization
    assert not torch.equal(first.val.x, other.val.x)
    assert torch.equal(first.test.y, other.test.y), "the test split never depends on the seed"


def test_normalisation_is_fitted_on_train_only(digits: DatasetSplits) -> None:
    norm = digits.normalization
    assert norm.dim == -3 and norm.scale == pytest.approx(1 / 16)
    assert len(norm.mean) == len(norm.std) == 1
    assert digits.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert digits.train.x.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    assert abs(digits.test.x.mean().item()) > 1e-4
    images, _ = _raw_digits()
    all_mean = images.mean() / 16
    assert norm.mean[0] == pytest.approx(all_mean, rel=0.05)
    assert norm.mean[0] != pytest.approx(all_mean, rel=1e-6)


def test_normalization_apply_matches_and_leaves_input_alone() -> None:
    norm = Normalization(mean=(1.0, 2.0), std=(2.0, 4.0), dim=-1, scale=0.5)
    x = torch.tensor([[[4.0, 8.0], [6.0, 12.0]]])
    before = x.clone()
    out = norm.apply(x)
    assert torch.equal(x, before)
    assert torch.allclose(out, torch.tensor([[[0.5, 0.5], [1.0, 1.0]]]))
    assert torch.allclose(norm.apply(x[0]), out[0]), "works without a batch dimension"
    assert norm.apply(torch.tensor([[4, 8]], dtype=torch.uint8)).dtype == torch.float32


def test_train_subset_is_stratified_and_keeps_the_val_split() -> None:
    full = load_dataset(DatasetConfig("digits", seed=3))
    subset = load_dataset(DatasetConfig("digits", seed=3, train_subset=100))
    assert len(subset.train) == 100
    assert torch.equal(subset.val.y, full.val.y)
    counts = torch.bincount(subset.train.y, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    again = load_dataset(DatasetConfig("digits", seed=3, train_subset=100))
    assert torch.equal(subset.train.x, again.train.x)


def test_train_subset_larger_than_train_split_is_an_error() -> None:
    with pytest.raises(DatasetError, match="train_subset=5000 exceeds the 1294 training"):
        load_dataset(DatasetConfig("digits", train_subset=5000))


def test_binary_variant_maps_groups_and_drops_other_classes() -> None:
    _, labels = _raw_digits()
    splits = load_dataset(DatasetConfig("digits", binary_groups=((0, 8), (1,))))
    assert splits.num_classes == 2
    assert splits.class_names == ("0+8", "1")
    total = sum(len(s) for s in (splits.train, splits.val, splits.test))
    assert total == int(np.isin(labels, [0, 1, 8]).sum())
    for split in (splits.train, splits.val, splits.test):
        assert set(split.y.unique().tolist()) == {0, 1}


def test_zero_val_fraction_gives_an_empty_val_split() -> None:
    splits = load_dataset(DatasetConfig("digits", val_fraction=0.0))
    assert len(splits.val) == 0
    assert splits.val.x.shape == (0, 1, 8, 8)
    assert len(splits.train) == 1438


def test_tensor_split_validates_its_tensors() -> None:
    with pytest.raises(TypeError, match="float32"):
        TensorSplit(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="y"):
        TensorSplit(torch.zeros(2, 3), torch.zeros(3, dtype=torch.int64))
    assert len(TensorSplit(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))) == 2


def test_file_datasets_need_a_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data_dir is None"):
        load_dataset(DatasetConfig("mnist"))
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match=re.escape(f"{missing} does not exist")):
        load_dataset(DatasetConfig("mnist"), missing)


def test_registering_a_name_twice_is_an_error() -> None:
    from sparse_nas.datasets._registry import register_dataset

    with pytest.raises(DatasetError, match="'digits' is already registered"):
        register_dataset(dataset_info("digits"), lambda data_dir, options: None)
