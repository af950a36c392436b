"""From a :class:`DatasetConfig` to normalised train/val/test tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sparse_nas.datasets._config import DatasetConfig
from sparse_nas.datasets._errors import DatasetError
from sparse_nas.datasets._registry import get_entry, resolve_options
from sparse_nas.datasets._splits import stratified_take
from sparse_nas.datasets._types import DatasetSplits, Normalization, TensorSplit

if TYPE_CHECKING:
    import torch

# Independent random streams per purpose, so that asking for a training subset never
# changes the validation split of the same seed.
_VAL_STREAM = 0
_SUBSET_STREAM = 1
# Below this standard deviation (in scaled units) a channel counts as constant: it is
# left unscaled (std 1.0) rather than amplifying rounding noise.
_CONSTANT_STD = 1e-8


def load_dataset(
    config: DatasetConfig, data_dir: str | os.PathLike[str] | None = None
) -> DatasetSplits:
    """Load a dataset from its original files and split and normalise it.

    Steps: read the original train and test sets; map classes to the binary variant if
    asked; carve the validation split from the original training set (stratified by
    class, seeded by ``config.seed``); keep a stratified ``train_subset`` if asked;
    compute normalisation statistics on the train split only and apply them to all
    three splits.

    Args:
        config: Which dataset and how to split it.
        data_dir: The data directory holding each dataset's folder (see
            :attr:`DatasetInfo.expected_files`); not needed for ``digits``.

    Returns:
        The splits, as float32 / int64 tensors.

    Raises:
        DatasetNotFoundError: ``data_dir`` or a file in it is missing.
        DatasetCorruptError: A file does not hold what its format promises.
        DatasetError: The configuration does not fit the data (for example a
            ``train_subset`` larger than the training split).
    """
    entry = get_entry(config.name)
    options = resolve_options(config.name, config.options)
    raw = entry.loader(Path(data_dir).expanduser() if data_dir is not None else None, options)

    x_train, y_train = raw.x_train, raw.y_train
    class_names = raw.class_names
    x_test, y_test = raw.x_test, raw.y_test
    if config.binary_groups is not None:
        x_train, y_train = _to_binary(x_train, y_train, config.binary_groups)
        x_test, y_test = _to_binary(x_test, y_test, config.binary_groups)
        class_names = tuple(
            "+".join(raw.class_names[c] for c in group) for group in config.binary_groups
        )

    n_val = round(config.val_fraction * y_train.shape[0])
    val_rng = np.random.default_rng([config.seed, _VAL_STREAM])
    train_idx, val_idx = stratified_take(y_train, n_val, val_rng)
    if config.train_subset is not None:
        if config.train_subset > train_idx.shape[0]:
            raise DatasetError(
                f"DatasetConfig.train_subset={config.train_subset} exceeds the "
                f"{train_idx.shape[0]} training samples of {config.name!r} left after "
                f"carving the validation split"
            )
        subset_rng = np.random.default_rng([config.seed, _SUBSET_STREAM])
        _, kept = stratified_take(y_train[train_idx], config.train_subset, subset_rng)
        train_idx = train_idx[kept]
    if train_idx.shape[0] == 0:
        raise DatasetError(
            f"DatasetConfig.val_fraction={config.val_fraction} leaves no training samples "
            f"of {config.name!r}"
        )

    x_train_kept = x_train[train_idx]
    normalization = _fit_normalization(x_train_kept, raw.scale)
    return DatasetSplits(
        name=config.name,
        train=_tensor_split(x_train_kept, y_train[train_idx], normalization),
        val=_tensor_split(x_train[val_idx], y_train[val_idx], normalization),
        test=_tensor_split(x_test, y_test, normalization),
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        num_classes=len(class_names),
        class_names=class_names,
        normalization=normalization,
    )


def _to_binary(
    x: np.ndarray, y: np.ndarray, groups: tuple[tuple[int, ...], tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray]:
    size = max(int(y.max(initial=-1)), *groups[0], *groups[1]) + 1
    lookup = np.full(size, -1, dtype=np.int64)
    for label, group in enumerate(groups):
        lookup[list(group)] = label
    binary = lookup[y]
    kept = binary >= 0
    return x[kept], binary[kept]


def _fit_normalization(x_train: np.ndarray, scale: float) -> Normalization:
    """Per-channel (``(N, C, H, W)``) or per-feature (``(N, T, F)``) mean and std."""
    import torch

    dim = -3 if x_train.ndim == 4 else -1
    x = _as_tensor(x_train)
    means: list[float] = []
    stds: list[float] = []
    for c in range(x.shape[dim]):
        var, mean = torch.var_mean(x.select(dim, c).to(torch.float32), correction=0)
        std = float(var.sqrt()) * scale
        means.append(float(mean) * scale)
        stds.append(std if std > _CONSTANT_STD else 1.0)
    return Normalization(mean=tuple(means), std=tuple(stds), dim=dim, scale=scale)


def _tensor_split(x: np.ndarray, y: np.ndarray, normalization: Normalization) -> TensorSplit:
    return TensorSplit(x=normalization.apply(_as_tensor(x)), y=_as_tensor(y.astype(np.int64)))


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    import torch

    # torch shares the array's memory and warns on read-only buffers (np.frombuffer).
    return torch.from_numpy(np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"]))
