"""Low-rank matrix factorisation (LMF): W = U V with a chosen rank."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hw_models import LowRank
from search_spaces.compression._base import BaseCompressedLinear, kaiming_uniform_
from search_spaces.compression._registry import register_compression
from search_spaces.errors import InvalidCompressionError


@register_compression("low_rank")
class LowRankLinear(BaseCompressedLinear):
    """W = U V with U (out_features x rank) and V (rank x in_features).

    Low-rank matrix factorisation as compared against in Thakker et al., arXiv
    1906.02876 and 1906.04886 (LMF, Grachev et al. 2017). Stores and multiplies
    rank * (out_features + in_features) values; the compression factor
    m n / (r (m + n)) ranges from m n / (min(m, n) (m + n)) (rank min(m, n), below 1)
    to m n / (m + n) (rank 1).

    Args:
        in_features: n, the input size.
        out_features: m, the output size.
        bias: whether to add a learnt bias.
        rank: r, in [1, min(m, n)].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rank: int) -> None:
        super().__init__(in_features, out_features, bias)
        limit = min(in_features, out_features)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
            raise InvalidCompressionError(
                f"rank: must be an integer in [1, {limit}] for a {out_features}x{in_features} matrix, got {rank!r}"
            )
        self.rank = rank
        # V draws like an nn.Linear(n, r); U's variance 1/r makes each entry of U V have
        # nn.Linear's variance 1/(3 n): r * (1/r) * 1/(3 n).
        self.v = nn.Parameter(kaiming_uniform_(torch.empty(rank, in_features), in_features))
        bound = math.sqrt(3 / rank)
        self.u = nn.Parameter(nn.init.uniform_(torch.empty(out_features, rank), -bound, bound))
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., m) as (x V^T) U^T: r (n + m) MACs per row of x."""
        return nn.functional.linear(nn.functional.linear(x, self.v), self.u, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """U V, (out_features, in_features)."""
        return self.u @ self.v

    def weight_structure(self) -> LowRank:
        return LowRank(self.rank)

    def stored_parameters(self) -> int:
        return self.u.numel() + self.v.numel()

    @classmethod
    def for_compression(
        cls, in_features: int, out_features: int, factor: float, bias: bool = True, **fixed: Any
    ) -> LowRankLinear:
        """The rank whose compression factor m n / (r (m + n)) is closest to `factor`.

        Closeness is measured on a log scale (|log(achieved / factor)|). Any rank in
        [1, min(m, n)] is reachable, so between the extremes in the class docstring the
        achieved factor is within one rank step of the target: for rank r the neighbours
        differ by a factor (r + 1) / r.

        Raises:
            InvalidCompressionError: `factor` is not positive, or `rank` is in `fixed`.
        """
        _check_factor(factor, fixed, "rank")
        dense = in_features * out_features
        ranks = range(1, min(in_features, out_features) + 1)
        rank = min(ranks, key=lambda r: abs(math.log(dense / (r * (in_features + out_features)) / factor)))
        return cls(in_features, out_features, bias, rank=rank, **fixed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def _check_factor(factor: float, fixed: dict[str, Any], knob: str) -> None:
    if not isinstance(factor, int | float) or isinstance(factor, bool) or not factor > 0:
        raise InvalidCompressionError(f"factor: must be a positive number, got {factor!r}")
    if knob in fixed:
        raise InvalidCompressionError(f"{knob}: chosen by for_compression, do not pass it as a fixed knob")
