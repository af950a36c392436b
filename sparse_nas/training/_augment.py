"""Batch augmentations that run on whole in-memory tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_nas.training._config import TrainingConfigError


class RandomShiftAugment:
    """Shift each image of a batch by its own random whole-pixel offset.

    Pads by ``max_shift_px`` on every side, replicating the border (MNIST-like
    backgrounds stay background after normalisation), and crops a window at a random
    offset per sample: the classic "random translation" augmentation, done with two
    gathers on the whole batch rather than per sample.

    Args:
        max_shift_px: Largest shift, in pixels, along each of height and width.

    Example:
        >>> train(model, splits, config, augment=RandomShiftAugment(2))  # doctest: +SKIP
    """

    def __init__(self, max_shift_px: int) -> None:
        if max_shift_px < 1:
            raise TrainingConfigError(f"max_shift_px must be at least 1, got {max_shift_px}")
        self.max_shift_px = max_shift_px

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return shifted copies of ``images`` (B, C, H, W); offsets drawn from ``generator``."""
        if images.dim() != 4:
            raise TrainingConfigError(f"RandomShiftAugment needs (B, C, H, W) images, got shape {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        shift = self.max_shift_px
        padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (2, batch), generator=generator)
        offsets = offsets.to(images.device)
        rows = offsets[0, :, None] + torch.arange(height, device=images.device)
        cols = offsets[1, :, None] + torch.arange(width, device=images.device)
        row_index = rows[:, None, :, None].expand(batch, channels, height, width + 2 * shift)
        cropped_rows = padded.gather(2, row_index)
        col_index = cols[:, None, None, :].expand(batch, channels, height, width)
        return cropped_rows.gather(3, col_index)
