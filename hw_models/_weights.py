"""Counts for each weight structure: parameters, non-zeros, stored bytes, MACs.

Every function takes a `WeightView` whose numbers may be Python ints or numpy arrays
(one entry per network of a batch), so single-network and batch costing share these
formulas. In a batch the kind may be an array too (from `hw_models.ir.Mixed`): each
function then evaluates every kind present on the whole batch and keeps, row by row,
the result of that row's kind. The matrix view is m rows x n cols (see hw_models.ir).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from hw_models.errors import UnsupportedLayerError

# Bytes of one index entry as a function of the largest value it must hold: the
# smallest unsigned integer type that fits, as sparse MCU kernels store them
# (e.g. Trommer et al., "dCSR", arXiv 2101.04942 use 8/16-bit deltas).
_INDEX_LIMITS = ((256, 1), (65536, 2))


def index_bytes(max_value: Any) -> Any:
    """Bytes of an unsigned index able to hold values up to `max_value` (exclusive)."""
    max_value = np.asarray(max_value)
    return np.where(max_value <= _INDEX_LIMITS[0][0], 1, np.where(max_value <= _INDEX_LIMITS[1][0], 2, 4))


def packed_bytes(count: Any, bits: Any) -> Any:
    """Bytes to hold `count` values of `bits` bits each, packed."""
    return (np.asarray(count) * bits + 7) // 8


@dataclass
class WeightView:
    """A weight as the formulas see it; numbers may be ints or equal-length arrays.

    `kind` is a structure kind name, or an (N,) array of them for a batch of mixed
    structures; `fields` then holds the union of those structures' fields.
    """

    rows: Any
    cols: Any
    bits: Any
    kind: str | np.ndarray
    fields: dict[str, Any] = field(default_factory=dict)


def by_kind(w: WeightView, formula: Callable[[WeightView], Any]) -> Any:
    """`formula(w)`, row by row with each row's own kind when `w.kind` is an array.

    Every kind present is evaluated on the whole batch (the fields other kinds use hold
    valid filler values there) and `np.where` keeps each row's own result, so entry i
    equals the formula of row i's kind on row i.
    """
    if isinstance(w.kind, str):
        return formula(w)
    out: Any = 0
    for kind in np.unique(w.kind):
        out = np.where(w.kind == kind, formula(replace(w, kind=str(kind))), out)
    return out


def is_kind(w: WeightView, kinds: Collection[str]) -> bool | np.ndarray:
    """Whether the structure is one of `kinds`; an (N,) mask for an array of kinds."""
    if isinstance(w.kind, str):
        return w.kind in kinds
    return np.isin(w.kind, list(kinds))


def _per_row_kind(formula: Callable[[WeightView], Any]) -> Callable[[WeightView], Any]:
    """Make a single-kind formula accept an array of kinds (see `by_kind`)."""

    @functools.wraps(formula)
    def wrapper(w: WeightView) -> Any:
        return by_kind(w, formula)

    return wrapper


def _kron_params(f: Any) -> Any:
    (m1, n1), (m2, n2) = f
    return m1 * n1 + m2 * n2


def _kron_macs(f: Any) -> Any:
    # Vec trick: (A kron B) x = vec(B X A^T) with X = x reshaped to (n2, n1). The two
    # association orders cost n1*m2*(n2 + m1) and m1*n2*(n1 + m2) MACs; a kernel picks
    # the cheaper one (Thakker et al., arXiv 1906.02876, Sec. 3).
    (m1, n1), (m2, n2) = f
    return np.minimum(n1 * m2 * (n2 + m1), m1 * n2 * (n1 + m2))


def _sparse_counts(w: WeightView) -> tuple[Any, Any]:
    """(stored values, index bytes) of a sparse matrix."""
    f = w.fields
    m, n = w.rows, w.cols
    fmt = f["format"]
    if fmt == "block":
        bh, bw = f["block_shape"]
        block_rows = (m + bh - 1) // bh
        block_cols = (n + bw - 1) // bw
        kept_blocks = np.floor(f["density"] * block_rows * block_cols + 0.5).astype(np.int64)
        kept_blocks = np.maximum(kept_blocks, 1)
        values = kept_blocks * bh * bw
        # CSR over the block grid: a column index per kept block + block_rows + 1 pointers.
        idx = kept_blocks * index_bytes(block_cols) + (block_rows + 1) * index_bytes(kept_blocks + 1)
        return values, idx
    nnz = np.maximum(np.floor(f["density"] * m * n + 0.5).astype(np.int64), 1)
    if fmt == "csr":
        idx = nnz * index_bytes(n) + (m + 1) * index_bytes(nnz + 1)
    else:  # bitmask: one bit per element of the dense matrix
        idx = (m * n + 7) // 8
    return nnz, idx


def _sparse_bytes(w: WeightView) -> tuple[Any, Any]:
    """(bytes as stored sparse, whether storing it dense is smaller or equal)."""
    values, idx = _sparse_counts(w)
    sparse = packed_bytes(values, w.bits) + idx
    dense = packed_bytes(w.rows * w.cols, w.bits)
    return sparse, dense <= sparse


@_per_row_kind
def params(w: WeightView) -> Any:
    """Stored parameters of the structure (sparse: the dense count, before pruning)."""
    m, n, f = w.rows, w.cols, w.fields
    match w.kind:
        case "dense" | "sparse":
            return m * n
        case "low_rank":
            return f["rank"] * (m + n)
        case "kronecker":
            return _kron_params(f["factors"]) + f["doping_nonzeros"]
        case "hybrid_kronecker":
            return f["dense_rows"] * n + _kron_params(f["factors"])
        case "hmd":
            # arXiv 1906.04886 Eq. (1): r*n dense + per rank-1 block one column vector of
            # (m - r) and one row vector covering its share of the n columns.
            return f["dense_rows"] * n + f["rank1_blocks"] * (m - f["dense_rows"]) + n
    raise UnsupportedLayerError(f"unknown weight structure {w.kind!r}")


@_per_row_kind
def nonzero(w: WeightView) -> Any:
    """Stored non-zero values (all of them for factorised structures)."""
    if w.kind == "sparse":
        return _sparse_counts(w)[0]
    return params(w)


@_per_row_kind
def storage_bytes(w: WeightView) -> Any:
    """Bytes in the model file: values packed at `bits` plus sparse index overhead."""
    if w.kind == "sparse":
        # A deployment never stores a sparse matrix larger than its dense form: past
        # that density it stores (and multiplies) the dense matrix.
        sparse, as_dense = _sparse_bytes(w)
        return np.where(as_dense, packed_bytes(w.rows * w.cols, w.bits), sparse)
    if w.kind == "kronecker":
        # Doping non-zeros are stored in CSR over the full matrix.
        d = w.fields["doping_nonzeros"]
        base = packed_bytes(_kron_params(w.fields["factors"]), w.bits)
        doping = np.where(
            d > 0,
            packed_bytes(d, w.bits) + d * index_bytes(w.cols) + (w.rows + 1) * index_bytes(d + 1),
            0,
        )
        return base + doping
    return packed_bytes(params(w), w.bits)


@_per_row_kind
def stored_arrays(w: WeightView) -> Any:
    """How many separate arrays (model-file tensors) the structure is stored as."""
    if w.kind == "kronecker":
        return 2 + (np.asarray(w.fields["doping_nonzeros"]) > 0)
    return {"dense": 1, "sparse": 1, "low_rank": 2, "hybrid_kronecker": 3, "hmd": 3}[w.kind]


@_per_row_kind
def matvec_macs(w: WeightView) -> Any:
    """MACs of one matrix-vector product with the structure's efficient algorithm."""
    m, n, f = w.rows, w.cols, w.fields
    match w.kind:
        case "dense":
            return m * n
        case "sparse":
            # Stored dense (see storage_bytes), it runs the dense kernel.
            return np.where(_sparse_bytes(w)[1], m * n, _sparse_counts(w)[0])
        case "low_rank":
            return f["rank"] * (m + n)
        case "kronecker":
            return _kron_macs(f["factors"]) + f["doping_nonzeros"]
        case "hybrid_kronecker":
            return f["dense_rows"] * n + _kron_macs(f["factors"])
        case "hmd":
            # arXiv 1906.04886 Eq. (2) / Algorithm 2: r*n for the dense rows, one dot
            # product per rank-1 block (n in total), then each of the (m - r) lower
            # outputs accumulates one scaled entry per block.
            return f["dense_rows"] * n + n + f["rank1_blocks"] * (m - f["dense_rows"])
    raise UnsupportedLayerError(f"unknown weight structure {w.kind!r}")
