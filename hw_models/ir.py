"""The network IR: what the cost model reads, independent of any training framework.

Layout conventions (documented in docs/ir.md):
- activation shapes exclude the batch and are channels-last, as TFLite Micro stores
  them: images (H, W, C), sequences (T, F), vectors (F,);
- weights are stored as a logical shape whose first axis is the output axis:
  conv2d (O, KH, KW, I / groups), depthwise_conv2d (O, KH, KW, 1) with O = I x multiplier,
  linear (O, I), lstm/gru gate matrices (G x H, F) and (G x H, H), embedding (V, D).
  Every weight is also seen as a matrix (rows = first axis, cols = the rest); the
  compression structures below describe that matrix.

All classes are frozen, hashable and picklable; a `NetworkSpec` is validated when it
is built, so an invalid one never exists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np

from hw_models.errors import InvalidNetworkError

IR_FORMAT = "sparse-nas/network"
IR_VERSION = 1
VALID_BITS = (2, 4, 8, 16, 32)


class OpKind(StrEnum):
    """Op kinds the cost model knows. Anything else raises UnsupportedLayerError."""

    CONV2D = "conv2d"
    DEPTHWISE_CONV2D = "depthwise_conv2d"
    LINEAR = "linear"
    AVG_POOL2D = "avg_pool2d"
    MAX_POOL2D = "max_pool2d"
    GLOBAL_AVG_POOL = "global_avg_pool"
    ADD = "add"
    CONCAT = "concat"
    RESHAPE = "reshape"
    FLATTEN = "flatten"
    SOFTMAX = "softmax"
    RELU = "relu"
    RELU6 = "relu6"
    BATCH_NORM = "batch_norm"
    LSTM = "lstm"
    GRU = "gru"
    EMBEDDING = "embedding"


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return FrozenMap(value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, FrozenMap):
        return {k: _thaw(v) for k, v in value.items()}
    return value


class FrozenMap(Mapping[str, Any]):
    """An immutable, hashable mapping with sorted keys (lists inside become tuples)."""

    __slots__ = ("_items",)

    def __init__(self, data: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()) -> None:
        items = data.items() if isinstance(data, Mapping) else data
        self._items = tuple(sorted((str(k), _freeze(v)) for k, v in items))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._items == other._items
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._items)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._items,))


# --- weight structures -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dense:
    """A plain dense matrix."""

    kind: ClassVar[str] = "dense"


@dataclass(frozen=True, slots=True)
class Sparse:
    """Unstructured or block sparsity with a storage format.

    Attributes:
        density: fraction of stored non-zeros (of blocks, for `block`), in (0, 1].
        format: `csr` (values + column indices + row pointers), `bitmask` (values + one
            bit per element) or `block` (dense blocks of `block_shape`, CSR over blocks).
        block_shape: (rows, cols) of one block; only used by `block`.
    """

    density: float
    format: str = "csr"
    block_shape: tuple[int, int] = (1, 1)
    kind: ClassVar[str] = "sparse"
    FORMATS: ClassVar[tuple[str, ...]] = ("csr", "bitmask", "block")


@dataclass(frozen=True, slots=True)
class LowRank:
    """W = U V with U (m x rank), V (rank x n) (low-rank matrix factorisation, LMF)."""

    rank: int
    kind: ClassVar[str] = "low_rank"


@dataclass(frozen=True, slots=True)
class Kronecker:
    """W = A kron B, A (m1 x n1), B (m2 x n2), plus `doping_nonzeros` sparse extras.

    Thakker et al., arXiv 1906.02876 (KP) and arXiv 2001.08896 (doped KP).
    """

    factors: tuple[tuple[int, int], tuple[int, int]]
    doping_nonzeros: int = 0
    kind: ClassVar[str] = "kronecker"


@dataclass(frozen=True, slots=True)
class HybridKronecker:
    """The first `dense_rows` rows dense, the remaining rows A kron B.

    Hybrid KP (Thakker et al., arXiv 2001.08896 / 2010.03193): `dense_rows` is the knob
    that sets the compression factor between KP (0) and dense (m).
    """

    dense_rows: int
    factors: tuple[tuple[int, int], tuple[int, int]]
    kind: ClassVar[str] = "hybrid_kronecker"


@dataclass(frozen=True, slots=True)
class HMD:
    """Hybrid Matrix Decomposition (Thakker et al., arXiv 1906.04886).

    A dense upper block of `dense_rows` rows; below it, the (m - r) x n block is split
    column-wise into `rank1_blocks` blocks, each the outer product of two vectors
    (the D1 variant uses 2 blocks).
    """

    dense_rows: int
    rank1_blocks: int = 2
    kind: ClassVar[str] = "hmd"


WeightStructure = Dense | Sparse | LowRank | Kronecker | HybridKronecker | HMD
STRUCTURES: dict[str, type] = {
    cls.kind: cls for cls in (Dense, Sparse, LowRank, Kronecker, HybridKronecker, HMD)
}


@dataclass(frozen=True, eq=False)
class Mixed:
    """A different structure kind per network of a batch (`NetworkBuilder.build_batch` only).

    `kind` holds one structure kind name per network (an array of N strings); every
    other field is the union of the structures' fields, each a number or an array of N,
    read only on the rows whose kind has that field (the defaults fill the rest). A
    NetworkSpec never holds one: `NetworkBuilder.build` turns a Mixed of one distinct
    kind into that structure and refuses several.

    Attributes:
        kind: (N,) structure kind names, each a key of `STRUCTURES`.
        density, format, block_shape: `Sparse`'s (`format` is one string, shared by
            every sparse row).
        rank: `LowRank`'s.
        factors: `Kronecker`'s and `HybridKronecker`'s, as ((m1, n1), (m2, n2)).
        doping_nonzeros: `Kronecker`'s.
        dense_rows: `HybridKronecker`'s and `HMD`'s.
        rank1_blocks: `HMD`'s.
    """

    kind: Any
    density: Any = 1.0
    format: str = "csr"
    block_shape: tuple[Any, Any] = (1, 1)
    rank: Any = 1
    factors: tuple[tuple[Any, Any], tuple[Any, Any]] = ((1, 1), (1, 1))
    doping_nonzeros: Any = 0
    dense_rows: Any = 0
    rank1_blocks: Any = 2

    def __post_init__(self) -> None:
        kinds = np.asarray(self.kind)
        unknown = sorted(set(kinds.ravel().tolist()) - set(STRUCTURES))
        if kinds.ndim != 1 or unknown:
            raise InvalidNetworkError(
                f"Mixed.kind: expected a 1-d array of structure kinds from {sorted(STRUCTURES)}, "
                f"got shape {kinds.shape} with unknown {unknown}"
            )
        object.__setattr__(self, "kind", kinds)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An activation tensor: name, shape without batch (channels-last), element bits."""

    name: str
    shape: tuple[int, ...]
    bits: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def size_bytes(self) -> int:
        return (self.numel * self.bits + 7) // 8


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """A weight: logical shape (output axis first), bits per element and structure."""

    shape: tuple[int, ...]
    bits: int = 8
    structure: WeightStructure = field(default_factory=Dense)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(rows, cols) of the matrix view: first axis x product of the rest."""
        return self.shape[0], math.prod(self.shape[1:])


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One op: kind, input tensor names, output tensor name, attributes and weights.

    `attrs` and `weights` accept any mapping and are stored as immutable `FrozenMap`s.
    """

    name: str
    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: Mapping[str, Any] = field(default_factory=FrozenMap)
    weights: Mapping[str, WeightSpec] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "attrs", FrozenMap(self.attrs))
        object.__setattr__(self, "weights", FrozenMap(self.weights))


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """A network: graph inputs, layers in execution order, all other tensors, outputs.

    Validated on construction (names, execution order, attributes, weight shapes and
    structures, and every declared shape against shape inference).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    layers: tuple[LayerSpec, ...]
    tensors: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        for attr in ("inputs", "layers", "tensors", "outputs"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        from hw_models._validate import validate_network

        validate_network(self)

    def tensor(self, name: str) -> TensorSpec:
        """The input or intermediate tensor called `name`."""
        for t in self.inputs + self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    # --- JSON form (docs/ir.md) ---------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON form (docs/ir.md) as plain Python data."""
        return {
            "format": IR_FORMAT,
            "version": IR_VERSION,
            "name": self.name,
            "inputs": [_tensor_to_dict(t) for t in self.inputs],
            "layers": [_layer_to_dict(layer) for layer in self.layers],
            "tensors": [_tensor_to_dict(t) for t in self.tensors],
            "outputs": list(self.outputs),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        """Parse the JSON form; errors name the offending field (`layers[2].attrs...`).

        Tensors that no `tensors` entry declares get their shape by shape inference and
        the bits of the layer's first input, so hand-written files may omit them.
        """
        from hw_models._validate import parse_network

        return parse_network(data)

    @classmethod
    def from_json(cls, text: str) -> NetworkSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidNetworkError(f"network file is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def structure_fields(structure: WeightStructure | Mixed) -> dict[str, Any]:
    """The numbers that define a structure (its dataclass fields, `kind` excluded)."""
    return {f.name: getattr(structure, f.name) for f in fields(structure) if f.name != "kind"}


def structure_to_dict(structure: WeightStructure) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": structure.kind}
    out.update({k: _thaw(v) for k, v in structure_fields(structure).items()})
    return out


def _tensor_to_dict(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "shape": list(t.shape), "bits": t.bits}


def _layer_to_dict(layer: LayerSpec) -> dict[str, Any]:
    return {
        "name": layer.name,
        "op": layer.op,
        "inputs": list(layer.inputs),
        "output": layer.output,
        "attrs": _thaw(layer.attrs),
        "weights": {
            k: {"shape": list(w.shape), "bits": w.bits, "structure": structure_to_dict(w.structure)}
            for k, w in layer.weights.items()
        },
    }
