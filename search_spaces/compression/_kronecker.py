"""The Kronecker family: Kronecker product (KP), hybrid KP and doped KP linear maps.

All three compute A kron B times a vector with the vec trick and never build the
(m x n) matrix (Thakker et al., "Compressing RNNs for IoT devices by 15-38x using
Kronecker Products", arXiv 1906.02876; hybrid KP in the same paper and in arXiv
2010.03193; doped KP in "Compressing Language Models using Doped Kronecker Products",
arXiv 2001.08896, and "Doping", arXiv 2102.07071).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hw_models import HybridKronecker, Kronecker
from search_spaces.compression._base import BaseCompressedLinear, kaiming_uniform_
from search_spaces.compression._registry import register_compression
from search_spaces.errors import InvalidCompressionError

KroneckerFactors = tuple[tuple[int, int], tuple[int, int]]
"""((m1, n1), (m2, n2)): A is m1 x n1, B is m2 x n2, A kron B is (m1 m2) x (n1 n2)."""


# --- factor shapes -------------------------------------------------------------------


def prime_factors(value: int) -> list[int]:
    """Prime factors of a positive integer with multiplicity, ascending (1 -> [])."""
    primes, d = [], 2
    while d * d <= value:
        while value % d == 0:
            primes.append(d)
            value //= d
        d += 1
    if value > 1:
        primes.append(value)
    return primes


def _divisors(value: int) -> list[int]:
    """Every product of a sub-multiset of the prime factors of `value`, ascending."""
    divisors = [1]
    for prime, power in Counter(prime_factors(value)).items():
        divisors = [d * prime**k for d in divisors for k in range(power + 1)]
    return sorted(divisors)


def kronecker_candidates(rows: int, cols: int) -> list[KroneckerFactors]:
    """Every pair of factor shapes whose Kronecker product is rows x cols.

    The shapes are built from the prime factors of the two dimensions: m1 takes any
    sub-multiset of the prime factors of m and m2 the rest, likewise for n (arXiv
    1906.02876). Includes the trivial ones ((1, 1), (m, n)) and ((m, n), (1, 1)).
    """
    return [((m1, n1), (rows // m1, cols // n1)) for m1 in _divisors(rows) for n1 in _divisors(cols)]


def achievable_rank(factors: KroneckerFactors) -> int:
    """Largest rank A kron B can have: rank(A kron B) = rank(A) rank(B)."""
    (m1, n1), (m2, n2) = factors
    return min(m1, n1) * min(m2, n2)


def kronecker_parameters(factors: KroneckerFactors) -> int:
    """Values stored for A and B: m1 n1 + m2 n2."""
    (m1, n1), (m2, n2) = factors
    return m1 * n1 + m2 * n2


def _b_first(factors: KroneckerFactors) -> bool:
    """Whether the vec trick is cheaper applying B before A (ties: B first)."""
    (m1, n1), (m2, n2) = factors
    return n1 * m2 * (n2 + m1) <= m1 * n2 * (n1 + m2)


def kronecker_macs(factors: KroneckerFactors) -> int:
    """MACs of one vec-trick product in the cheaper association order.

    B first: n1 n2 m2 + m1 n1 m2 = n1 m2 (n2 + m1); A first: m1 n1 n2 + m1 n2 m2 =
    m1 n2 (n1 + m2). `kronecker_matvec` performs exactly the cheaper one.
    """
    (m1, n1), (m2, n2) = factors
    return min(n1 * m2 * (n2 + m1), m1 * n2 * (n1 + m2))


@functools.lru_cache(maxsize=4096)
def kronecker_factors(rows: int, cols: int) -> KroneckerFactors:
    """Factor shapes for a rows x cols matrix by the rule of Thakker et al. (arXiv 1906.02876).

    Among the factorisations built from the prime factors of m and n
    (`kronecker_candidates`), keep those whose achievable rank min(m1, n1) min(m2, n2)
    is largest, then those with the fewest parameters m1 n1 + m2 n2. The largest rank
    is always min(m, n) (the trivial factorisation reaches it), so the rule gives the
    most compressive factorisation that can still represent a full-rank matrix.
    Remaining ties (A and B swapped, for one) go to the fewer vec-trick MACs, then to
    the lexicographically smallest shapes, so the choice is deterministic.

    Examples (worked by hand): 256 x 256 -> ((16, 16), (16, 16)); 6 x 4 -> ((2, 2), (3, 2));
    a prime 7 x 7 -> ((1, 1), (7, 7)), no compression.
    """
    if rows <= 0 or cols <= 0:
        raise InvalidCompressionError(f"factors: the matrix must be non-empty, got {rows}x{cols}")
    return min(
        kronecker_candidates(rows, cols),
        key=lambda f: (-achievable_rank(f), kronecker_parameters(f), kronecker_macs(f), f),
    )


def check_factors(factors: Any, rows: int, cols: int, knob: str = "factors") -> KroneckerFactors:
    """`factors` as ((m1, n1), (m2, n2)) of positive ints whose product is rows x cols.

    Raises:
        InvalidCompressionError: naming `knob`, for any other value.
    """
    try:
        (m1, n1), (m2, n2) = factors
    except (TypeError, ValueError):
        raise InvalidCompressionError(f"{knob}: expected [[m1, n1], [m2, n2]], got {factors!r}") from None
    dims = (m1, n1, m2, n2)
    if any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims):
        raise InvalidCompressionError(f"{knob}: dimensions must be positive integers, got {factors!r}")
    if m1 * m2 != rows or n1 * n2 != cols:
        raise InvalidCompressionError(
            f"{knob}: ({m1}x{n1}) kron ({m2}x{n2}) is {m1 * m2}x{n1 * n2}, but the matrix is {rows}x{cols}"
        )
    return (m1, n1), (m2, n2)


# --- maths ---------------------------------------------------------------------------


def kronecker_matvec(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A kron B) applied to the last axis of x, without building A kron B.

    With x reshaped to X (..., n1, n2) (row-major, x[j1 n2 + j2] = X[j1, j2]), the
    output reshaped to (..., m1, m2) is A X B^T (Van Loan, "The ubiquitous Kronecker
    product", 2000). The two matmuls run in the cheaper order (see `kronecker_macs`).

    Args:
        x: (..., n1 n2).
        a: A, (m1, n1).
        b: B, (m2, n2).

    Returns:
        (..., m1 m2).
    """
    (m1, n1), (m2, n2) = a.shape, b.shape
    lead = x.shape[:-1]
    xs = x.reshape(*lead, n1, n2)
    if _b_first(((m1, n1), (m2, n2))):
        y = a @ (xs @ b.T)  # (..., n1, m2) then (..., m1, m2)
    else:
        y = (a @ xs) @ b.T  # (..., m1, n2) then (..., m1, m2)
    return y.reshape(*lead, m1 * m2)


