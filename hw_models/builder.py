"""NetworkBuilder: write a network layer by layer; shapes are inferred.

Every numeric argument may be an int or a numpy array with one entry per candidate
network. With ints, `build()` gives a validated NetworkSpec; with arrays,
`build_batch()` gives a NetworkBatch that `estimate_batch` costs in one vectorised
pass: how a search space screens thousands of candidates before training any.

    b = NetworkBuilder("kws", input_shape=(49, 10, 1))
    x = b.conv2d(b.input, 64, kernel=(10, 4), stride=2, activation="relu")
    x = b.depthwise_conv2d(x, kernel=3, activation="relu")
    x = b.linear(b.flatten(b.global_avg_pool(x)), 12)
    net = b.build()
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np

from hw_models import _weights as W
from hw_models._graph import ATTRS, Graph, fold
from hw_models._ops import RNN_GATES, OpView, rule
from hw_models.errors import InvalidNetworkError
from hw_models.ir import (
    STRUCTURES,
    Dense,
    LayerSpec,
    Mixed,
    NetworkSpec,
    OpKind,
    TensorSpec,
    WeightSpec,
    WeightStructure,
    structure_fields,
)

_PAIR_ATTRS = ("stride", "dilation", "kernel")


@dataclass
class NetworkBatch:
    """Networks of one topology whose numbers are arrays of length `size`."""

    name: str
    size: int
    graph: Graph


def _pair(v: Any) -> tuple[Any, Any]:
    return tuple(v) if isinstance(v, tuple | list) else (v, v)


def _size_of(value: Any) -> int:
    if isinstance(value, np.ndarray) and value.ndim:
        return value.shape[0]
    if isinstance(value, tuple | list):
        return max((_size_of(v) for v in value), default=1)
    if isinstance(value, dict):
        return max((_size_of(v) for v in value.values()), default=1)
    if hasattr(value, "__dataclass_fields__"):
        return max((_size_of(getattr(value, f)) for f in value.__dataclass_fields__), default=1)
    return 1


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise InvalidNetworkError(
                f"{where}: build() needs one value, got an array of {value.size}; use build_batch()"
            )
        value = value.reshape(-1)[0]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, tuple | list):
        return tuple(_scalar(v, where) for v in value)
    return value


def _single_kind(kind: str | np.ndarray, where: str) -> str:
    """The one structure kind of a weight: a `Mixed` must hold a single distinct kind."""
    if isinstance(kind, str):
        return kind
    distinct = sorted(set(np.asarray(kind).ravel().tolist()))
    if len(distinct) != 1:
        raise InvalidNetworkError(
            f"{where}: build() needs one structure kind, got a Mixed of {distinct}; use build_batch()"
        )
    return distinct[0]


class NetworkBuilder:
    """Builds a NetworkSpec (ints) or a NetworkBatch (arrays) with inferred shapes."""

    def __init__(self, name: str, input_shape: Sequence[Any], bits: int = 8, input_name: str = "input") -> None:
        self.name = name
        self._inputs: list[tuple[str, tuple[Any, ...], Any]] = []
        self._shapes: dict[str, tuple[Any, ...]] = {}
        self._bits: dict[str, Any] = {}
        self._views: list[OpView] = []
        self._counts: dict[str, int] = {}
        self.input = self.add_input(input_name, input_shape, bits)

    def add_input(self, name: str, shape: Sequence[Any], bits: int = 8) -> str:
        """Declare another graph input; returns its tensor name."""
        self._inputs.append((name, tuple(shape), bits))
        self._shapes[name], self._bits[name] = tuple(shape), bits
        return name

    def shape(self, tensor: str) -> tuple[Any, ...]:
        """The (inferred) shape of a tensor."""
        return self._shapes[tensor]

    # --- generic --------------------------------------------------------------------

    def add(
        self,
        op: str,
        inputs: Sequence[str],
        attrs: dict[str, Any] | None = None,
        weights: dict[str, tuple[Sequence[Any], Any, WeightStructure | Mixed]] | None = None,
        name: str | None = None,
        bits: Any = None,
    ) -> str:
        """Append any op; `weights` maps a name to (shape, bits, structure).

        A structure may be a `Mixed` (one kind per candidate) for `build_batch`.
        """
        rule(op)
        if name is None:
            self._counts[op] = self._counts.get(op, 0) + 1
            name = f"{op}_{self._counts[op]}"
        attrs = dict(attrs or {})
        schema = ATTRS[op]
        unknown = sorted(set(attrs) - set(schema))
        if unknown:
            raise InvalidNetworkError(f"{name}: unknown attribute(s) {unknown} for op {op!r}; valid: {sorted(schema)}")
        full = {}
        for key, (default, _) in schema.items():
            value = attrs.get(key, default)
            full[key] = _pair(value) if key in _PAIR_ATTRS and value is not None else value
        if "kernel" in full and full["stride"] is None:
            full["stride"] = full["kernel"]
        for key in inputs:
            if key not in self._shapes:
                raise InvalidNetworkError(f"{name}: input tensor {key!r} does not exist")
        wviews, wshapes = {}, {}
        for wname, (shape, wbits, structure) in (weights or {}).items():
            shape = tuple(shape)
            wviews[wname] = W.WeightView(
                shape[0], math.prod(shape[1:]), wbits, structure.kind, structure_fields(structure)
            )
            wshapes[wname] = shape
        view = OpView(
            name=name,
            kind=str(op),
            attrs=full,
            in_shapes=[self._shapes[i] for i in inputs],
            in_bits=[self._bits[i] for i in inputs],
            out_shape=(),
            out_bits=self._bits[inputs[0]] if bits is None else bits,
            weights=wviews,
            weight_shapes=wshapes,
            bias=bool(full.get("bias", False)),
            input_names=list(inputs),
            output_name=name,
        )
        view.out_shape = tuple(rule(op).shape(view))
        self._views.append(view)
        self._shapes[name], self._bits[name] = view.out_shape, view.out_bits
        return name

    # --- layers ---------------------------------------------------------------------

    def conv2d(
        self, x: str, out_channels: Any, kernel: Any, stride: Any = 1, padding: str = "same",
        groups: int = 1, dilation: Any = 1, activation: str = "none", bias: bool = True,
        weight_bits: Any = 8, structure: WeightStructure | Mixed | None = None, name: str | None = None,
    ) -> str:
        kh, kw = _pair(kernel)
        c = self._shapes[x][2]
        shape = (out_channels, kh, kw, c // groups)
        attrs = {"stride": stride, "padding": padding, "groups": groups, "dilation": dilation,
                 "activation": activation, "bias": bias}
        return self.add(OpKind.CONV2D, [x], attrs, {"weight": (shape, weight_bits, structure or Dense())}, name)

    def depthwise_conv2d(
        self, x: str, kernel: Any, stride: Any = 1, padding: str = "same", multiplier: Any = 1,
        dilation: Any = 1, activation: str = "none", bias: bool = True, weight_bits: Any = 8,
        structure: WeightStructure | Mixed | None = None, name: str | None = None,
    ) -> str:
        kh, kw = _pair(kernel)
        c = self._shapes[x][2]
        attrs = {"stride": stride, "padding": padding, "dilation": dilation, "activation": activation, "bias": bias}
        weights = {"weight": ((c * multiplier, kh, kw, 1), weight_bits, structure or Dense())}
        return self.add(OpKind.DEPTHWISE_CONV2D, [x], attrs, weights, name)

    def linear(
        self, x: str, out_features: Any, activation: str = "none", bias: bool = True,
        weight_bits: Any = 8, structure: WeightStructure | Mixed | None = None, name: str | None = None,
    ) -> str:
        shape = (out_features, self._shapes[x][-1])
        attrs = {"activation": activation, "bias": bias}
        return self.add(OpKind.LINEAR, [x], attrs, {"weight": (shape, weight_bits, structure or Dense())}, name)

    def avg_pool2d(
        self, x: str, kernel: Any, stride: Any = None, padding: str = "valid", name: str | None = None
    ) -> str:
        return self.add(OpKind.AVG_POOL2D, [x], {"kernel": kernel, "stride": stride, "padding": padding}, name=name)

    def max_pool2d(
        self, x: str, kernel: Any, stride: Any = None, padding: str = "valid", name: str | None = None
    ) -> str:
        return self.add(OpKind.MAX_POOL2D, [x], {"kernel": kernel, "stride": stride, "padding": padding}, name=name)

    def global_avg_pool(self, x: str, name: str | None = None) -> str:
        return self.add(OpKind.GLOBAL_AVG_POOL, [x], name=name)

    def add_tensors(self, inputs: Sequence[str], activation: str = "none", name: str | None = None) -> str:
        """Element-wise sum (a residual connection)."""
        return self.add(OpKind.ADD, list(inputs), {"activation": activation}, name=name)

    def concat(self, inputs: Sequence[str], axis: int = -1, name: str | None = None) -> str:
        return self.add(OpKind.CONCAT, list(inputs), {"axis": axis}, name=name)

    def reshape(self, x: str, shape: Sequence[int], name: str | None = None) -> str:
        return self.add(OpKind.RESHAPE, [x], {"shape": tuple(shape)}, name=name)

    def flatten(self, x: str, name: str | None = None) -> str:
        return self.add(OpKind.FLATTEN, [x], name=name)

    def softmax(self, x: str, name: str | None = None) -> str:
        return self.add(OpKind.SOFTMAX, [x], name=name)

    def relu(self, x: str, name: str | None = None) -> str:
        return self.add(OpKind.RELU, [x], name=name)

    def relu6(self, x: str, name: str | None = None) -> str:
        return self.add(OpKind.RELU6, [x], name=name)

    def batch_norm(self, x: str, name: str | None = None) -> str:
        return self.add(OpKind.BATCH_NORM, [x], name=name)

    def _rnn(
        self, kind: str, x: str, hidden: Any, return_sequences: bool, bias: bool, weight_bits: Any,
        w_ih: WeightStructure | Mixed | None, w_hh: WeightStructure | Mixed | None, name: str | None,
    ) -> str:
        g = RNN_GATES[kind]
        f = self._shapes[x][1]
        weights = {
            "w_ih": ((g * hidden, f), weight_bits, w_ih or Dense()),
            "w_hh": ((g * hidden, hidden), weight_bits, w_hh or Dense()),
        }
        return self.add(kind, [x], {"return_sequences": return_sequences, "bias": bias}, weights, name)

    def lstm(
        self, x: str, hidden: Any, return_sequences: bool = False, bias: bool = True, weight_bits: Any = 8,
        w_ih: WeightStructure | Mixed | None = None, w_hh: WeightStructure | Mixed | None = None,
        name: str | None = None,
    ) -> str:
        return self._rnn(OpKind.LSTM, x, hidden, return_sequences, bias, weight_bits, w_ih, w_hh, name)

    def gru(
        self, x: str, hidden: Any, return_sequences: bool = False, bias: bool = True, weight_bits: Any = 8,
        w_ih: WeightStructure | Mixed | None = None, w_hh: WeightStructure | Mixed | None = None,
        name: str | None = None,
    ) -> str:
        return self._rnn(OpKind.GRU, x, hidden, return_sequences, bias, weight_bits, w_ih, w_hh, name)

    def embedding(self, x: str, vocab: Any, dim: Any, weight_bits: Any = 8, name: str | None = None) -> str:
        return self.add(OpKind.EMBEDDING, [x], weights={"weight": ((vocab, dim), weight_bits, Dense())}, name=name)

    # --- results --------------------------------------------------------------------

    def _outputs(self, outputs: Sequence[str] | None) -> list[str]:
        if outputs is None:
            if not self._views:
                raise InvalidNetworkError("layers: a network needs at least one layer")
            return [self._views[-1].output_name]
        return list(outputs)

    def build(self, outputs: Sequence[str] | None = None) -> NetworkSpec:
        """A validated NetworkSpec; every number must be a single value."""
        layers, tensors = [], []
        for v in self._views:
            where = f"layer {v.name!r}"
            attrs = {k: _scalar(a, where) for k, a in v.attrs.items()}
            weights = {}
            for wname, wv in v.weights.items():
                cls = STRUCTURES[_single_kind(wv.kind, f"{where}, weight {wname!r}")]
                names = {f.name for f in dataclass_fields(cls)}
                fields = {k: _scalar(val, where) for k, val in wv.fields.items() if k in names}
                weights[wname] = WeightSpec(
                    shape=_scalar(v.weight_shapes[wname], where), bits=_scalar(wv.bits, where), structure=cls(**fields)
                )
            layers.append(LayerSpec(v.name, v.kind, tuple(v.input_names), v.output_name, attrs, weights))
            tensors.append(TensorSpec(v.output_name, _scalar(v.out_shape, where), _scalar(v.out_bits, where)))
        inputs = tuple(TensorSpec(n, _scalar(s, n), _scalar(b, n)) for n, s, b in self._inputs)
        return NetworkSpec(self.name, inputs, tuple(layers), tuple(tensors), tuple(self._outputs(outputs)))

    def build_batch(self, outputs: Sequence[str] | None = None) -> NetworkBatch:
        """A NetworkBatch; array arguments must all have one length N (ints broadcast)."""
        # fold() rewrites attrs, bias, fused and input_names of the views it keeps: copy
        # just those (the arrays inside are shared, never written), not the whole views.
        views = [
            dataclasses.replace(v, attrs=dict(v.attrs), fused=list(v.fused), input_names=list(v.input_names))
            for v in self._views
        ]
        size = max([_size_of(v.__dict__) for v in views] + [_size_of(self._inputs)])
        graph = fold(views, [n for n, _, _ in self._inputs], self._outputs(outputs))
        return NetworkBatch(self.name, size, graph)

