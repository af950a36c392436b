"""Convolutions with a magnitude-pruning mask (SpArSe prunes conv layers too)."""

from __future__ import annotations

import torch
from torch import nn

from hw_models import Dense, Sparse, WeightSpec
from search_spaces.compression._pruning import _check_density, magnitude_mask


class MaskedConv2d(nn.Conv2d):
    """nn.Conv2d whose weight is multiplied by a magnitude mask (Zhu & Gupta 2017).

    Same constructor as nn.Conv2d plus `density`, the target fraction of weights kept
    (SpArSe, arXiv 1905.12107, searches it per layer). The mask is dense until
    `prune_to` is called (a training phase drives it on a schedule); pruned weights are
    zeroed and stay zero (their gradient through the mask is zero).

    Buffers:
        mask: same shape as `weight`, float 0/1, saved in the state dict.
    """

    def __init__(self, *args: object, density: float = 1.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.target_density = _check_density(density)
        self.register_buffer("mask", torch.ones_like(self.weight))

    @torch.no_grad()
    def prune_to(self, density: float | None = None) -> float:
        """Keep the round(density * numel) largest |w|; returns the new density."""
        density = self.target_density if density is None else _check_density(density)
        self.mask.copy_(magnitude_mask(self.weight, self.mask, density))
        self.weight.mul_(self.mask)
        return self.density

    @property
    def density(self) -> float:
        return float(self.mask.sum()) / self.mask.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def weight_structure(self) -> Dense | Sparse:
        """Dense while nothing is pruned, else Sparse (CSR) with the mask's density."""
        kept = int(self.mask.sum())
        return Dense() if kept == self.mask.numel() else Sparse(max(kept, 1) / self.mask.numel(), "csr")

    def weight_spec(self, bits: int = 32) -> WeightSpec:
        """hw_models weight (O, KH, KW, I / groups) with the current structure."""
        o, i, kh, kw = self.weight.shape
        return WeightSpec((o, kh, kw, i), bits, self.weight_structure())
