"""Hybrid Matrix Decomposition (HMD), Thakker et al., arXiv 1906.04886."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hw_models import HMD
from search_spaces.compression._base import BaseCompressedLinear, kaiming_uniform_
from search_spaces.compression._registry import register_compression
from search_spaces.errors import InvalidCompressionError


def block_widths(cols: int, blocks: int) -> tuple[int, ...]:
    """Column widths of `blocks` column blocks covering `cols` columns, as equal as possible.

    The paper splits the n columns in halves (2 blocks); when `blocks` does not divide
    n, the first n mod blocks blocks get one extra column.
    """
    return tuple(cols // blocks + (1 if i < cols % blocks else 0) for i in range(blocks))


def _check_int(value: Any, knob: str, low: int, high: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidCompressionError(f"{knob}: must be an integer in [{low}, {high}] {why}, got {value!r}")
    return value


@register_compression("hmd")
class HMDLinear(BaseCompressedLinear):
    """HMD: a dense upper block of r rows, rank-1 column blocks below (D1 variant: 2).

    Thakker et al., "Run-Time Efficient RNN Compression for Inference on Edge Devices",
    arXiv 1906.04886. W (m x n) is split into an unconstrained upper r x n block and a
    lower (m - r) x n block whose columns are split into k blocks, block i being the
    outer product u_i v_i^T of a column vector u_i (m - r) and a row vector v_i (n_i),
    sum n_i = n.

    Stored values, Eq. (1): r n + k (m - r) + n. MACs of one product, Eq. (2) /
    Algorithm 2: r n (upper rows) + n (one dot product v_i . x_i per block) +
    k (m - r) (each lower output accumulates s_i u_i over the blocks). The compression
    factor m n / (r n + k (m - r) + n) runs from m n / (k m + n) (r = 0) down to just
    under 1 (r = m - 1).

    Args:
        in_features: n.
        out_features: m.
        bias: whether to add a learnt bias.
        dense_rows: r, in [0, m - 1].
        rank1_blocks: k, in [1, n]; the D1 variant of the paper uses 2.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, dense_rows: int, rank1_blocks: int = 2
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.dense_rows = _check_int(dense_rows, "dense_rows", 0, out_features - 1, f"for {out_features} output rows")
        self.rank1_blocks = _check_int(rank1_blocks, "rank1_blocks", 1, in_features, f"for {in_features} columns")
        self.block_widths = block_widths(in_features, rank1_blocks)
        lower = out_features - dense_rows
        # Upper rows: nn.Linear's init. Lower blocks: u ~ U(-1, 1) (variance 1/3) and
        # v with variance 1/n, so every entry u v has nn.Linear's variance 1/(3 n).
        self.upper = (
            nn.Parameter(kaiming_uniform_(torch.empty(dense_rows, in_features), in_features)) if dense_rows else None
        )
        self.u = nn.Parameter(nn.init.uniform_(torch.empty(rank1_blocks, lower), -1.0, 1.0))
        bound = math.sqrt(3 / in_features)
        self.v = nn.Parameter(nn.init.uniform_(torch.empty(in_features), -bound, bound))
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., m) by Algorithm 2 of arXiv 1906.04886, never building W.

        Upper outputs: W_upper x. Lower outputs: s_i = v_i . x_i for each column block
        i (x_i the block's slice of x), then y_lower = sum_i s_i u_i.
        """
        scaled = (x * self.v).split(self.block_widths, dim=-1)
        s = torch.stack([chunk.sum(dim=-1) for chunk in scaled], dim=-1)  # (..., k)
        lower = s @ self.u  # (..., m - r)
        if self.upper is None:
            return self._add_bias(lower)
        return self._add_bias(torch.cat([nn.functional.linear(x, self.upper), lower], dim=-1))

    def dense_weight(self) -> torch.Tensor:
        """W by Algorithm 1 of arXiv 1906.04886: [W_upper; u_1 v_1^T | ... | u_k v_k^T]."""
        blocks = [torch.outer(u, v) for u, v in zip(self.u, self.v.split(self.block_widths), strict=True)]
        lower = torch.cat(blocks, dim=1)
        return lower if self.upper is None else torch.cat([self.upper, lower], dim=0)

    def weight_structure(self) -> HMD:
        return HMD(self.dense_rows, self.rank1_blocks)

    def stored_parameters(self) -> int:
        upper = 0 if self.upper is None else self.upper.numel()
        return upper + self.u.numel() + self.v.numel()

    @classmethod
    def for_compression(
        cls, in_features: int, out_features: int, factor: float, bias: bool = True, **fixed: Any
    ) -> HMDLinear:
        """The dense_rows whose compression m n / (r n + k (m - r) + n) is closest to `factor`.

        Closeness is |log(achieved / factor)| over r in [0, m - 1], with k from `fixed`
        (default 2). Between the extremes in the class docstring the achieved factor is
        within one row step: neighbouring r differ by n - k stored values.

        Raises:
            InvalidCompressionError: `factor` is not positive, or `dense_rows` is in `fixed`.
        """
        if not isinstance(factor, int | float) or isinstance(factor, bool) or not factor > 0:
            raise InvalidCompressionError(f"factor: must be a positive number, got {factor!r}")
        if "dense_rows" in fixed:
            raise InvalidCompressionError("dense_rows: chosen by for_compression, do not pass it as a fixed knob")
        m, n = out_features, in_features
        k = _check_int(fixed.get("rank1_blocks", 2), "rank1_blocks", 1, n, f"for {n} columns")
        dense_rows = min(range(m), key=lambda r: abs(math.log(m * n / (r * n + k * (m - r) + n) / factor)))
        return cls(in_features, out_features, bias, dense_rows=dense_rows, **fixed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dense_rows={self.dense_rows}, rank1_blocks={self.rank1_blocks}"
