"""Seeded, class-stratified index splits (numpy only)."""

from __future__ import annotations

import numpy as np


def stratified_take(
    labels: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n_take`` indices at random, with each class's share kept.

    Class quotas are ``count_c * n_take / N`` rounded by the largest-remainder method
    (ties go to the lower class label), so exactly ``n_take`` indices are taken and each
    class gets its proportional share to within one sample. The random draw uses
    ``rng`` class by class, in label order, so the same generator state gives the same
    split.

    Args:
        labels: Class labels ``(N,)``.
        n_take: How many indices to take, ``0 <= n_take <= N``.
        rng: Source of randomness; it is advanced.

    Returns:
        ``(rest, taken)``: both sorted ascending, disjoint, together ``range(N)``.
    """
    n = labels.shape[0]
    if not 0 <= n_take <= n:
        raise ValueError(f"cannot take {n_take} of {n} samples")
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (n_take / n) if n else counts.astype(float)
    allocation = np.floor(quotas).astype(np.int64)
    shortfall = n_take - int(allocation.sum())
    by_remainder = np.argsort(-(quotas - allocation), kind="stable")
    allocation[by_remainder[:shortfall]] += 1
    taken = [
        rng.permutation(np.flatnonzero(labels == cls))[:k]
        for cls, k in zip(classes, allocation, strict=True)
    ]
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.empty(0, np.int64)
    keep = np.ones(n, dtype=bool)
    keep[taken_idx] = False
    return np.flatnonzero(keep), taken_idx
