"""The uncompressed baseline, as a BaseCompressedLinear."""

from __future__ import annotations

import torch
from torch import nn

from hw_models import Dense
from search_spaces.compression._base import BaseCompressedLinear, kaiming_uniform_
from search_spaces.compression._registry import register_compression


@register_compression("dense")
class DenseLinear(BaseCompressedLinear):
    """A plain dense matrix (nn.Linear's maths and initialisation)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self.weight = nn.Parameter(kaiming_uniform_(torch.empty(out_features, in_features), in_features))
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.weight

    def weight_structure(self) -> Dense:
        return Dense()

    def stored_parameters(self) -> int:
        return self.weight.numel()
