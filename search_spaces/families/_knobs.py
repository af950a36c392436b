"""One compression knob for every method: a compression level, mapped to each method's knob.

Families search a compression method per layer and a level L (compression factor
2^L of the weight matrix). This module turns (method, rows, cols, level) into the
method's own knob and its hw_models structure. The same functions serve `build`
(ints) and batch costing (numpy arrays), so a model and its costed network agree.
"""

from __future__ import annotations

from dataclasses import fields as dataclass_fields
from functools import lru_cache
from typing import Any

import numpy as np

from hw_models import HMD, Dense, HybridKronecker, Kronecker, LowRank, Mixed, Sparse, WeightStructure
from hw_models.ir import structure_fields
from search_spaces.compression import BaseCompressedLinear, kronecker_factors, make_linear

METHODS = ("dense", "magnitude_pruning", "low_rank", "kronecker", "hybrid_kronecker", "doped_kronecker", "hmd")
MAX_LEVEL = 5  # 2^5 = 32x, the top of the range the Kronecker papers report (15-38x)
HMD_BLOCKS = 2  # the D1 variant of arXiv 1906.04886


def factor_of(level: Any) -> Any:
    """Compression factor of a level: 2^level."""
    return 2.0 ** np.asarray(level, dtype=np.float64)


# Large enough for every (rows, cols) a hybrid Kronecker search of dense rows visits
# (about 27,000 for 2,000 rnn candidates): a smaller cache thrashes and recomputes them.
@lru_cache(maxsize=65536)
def _kp(rows: int, cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return kronecker_factors(int(rows), int(cols))


def _kp_params(rows: int, cols: int) -> int:
    (m1, n1), (m2, n2) = _kp(rows, cols)
    return m1 * n1 + m2 * n2


@lru_cache(maxsize=65536)
def _hybrid_dense_rows(rows: int, cols: int, target_params: int) -> int:
    best, best_gap = 1, None
    for r in range(1, rows):
        gap = abs(r * cols + _kp_params(rows - r, cols) - target_params)
        if best_gap is None or gap < best_gap:
            best, best_gap = r, gap
    return best


def _map(fn: Any, *arrays: Any) -> Any:
    """Apply a scalar function elementwise over int arrays (or to scalars)."""
    if not any(isinstance(a, np.ndarray) and a.ndim for a in arrays):
        return fn(*(int(np.asarray(a)) for a in arrays))
    shape = np.broadcast(*arrays).shape
    flat = [np.broadcast_to(np.asarray(a), shape).ravel() for a in arrays]
    return np.asarray([fn(*(int(v) for v in vals)) for vals in zip(*flat, strict=True)]).reshape(shape)


def knobs(method: str, rows: Any, cols: Any, level: Any) -> dict[str, Any]:
    """The method's knobs for an (rows x cols) matrix at compression level `level`.

    rows, cols and level may be ints or equal-length integer arrays.
    """
    rows_a, cols_a = np.asarray(rows), np.asarray(cols)
    dense_params = rows_a * cols_a
    target = np.maximum(np.floor(dense_params / factor_of(level)).astype(np.int64), 1)
    scalar = not any(isinstance(v, np.ndarray) and v.ndim for v in (rows, cols, level))

    def out(value: Any) -> Any:
        return np.asarray(value).item() if scalar else value

    match method:
        case "dense" | "kronecker":
            return {}
        case "magnitude_pruning":
            return {"density": out(np.clip(target / dense_params, 1.0 / dense_params, 1.0))}
        case "low_rank":
            rank = np.clip(np.rint(target / (rows_a + cols_a)), 1, np.minimum(rows_a, cols_a)).astype(np.int64)
            return {"rank": out(rank)}
        case "hmd":
            r = np.rint((target - cols_a - HMD_BLOCKS * rows_a) / np.maximum(cols_a - HMD_BLOCKS, 1))
            return {"dense_rows": out(np.clip(r, 0, rows_a - 1).astype(np.int64))}
        case "hybrid_kronecker":
            return {"dense_rows": out(_map(_hybrid_dense_rows, rows, cols, target))}
        case "doped_kronecker":
            kp = _map(_kp_params, rows, cols)
            density = np.clip((target - kp) / dense_params, 0.0, 1.0)
            return {"doping_density": out(density)}
    raise ValueError(f"method: unknown {method!r}; valid: {', '.join(METHODS)}")


def structure(method: Any, rows: Any, cols: Any, level: Any) -> WeightStructure | Mixed:
    """The hw_models structure the method has at this level (the planned, trained state).

    `method` may be an (N,) array of method names (one per candidate of a batch, with
    rows, cols and level ints or arrays of N): the result is then a `Mixed` holding
    each candidate's structure, or the plain structure when all methods are equal.
    """
    if isinstance(method, np.ndarray) and method.ndim:
        return _mixed(method, rows, cols, level)
    k = knobs(method, rows, cols, level)
    match method:
        case "dense":
            return Dense()
        case "magnitude_pruning":
            return Sparse(k["density"], "csr")
        case "low_rank":
            return LowRank(k["rank"])
        case "hmd":
            return HMD(k["dense_rows"], HMD_BLOCKS)
    if method == "hybrid_kronecker":
        r = k["dense_rows"]
        factors = _factor_arrays(np.asarray(rows) - r, cols)
        return HybridKronecker(r, factors)
    factors = _factor_arrays(rows, cols)
    if method == "kronecker":
        return Kronecker(factors)
    doping = np.floor(np.asarray(k["doping_density"]) * np.asarray(rows) * np.asarray(cols) + 0.5).astype(np.int64)
    return Kronecker(factors, int(doping) if doping.ndim == 0 else doping)


def _mixed(methods: np.ndarray, rows: Any, cols: Any, level: Any) -> WeightStructure | Mixed:
    """`structure` of each candidate's method, gathered into one `Mixed`.

    Each method's structure is computed on its own candidates only, then its fields are
    scattered into the union arrays (the other rows keep `Mixed`'s filler defaults).
    """
    distinct = [str(m) for m in np.unique(methods)]
    if len(distinct) == 1:
        return structure(distinct[0], rows, cols, level)
    n = methods.shape[0]
    kinds = np.empty(n, dtype=object)
    union: dict[str, Any] = {}
    for method in distinct:
        rows_of = methods == method
        picked = [np.broadcast_to(np.asarray(a), (n,))[rows_of] for a in (rows, cols, level)]
        s = structure(method, *picked)
        kinds[rows_of] = s.kind
        for name, value in structure_fields(s).items():
            union[name] = _scatter(union.get(name, _FILLER[name]), value, rows_of, n)
    return Mixed(kinds.astype(str), **union)


# Mixed's defaults: valid values of every field for the rows whose kind lacks it.
_FILLER = {f.name: f.default for f in dataclass_fields(Mixed) if f.name != "kind"}


def _scatter(into: Any, value: Any, rows_of: np.ndarray, n: int) -> Any:
    """Write `value` (scalar or one entry per selected row) into the (N,) union field `into`.

    Strings (Sparse's format) are not per row: the one method that has them sets them.
    """
    if isinstance(into, tuple):
        return tuple(_scatter(a, b, rows_of, n) for a, b in zip(into, value, strict=True))
    if isinstance(value, str):
        return value
    out = np.array(np.broadcast_to(np.asarray(into), (n,)), dtype=np.result_type(into, value))
    out[rows_of] = value
    return out


def _factor_arrays(rows: Any, cols: Any) -> Any:
    if not any(isinstance(a, np.ndarray) and a.ndim for a in (rows, cols)):
        return _kp(int(np.asarray(rows)), int(np.asarray(cols)))
    shape = np.broadcast(rows, cols).shape
    r = np.broadcast_to(rows, shape).ravel()
    c = np.broadcast_to(cols, shape).ravel()
    f = np.asarray([np.asarray(_kp(int(a), int(b))).ravel() for a, b in zip(r, c, strict=True)])
    return ((f[:, 0], f[:, 1]), (f[:, 2], f[:, 3]))


def make_compressed_linear(
    method: str, in_features: int, out_features: int, level: int, bias: bool = True
) -> BaseCompressedLinear:
    """The torch layer of `method` at `level` for W of shape (out_features, in_features)."""
    return make_linear(method, in_features, out_features, bias=bias, **knobs(method, out_features, in_features, level))
