"""Which dataset to load and how to split it: :class:`DatasetConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparse_nas.datasets._errors import DatasetError
from sparse_nas.datasets._registry import get_entry, resolve_options


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to load, with which options, and how to split it.

    Everything is checked on construction; errors name the field.

    Attributes:
        name: Registry name (see :func:`available_datasets`).
        seed: Seed of the validation split and of the training subset. The same seed
            gives identical tensors; another seed gives another validation split.
        val_fraction: Share of the original training set carved out, stratified by
            class, as the validation split; in ``[0, 1)``. The original test set stays
            the test set.
        train_subset: Keep only this many training samples (stratified, seeded), for
            low-fidelity search; ``None`` keeps them all. Taken after the validation
            split, so the validation split does not depend on it.
        binary_groups: SpArSe-style binary variant (Fedorov et al., 2019): classes in
            the first group become label 0, those in the second label 1, the others are
            dropped.
        options: Dataset-specific options (see :attr:`DatasetInfo.options`).
    """

    name: str
    seed: int = 0
    val_fraction: float = 0.1
    train_subset: int | None = None
    binary_groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise DatasetError(f"DatasetConfig.name must be a string, got {self.name!r}")
        info = get_entry(self.name).info
        if not _is_int(self.seed) or self.seed < 0:
            raise DatasetError(f"DatasetConfig.seed must be an integer >= 0, got {self.seed!r}")
        fraction = self.val_fraction
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            raise DatasetError(f"DatasetConfig.val_fraction must be a number, got {fraction!r}")
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"DatasetConfig.val_fraction must be in [0, 1), got {fraction!r}")
        subset = self.train_subset
        if subset is not None and (not _is_int(subset) or subset < 1):
            raise DatasetError(
                f"DatasetConfig.train_subset must be None or an integer >= 1, got {subset!r}"
            )
        if self.binary_groups is not None:
            groups = _check_binary_groups(self.binary_groups, info.num_classes)
            object.__setattr__(self, "binary_groups", groups)
        if not isinstance(self.options, Mapping):
            raise DatasetError(f"DatasetConfig.options must be a mapping, got {self.options!r}")
        resolve_options(self.name, self.options)
        object.__setattr__(self, "options", dict(self.options))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binary_groups(groups: Any, num_classes: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    where = "DatasetConfig.binary_groups"
    if isinstance(groups, str | bytes) or len(groups) != 2:
        raise DatasetError(f"{where} must be two groups of class indices, got {groups!r}")
    checked: list[tuple[int, ...]] = []
    for group in groups:
        if isinstance(group, str | bytes) or not group:
            raise DatasetError(f"{where} groups must be non-empty sequences, got {group!r}")
        members = tuple(group)
        if not all(_is_int(c) and 0 <= c < num_classes for c in members):
            raise DatasetError(
                f"{where} holds class indices in [0, {num_classes}), got {list(members)}"
            )
        checked.append(members)
    overlap = sorted(set(checked[0]) & set(checked[1]))
    if overlap:
        raise DatasetError(f"{where} groups must be disjoint; both hold {overlap}")
    return checked[0], checked[1]