def kronecker_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A kron B, (m1 m2, n1 n2): entry (i1 m2 + i2, j1 n2 + j2) is A[i1, j1] B[i2, j2]."""
    (m1, n1), (m2, n2) = a.shape, b.shape
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(m1 * m2, n1 * n2)


def _factor_parameters(factors: KroneckerFactors) -> tuple[nn.Parameter, nn.Parameter]:
    """A and B drawn so that each entry of A kron B has nn.Linear's variance 1/(3 n).

    A ~ U(-c/sqrt(n1), c/sqrt(n1)) and B ~ U(-c/sqrt(n2), c/sqrt(n2)) with c = 3^(1/4):
    var(a b) = var(a) var(b) = (1 / (sqrt(3) n1)) (1 / (sqrt(3) n2)) = 1 / (3 n1 n2).
    """
    (m1, n1), (m2, n2) = factors
    scale = 3**0.25
    a = nn.init.uniform_(torch.empty(m1, n1), -scale / math.sqrt(n1), scale / math.sqrt(n1))
    b = nn.init.uniform_(torch.empty(m2, n2), -scale / math.sqrt(n2), scale / math.sqrt(n2))
    return nn.Parameter(a), nn.Parameter(b)


def _check_factor(factor: float, fixed: dict[str, Any], knobs: Sequence[str]) -> None:
    if not isinstance(factor, int | float) or isinstance(factor, bool) or not factor > 0:
        raise InvalidCompressionError(f"factor: must be a positive number, got {factor!r}")
    for knob in knobs:
        if knob in fixed:
            raise InvalidCompressionError(f"{knob}: chosen by for_compression, do not pass it as a fixed knob")


def _distance(dense: int, stored: int, factor: float) -> float:
    """How far a compression dense / stored is from `factor`, on a log scale."""
    return abs(math.log(dense / stored / factor))


# --- modules -------------------------------------------------------------------------


@register_compression("kronecker")
class KroneckerLinear(BaseCompressedLinear):
    """W = A kron B, A (m1 x n1), B (m2 x n2), m1 m2 = out_features, n1 n2 = in_features.

    Kronecker product compression (Thakker et al., arXiv 1906.02876). The forward is the
    vec trick (`kronecker_matvec`): min(n1 m2 (n2 + m1), m1 n2 (n1 + m2)) MACs, the
    formula hw_models costs.

    Args:
        in_features: n.
        out_features: m.
        bias: whether to add a learnt bias.
        factors: ((m1, n1), (m2, n2)); None picks them by `kronecker_factors` (largest
            achievable rank, then fewest parameters).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, factors: Sequence[Sequence[int]] | None = None
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self.factors: KroneckerFactors = (
            kronecker_factors(out_features, in_features)
            if factors is None
            else check_factors(factors, out_features, in_features)
        )
        self.a, self.b = _factor_parameters(self.factors)
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., m) by the vec trick."""
        return self._add_bias(kronecker_matvec(x, self.a, self.b))

    def dense_weight(self) -> torch.Tensor:
        """A kron B, (out_features, in_features)."""
        return kronecker_matrix(self.a, self.b)

    def weight_structure(self) -> Kronecker:
        return Kronecker(self.factors)

    def stored_parameters(self) -> int:
        return self.a.numel() + self.b.numel()

    @classmethod
    def for_compression(
        cls, in_features: int, out_features: int, factor: float, bias: bool = True, **fixed: Any
    ) -> KroneckerLinear:
        """The factor shapes whose compression m n / (m1 n1 + m2 n2) is closest to `factor`.

        Closeness is |log(achieved / factor)|; ties go to the larger achievable rank,
        then as in `kronecker_factors`. The reachable factors are the finite set given by
        `kronecker_candidates`: from m n / (m n + 1) (trivial factors) up to at most
        sqrt(m n) / 2 (m1 n1 + m2 n2 >= 2 sqrt(m n)); e.g. 256 x 256 reaches about
        2^k for k = 0..7, so 15x gives 15.9x with ((4, 4), (64, 64)). Away from the
        auto rule's choice, the achievable rank may fall below min(m, n); use
        `hybrid_kronecker` for finer control.

        Raises:
            InvalidCompressionError: `factor` is not positive, or `factors` is in `fixed`.
        """
        _check_factor(factor, fixed, ("factors",))
        dense = in_features * out_features
        best = min(
            kronecker_candidates(out_features, in_features),
            key=lambda f: (
                _distance(dense, kronecker_parameters(f), factor),
                -achievable_rank(f),
                kronecker_macs(f),
                f,
            ),
        )
        return cls(in_features, out_features, bias, factors=best, **fixed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factors={self.factors}"


@register_compression("hybrid_kronecker")
class HybridKroneckerLinear(BaseCompressedLinear):
    """The first `dense_rows` rows of W dense, the remaining (m - r) rows A kron B.

    Hybrid KP (HKP, Thakker et al., arXiv 1906.02876 and arXiv 2010.03193):
    r sets the compression factor between KP and dense. Stores r n + m1 n1 + m2 n2
    values; one product costs r n plus the vec-trick MACs of the Kronecker block.

    Args:
        in_features: n.
        out_features: m.
        bias: whether to add a learnt bias.
        dense_rows: r, in [1, m - 1] (0 is plain `kronecker`).
        factors: shapes for the (m - r) x n block; None picks them by `kronecker_factors`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dense_rows: int,
        factors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        if isinstance(dense_rows, bool) or not isinstance(dense_rows, int) or not 1 <= dense_rows < out_features:
            raise InvalidCompressionError(
                f"dense_rows: must be an integer in [1, {out_features - 1}] for {out_features} output rows "
                f"(0 is the 'kronecker' method), got {dense_rows!r}"
            )
        self.dense_rows = dense_rows
        rows = out_features - dense_rows
        self.factors: KroneckerFactors = (
            kronecker_factors(rows, in_features) if factors is None else check_factors(factors, rows, in_features)
        )
        self.dense = nn.Parameter(kaiming_uniform_(torch.empty(dense_rows, in_features), in_features))
        self.a, self.b = _factor_parameters(self.factors)
        if self.bias is not None:
            kaiming_uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., m): dense rows by a matmul, the rest by the vec trick."""
        upper = nn.functional.linear(x, self.dense)
        lower = kronecker_matvec(x, self.a, self.b)
        return self._add_bias(torch.cat([upper, lower], dim=-1))

    def dense_weight(self) -> torch.Tensor:
        """[dense; A kron B], (out_features, in_features)."""
        return torch.cat([self.dense, kronecker_matrix(self.a, self.b)], dim=0)

    def weight_structure(self) -> HybridKronecker:
        return HybridKronecker(self.dense_rows, self.factors)

    def stored_parameters(self) -> int:
        return self.dense.numel() + self.a.numel() + self.b.numel()

    @classmethod
    def for_compression(
        cls, in_features: int, out_features: int, factor: float, bias: bool = True, **fixed: Any
    ) -> HybridKroneckerLinear:
        """The dense_rows (with auto factors) whose compression is closest to `factor`.

        Tries every r in [1, m - 1] with `kronecker_factors(m - r, n)`; closeness is
        |log(achieved / factor)|, ties go to fewer dense rows. The reachable factors run
        from about 1 (r = m - 1) up to roughly the plain KP factor of the best r near 1,
        but not monotonically in r: when m - r has few prime factors (a prime, say) its
        Kronecker block barely compresses. For a 512 x 128 LSTM gate matrix it meets
        2, 5, 15 and 30x within 7%; a 256 x 256 matrix tops out near 21x.

        Raises:
            InvalidCompressionError: `factor` is not positive, or `dense_rows` or
                `factors` is in `fixed` (fixing the shapes fixes r).
        """
        _check_factor(factor, fixed, ("dense_rows", "factors"))
        dense = in_features * out_features

        def stored(r: int) -> int:
            return r * in_features + kronecker_parameters(kronecker_factors(out_features - r, in_features))

        dense_rows = min(range(1, out_features), key=lambda r: (_distance(dense, stored(r), factor), r), default=None)
        if dense_rows is None:
            raise InvalidCompressionError(f"dense_rows: a hybrid needs at least 2 output rows, got {out_features}")
        return cls(in_features, out_features, bias, dense_rows=dense_rows, **fixed)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dense_rows={self.dense_rows}, factors={self.factors}"


@register_compression("doped_kronecker")
class DopedKroneckerLinear(KroneckerLinear):
    """W = A kron B + S, S a sparse overlay pruned to `doping_density` (doped KP).

    Thakker et al., "Compressing Language Models using Doped Kronecker Products", arXiv
    2001.08896, and "Doping", arXiv 2102.07071: S starts fully dense (and at zero, so W
    starts as a plain KP with nn.Linear's variance) and is annealed towards the target
    density by magnitude pruning on a gradual schedule that the trainer drives through
    `prune_to` (Zhu & Gupta 2017). To counter co-matrix adaptation (the KP part leaning
    on S, which then hurts as S is sparsified), co-matrix dropout regularisation (CMR)
    drops entries of the overlay's output S x, i.e. whole rows of S for that sample,
    with probability `comatrix_dropout`, in training mode only.

    The overlay is a dense parameter times a boolean mask (masked dense matmul), not a
    torch.sparse tensor: early in the schedule S is dense, the mask changes during
    training, and masked dense keeps plain autograd and equals the deployed CSR product.
    hw_models costs the deployed form: m1 n1 + m2 n2 + nnz(S) values, vec-trick MACs +
    nnz(S) MACs, S in CSR.

    Args:
        in_features: n.
        out_features: m.
        bias: whether to add a learnt bias.
        doping_density: target fraction of non-zeros of S, in [0, 1]; `prune_to()`
            without an argument prunes to it.
        factors: ((m1, n1), (m2, n2)); None picks them by `kronecker_factors`.
        comatrix_dropout: CMR dropout rate on S x, in [0, 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        doping_density: float,
        factors: Sequence[Sequence[int]] | None = None,
        comatrix_dropout: float = 0.5,
    ) -> None:
        super().__init__(in_features, out_features, bias, factors=factors)
        self.doping_density = _check_fraction(doping_density, "doping_density", upper_inclusive=True)
        self.comatrix_dropout = _check_fraction(comatrix_dropout, "comatrix_dropout", upper_inclusive=False)
        self.overlay = nn.Parameter(torch.zeros(out_features, in_features))
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool))

    @property
    def doping_nonzeros(self) -> int:
        """Entries of S kept by the mask now."""
        return int(self.mask.sum())

    @property
    def target_density(self) -> float:
        """The density of S that pruning schedules drive towards (`doping_density`)."""
        return self.doping_density

    @property
    def density(self) -> float:
        """Fraction of S kept by the mask now."""
        return self.doping_nonzeros / self.mask.numel()

    def sparse_overlay(self) -> torch.Tensor:
        """S with pruned entries zeroed, (out_features, in_features)."""
        return self.overlay * self.mask

    def prune_to(self, density: float | None = None) -> int:
        """Keep the largest-magnitude entries of S so a fraction `density` remains.

        One step of a gradual schedule (Zhu & Gupta 2017); None means `doping_density`.
        Pruned entries are zeroed and never come back. Keeps round(density m n) entries.

        Returns:
            The number of non-zeros kept.

        Raises:
            InvalidCompressionError: `density` is outside [0, 1] or above the current
                density (pruning only removes entries).
        """
        density = self.doping_density if density is None else _check_fraction(density, "density", upper_inclusive=True)
        total = self.mask.numel()
        keep = math.floor(density * total + 0.5)
        if keep > self.doping_nonzeros:
            raise InvalidCompressionError(
                f"density: {density} keeps {keep} entries but only {self.doping_nonzeros} are left; "
                "pruning cannot regrow"
            )
        with torch.no_grad():
            scores = torch.where(self.mask, self.overlay.abs(), torch.full_like(self.overlay, -1.0)).flatten()
            mask = torch.zeros(total, dtype=torch.bool, device=self.mask.device)
            mask[torch.topk(scores, keep).indices] = True
            self.mask.copy_(mask.view_as(self.mask))
            self.overlay.mul_(self.mask)
        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n) -> (..., m): vec trick plus the masked overlay, CMR on S x in training."""
        overlay = nn.functional.linear(x, self.sparse_overlay())
        overlay = nn.functional.dropout(overlay, self.comatrix_dropout, self.training)
        return self._add_bias(kronecker_matvec(x, self.a, self.b) + overlay)

    def dense_weight(self) -> torch.Tensor:
        """A kron B + S (masked), (out_features, in_features)."""
        return kronecker_matrix(self.a, self.b) + self.sparse_overlay()

    def weight_structure(self) -> Kronecker:
        return Kronecker(self.factors, doping_nonzeros=self.doping_nonzeros)

    def stored_parameters(self) -> int:
        return self.a.numel() + self.b.numel() + self.doping_nonzeros

    @classmethod
    def for_compression(
        cls, in_features: int, out_features: int, factor: float, bias: bool = True, **fixed: Any
    ) -> DopedKroneckerLinear:
        """The doping_density whose compression AFTER `prune_to()` is closest to `factor`.

        Keeps the factors (auto, or `factors` in `fixed`) and sets nnz(S) to
        m n / factor - (m1 n1 + m2 n2), clamped to [0, m n]. The reachable factors run
        from m n / (m1 n1 + m2 n2 + m n) (no pruning) to the plain KP factor
        m n / (m1 n1 + m2 n2) (density 0), in steps of one non-zero, so any target in
        that range is met to within one parameter. The instance starts at density 1:
        the trainer anneals it with `prune_to`.

        Raises:
            InvalidCompressionError: `factor` is not positive, or `doping_density` is in
                `fixed`.
        """
        _check_factor(factor, fixed, ("doping_density",))
        dense = in_features * out_features
        factors = fixed.pop("factors", None)
        factors = (
            kronecker_factors(out_features, in_features)
            if factors is None
            else check_factors(factors, out_features, in_features)
        )
        nonzeros = min(max(round(dense / factor) - kronecker_parameters(factors), 0), dense)
        return cls(in_features, out_features, bias, doping_density=nonzeros / dense, factors=factors, **fixed)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, doping_density={self.doping_density}, "
            f"doping_nonzeros={self.doping_nonzeros}, comatrix_dropout={self.comatrix_dropout}"
        )


def _check_fraction(value: Any, knob: str, upper_inclusive: bool) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and (0 <= value <= 1 if upper_inclusive else 0 <= value < 1):
        return float(value)
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"
    raise InvalidCompressionError(f"{knob}: must be a number in {interval}, got {value!r}")
