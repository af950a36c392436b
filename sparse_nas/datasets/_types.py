"""The tensors a loaded dataset consists of: splits and their normalisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Normalization:
    """Per-channel or per-feature standardisation, with statistics from the train split.

    A model input is ``(x_raw * scale - mean[c]) / std[c]`` where ``c`` indexes
    dimension ``dim`` of the sample. Export states these numbers so that a deployed
    model is fed exactly what it was trained on.

    Attributes:
        mean: Mean of each channel (images) or feature (sequences), in scaled units.
        std: Population standard deviation of each, in scaled units; a constant
            channel (std below 1e-8) gets 1.0 so that it maps to about zero instead of
            dividing by zero.
        dim: The dimension that ``mean`` and ``std`` index, counted from the end so that
            it holds with or without a batch dimension: -3 for ``(C, H, W)``, -1 for
            ``(T, F)``.
        scale: Factor from raw file units to scaled units (``1 / 255`` for 8-bit
            pixels, 1.0 for audio features and inertial signals).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    scale: float = 1.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise raw samples ``x`` (any real dtype, batched or not) into new float32."""
        import torch

        shape = [1] * x.ndim
        shape[self.dim] = len(self.mean)
        mean = torch.tensor(self.mean, dtype=torch.float32).reshape(shape)
        std = torch.tensor(self.std, dtype=torch.float32).reshape(shape)
        return x.to(torch.float32, copy=True).mul_(self.scale).sub_(mean).div_(std)


@dataclass(frozen=True)
class TensorSplit:
    """One split of a dataset.

    Attributes:
        x: float32 samples, ``(N, C, H, W)`` for images or ``(N, T, F)`` for sequences,
            already normalised.
        y: int64 class labels ``(N,)``.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        import torch

        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise TypeError(
                f"TensorSplit needs float32 x and int64 y, got {self.x.dtype}, {self.y.dtype}"
            )
        if self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"TensorSplit needs x (N, ...) and y (N,), got {tuple(self.x.shape)} and "
                f"{tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DatasetSplits:
    """A loaded dataset: train, validation and test splits, ready for training.

    Attributes:
        name: Registry name of the dataset.
        train: Training split (after carving validation and taking any subset).
        val: Validation split, carved from the original training set, stratified.
        test: The original test set (for ``digits``, its fixed held-out part).
        input_shape: Per-sample shape, torch layout: ``(C, H, W)`` or ``(T, F)``.
        num_classes: Number of classes (2 for a binary variant).
        class_names: Class names in label order.
        normalization: The standardisation already applied to every split's ``x``,
            computed on the train split only.
    """

    name: str
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    normalization: Normalization
