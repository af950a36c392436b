"""From a NetworkSpec to the op views the formulas read: validation and folding.

`validate_network` checks everything a cost needs and names the offending field;
`compile_network` also folds batch norm and standalone ReLU/ReLU6 into the op that
produces their input, as the TFLite converter does, so they cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hw_models import _weights as W
from hw_models._ops import BN_FOLDING_OPS, FUSING_OPS, RNN_GATES, OpView, rule
from hw_models.errors import InvalidNetworkError, UnsupportedLayerError
from hw_models.ir import (
    STRUCTURES,
    VALID_BITS,
    HybridKronecker,
    Kronecker,
    LayerSpec,
    LowRank,
    NetworkSpec,
    OpKind,
    Sparse,
    WeightSpec,
    structure_fields,
)

PADDINGS = ("same", "valid")
ACTIVATIONS = ("none", "relu", "relu6")


def _pair(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise InvalidNetworkError(f"{where}: expected a positive int or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


def _choice(options: tuple[str, ...]) -> Any:
    def check(value: Any, where: str) -> str:
        if value not in options:
            raise InvalidNetworkError(f"{where}: expected one of {list(options)}, got {value!r}")
        return value

    return check


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidNetworkError(f"{where}: expected true or false, got {value!r}")
    return value


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidNetworkError(f"{where}: expected an integer, got {value!r}")
    return value


def _pos_int(value: Any, where: str) -> int:
    if _int(value, where) <= 0:
        raise InvalidNetworkError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _target_shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not value:
        raise InvalidNetworkError(f"{where}: expected a non-empty list of integers, got {value!r}")
    dims = tuple(_int(v, where) for v in value)
    if sum(d == -1 for d in dims) > 1 or any(d == 0 or d < -1 for d in dims):
        raise InvalidNetworkError(f"{where}: dimensions must be positive, with at most one -1: {list(dims)}")
    return dims


_REQUIRED = object()
_CONV_ATTRS = {
    "stride": ((1, 1), _pair),
    "padding": ("same", _choice(PADDINGS)),
    "dilation": ((1, 1), _pair),
    "activation": ("none", _choice(ACTIVATIONS)),
    "bias": (True, _bool),
}
_POOL_ATTRS = {
    "kernel": (_REQUIRED, _pair),
    "stride": (None, _pair),  # None: equal to the kernel
    "padding": ("valid", _choice(PADDINGS)),
}
_RNN_ATTRS = {"return_sequences": (False, _bool), "bias": (True, _bool)}
ATTRS: dict[str, dict[str, tuple[Any, Any]]] = {
    OpKind.CONV2D: {**_CONV_ATTRS, "groups": (1, _pos_int)},
    OpKind.DEPTHWISE_CONV2D: _CONV_ATTRS,
    OpKind.LINEAR: {"activation": ("none", _choice(ACTIVATIONS)), "bias": (True, _bool)},
    OpKind.AVG_POOL2D: _POOL_ATTRS,
    OpKind.MAX_POOL2D: _POOL_ATTRS,
    OpKind.GLOBAL_AVG_POOL: {},
    OpKind.ADD: {"activation": ("none", _choice(ACTIVATIONS))},
    OpKind.CONCAT: {"axis": (-1, _int)},
    OpKind.RESHAPE: {"shape": (_REQUIRED, _target_shape)},
    OpKind.FLATTEN: {},
    OpKind.SOFTMAX: {},
    OpKind.RELU: {},
    OpKind.RELU6: {},
    OpKind.BATCH_NORM: {},
    OpKind.LSTM: _RNN_ATTRS,
    OpKind.GRU: _RNN_ATTRS,
    OpKind.EMBEDDING: {},
}


def normalize_attrs(kind: str, attrs: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Attributes with defaults filled in; unknown or invalid ones raise."""
    schema = ATTRS[kind]
    unknown = sorted(set(attrs) - set(schema))
    if unknown:
        raise InvalidNetworkError(
            f"{where}: unknown attribute(s) {unknown} for op {kind!r}; valid: {sorted(schema)}"
        )
    out: dict[str, Any] = {}
    for name, (default, check) in schema.items():
        if name in attrs:
            out[name] = check(attrs[name], f"{where}.{name}")
        elif default is _REQUIRED:
            raise InvalidNetworkError(f"{where}.{name}: required for op {kind!r}")
        else:
            out[name] = default
    if "kernel" in schema and out["stride"] is None:
        out["stride"] = out["kernel"]
    return out


def _check_structure(w: WeightSpec, where: str) -> None:
    s = w.structure
    m, n = w.matrix_shape
    where = f"{where}.structure"
    if isinstance(s, Sparse):
        if not 0 < s.density <= 1:
            raise InvalidNetworkError(f"{where}.density: must be in (0, 1], got {s.density!r}")
        if s.format not in Sparse.FORMATS:
            raise InvalidNetworkError(f"{where}.format: expected one of {list(Sparse.FORMATS)}, got {s.format!r}")
        _pair(tuple(s.block_shape), f"{where}.block_shape")
    elif isinstance(s, LowRank):
        if not 1 <= _int(s.rank, f"{where}.rank") <= min(m, n):
            raise InvalidNetworkError(f"{where}.rank: must be in [1, {min(m, n)}] for a {m}x{n} matrix, got {s.rank}")
    elif isinstance(s, Kronecker | HybridKronecker):
        factors = s.factors
        if len(factors) != 2:
            raise InvalidNetworkError(f"{where}.factors: expected two [rows, cols] pairs, got {factors!r}")
        (m1, n1), (m2, n2) = (_pair(tuple(f), f"{where}.factors[{i}]") for i, f in enumerate(factors))
        rows = m
        if isinstance(s, HybridKronecker):
            if not 0 < _int(s.dense_rows, f"{where}.dense_rows") < m:
                raise InvalidNetworkError(f"{where}.dense_rows: must be in [1, {m - 1}], got {s.dense_rows}")
            rows = m - s.dense_rows
        if m1 * m2 != rows or n1 * n2 != n:
            raise InvalidNetworkError(
                f"{where}.factors: ({m1}x{n1}) kron ({m2}x{n2}) is {m1 * m2}x{n1 * n2}, "
                f"but the matrix block is {rows}x{n}"
            )
        if isinstance(s, Kronecker) and not 0 <= _int(s.doping_nonzeros, f"{where}.doping_nonzeros") <= m * n:
            raise InvalidNetworkError(f"{where}.doping_nonzeros: must be in [0, {m * n}], got {s.doping_nonzeros}")
    elif s.kind == "hmd":
        if not 0 <= _int(s.dense_rows, f"{where}.dense_rows") < m:
            raise InvalidNetworkError(f"{where}.dense_rows: must be in [0, {m - 1}], got {s.dense_rows}")
        if not 1 <= _int(s.rank1_blocks, f"{where}.rank1_blocks") <= n:
            raise InvalidNetworkError(f"{where}.rank1_blocks: must be in [1, {n}], got {s.rank1_blocks}")


def weight_view(w: WeightSpec) -> W.WeightView:
    """The formula view of a validated weight."""
    m, n = w.matrix_shape
    s = w.structure
    return W.WeightView(rows=m, cols=n, bits=w.bits, kind=s.kind, fields=structure_fields(s))


def _check_weights(layer: LayerSpec, where: str, allow_structured: bool) -> None:
    expected = rule(layer.op).weights
    got = tuple(sorted(layer.weights))
    if got != tuple(sorted(expected)):
        raise InvalidNetworkError(f"{where}.weights: op {layer.op!r} takes weights {list(expected)}, got {list(got)}")
    for name, w in layer.weights.items():
        wh = f"{where}.weights.{name}"
        if w.bits not in VALID_BITS:
            raise InvalidNetworkError(f"{wh}.bits: expected one of {list(VALID_BITS)}, got {w.bits}")
        if not w.shape or any(d <= 0 for d in w.shape):
            raise InvalidNetworkError(f"{wh}.shape: dimensions must be positive, got {list(w.shape)}")
        if not isinstance(w.structure, tuple(STRUCTURES.values())):
            raise InvalidNetworkError(
                f"{wh}.structure: expected one of {sorted(STRUCTURES)}, got {type(w.structure).__name__} "
                "(a Mixed structure exists only in batches)"
            )
        if w.structure.kind not in ("dense", "sparse") and not allow_structured:
            raise UnsupportedLayerError(
                f"{wh}.structure: {w.structure.kind!r} is not supported for op {layer.op!r} "
                "(only dense and sparse are)"
            )
        _check_structure(w, wh)


def _expect_rank(shape: tuple[int, ...], rank: int, what: str, where: str) -> None:
    if len(shape) != rank:
        raise InvalidNetworkError(f"{where}: {what} must have {rank} dimensions, got shape {list(shape)}")


def _check_op_shapes(layer: LayerSpec, attrs: dict[str, Any], in_shapes: list[tuple[int, ...]], where: str) -> None:
    kind = layer.op
    x = in_shapes[0]
    ws = {k: w.shape for k, w in layer.weights.items()}
    if kind in (OpKind.CONV2D, OpKind.DEPTHWISE_CONV2D):
        _expect_rank(x, 3, "the input (H, W, C)", where)
        _expect_rank(ws["weight"], 4, "weights.weight (O, KH, KW, I/groups)", where)
        o, _, _, cg = ws["weight"]
        c = x[2]
        if kind == OpKind.CONV2D:
            g = attrs["groups"]
            if cg * g != c or o % g:
                raise InvalidNetworkError(
                    f"{where}.weights.weight.shape: with groups={g} and {c} input channels the "
                    f"last axis must be {c // g if c % g == 0 else 'C/groups'} and O divisible by groups, "
                    f"got {list(ws['weight'])}"
                )
            if g > 1 and layer.weights["weight"].structure.kind not in ("dense", "sparse"):
                raise UnsupportedLayerError(f"{where}: grouped conv2d supports only dense or sparse weights")
        elif cg != 1 or o % c:
            raise InvalidNetworkError(
                f"{where}.weights.weight.shape: depthwise weights are (C x multiplier, KH, KW, 1) "
                f"with C={c}, got {list(ws['weight'])}"
            )
    elif kind in (OpKind.AVG_POOL2D, OpKind.MAX_POOL2D) or kind == OpKind.GLOBAL_AVG_POOL:
        _expect_rank(x, 3, "the input (H, W, C)", where)
    elif kind == OpKind.LINEAR:
        _expect_rank(ws["weight"], 2, "weights.weight (O, I)", where)
        if x[-1] != ws["weight"][1]:
            raise InvalidNetworkError(
                f"{where}.weights.weight.shape: input has {x[-1]} features but the weight is {list(ws['weight'])}"
            )
    elif kind in RNN_GATES:
        _expect_rank(x, 2, "the input (T, F)", where)
        g = RNN_GATES[kind]
        _expect_rank(ws["w_hh"], 2, "weights.w_hh (G*H, H)", where)
        _expect_rank(ws["w_ih"], 2, "weights.w_ih (G*H, F)", where)
        h = ws["w_hh"][1]
        if ws["w_hh"][0] != g * h or ws["w_ih"] != (g * h, x[1]):
            raise InvalidNetworkError(
                f"{where}.weights: {kind} with hidden size {h} and {x[1]} input features needs "
                f"w_ih {[g * h, x[1]]} and w_hh {[g * h, h]}, got {list(ws['w_ih'])} and {list(ws['w_hh'])}"
            )
    elif kind == OpKind.EMBEDDING:
        _expect_rank(x, 1, "the input (T,) of indices", where)
        _expect_rank(ws["weight"], 2, "weights.weight (V, D)", where)
    elif kind == OpKind.ADD:
        if any(s != x for s in in_shapes[1:]):
            raise InvalidNetworkError(f"{where}: add needs inputs of one shape, got {[list(s) for s in in_shapes]}")
    elif kind == OpKind.CONCAT:
        axis = attrs["axis"] % len(x) if -len(x) <= attrs["axis"] < len(x) else None
        if axis is None:
            raise InvalidNetworkError(f"{where}.attrs.axis: {attrs['axis']} is out of range for rank {len(x)}")
        for s in in_shapes[1:]:
            if len(s) != len(x) or any(a != b for i, (a, b) in enumerate(zip(s, x, strict=True)) if i != axis):
                raise InvalidNetworkError(
                    f"{where}: concat inputs must agree except on axis {axis}, got {[list(s) for s in in_shapes]}"
                )
    elif kind == OpKind.RESHAPE:
        import math

        target = attrs["shape"]
        size = math.prod(x)
        known = math.prod(d for d in target if d != -1)
        if (-1 in target and size % known) or (-1 not in target and known != size):
            raise InvalidNetworkError(
                f"{where}.attrs.shape: cannot reshape {list(x)} ({size} elements) to {list(target)}"
            )


def layer_view(
    layer: LayerSpec, index: int, shapes: Mapping[str, tuple[int, ...]], bits: Mapping[str, int]
) -> OpView:
    """Validate one layer against the tensors defined so far; the view's output shape is inferred."""
    where = f"layers[{index}] {layer.name!r}"
    if not isinstance(layer.name, str) or not layer.name:
        raise InvalidNetworkError(f"layers[{index}].name: expected a non-empty string, got {layer.name!r}")
    r = rule(layer.op)
    attrs = normalize_attrs(layer.op, layer.attrs, f"{where}.attrs")
    n_in = len(layer.inputs)
    if n_in < r.min_inputs or (r.max_inputs is not None and n_in > r.max_inputs):
        most = "any number of" if r.max_inputs is None else f"at most {r.max_inputs}"
        raise InvalidNetworkError(
            f"{where}.inputs: op {layer.op!r} takes at least {r.min_inputs} and {most} inputs, got {n_in}"
        )
    for name in layer.inputs:
        if name not in shapes:
            raise InvalidNetworkError(
                f"{where}.inputs: tensor {name!r} is not a graph input or the output of an earlier layer"
            )
    if layer.output in shapes:
        raise InvalidNetworkError(f"{where}.output: tensor {layer.output!r} is already defined")
    _check_weights(layer, where, r.structured)
    in_shapes = [shapes[n] for n in layer.inputs]
    _check_op_shapes(layer, attrs, in_shapes, where)
    view = OpView(
        name=layer.name,
        kind=layer.op,
        attrs=attrs,
        in_shapes=in_shapes,
        in_bits=[bits[n] for n in layer.inputs],
        out_shape=(),
        out_bits=bits[layer.inputs[0]],
        weights={k: weight_view(w) for k, w in layer.weights.items()},
        weight_shapes={k: w.shape for k, w in layer.weights.items()},
        bias=bool(attrs.get("bias", False)),
        input_names=list(layer.inputs),
        output_name=layer.output,
    )
    inferred = tuple(int(d) for d in r.shape(view))
    if any(d <= 0 for d in inferred):
        raise InvalidNetworkError(
            f"{where}: the output shape {list(inferred)} is empty (input {list(in_shapes[0])} is too small)"
        )
    view.out_shape = inferred
    return view


def build_views(net: NetworkSpec) -> list[OpView]:
    """Validate `net` and return one unfolded OpView per layer, in execution order."""
    shapes: dict[str, tuple[int, ...]] = {}
    bits: dict[str, int] = {}
    for i, t in enumerate(net.inputs):
        _check_tensor(t.name, t.shape, t.bits, f"inputs[{i}]")
        if t.name in shapes:
            raise InvalidNetworkError(f"inputs[{i}].name: tensor {t.name!r} is declared twice")
        shapes[t.name], bits[t.name] = t.shape, t.bits
    declared = {}
    for i, t in enumerate(net.tensors):
        _check_tensor(t.name, t.shape, t.bits, f"tensors[{i}]")
        if t.name in declared or t.name in shapes:
            raise InvalidNetworkError(f"tensors[{i}].name: tensor {t.name!r} is declared twice")
        declared[t.name] = t
    if not net.layers:
        raise InvalidNetworkError("layers: a network needs at least one layer")
    views: list[OpView] = []
    names: set[str] = set()
    for li, layer in enumerate(net.layers):
        if layer.name in names:
            raise InvalidNetworkError(f"layers[{li}].name: layer name {layer.name!r} is used twice")
        names.add(layer.name)
        view = layer_view(layer, li, shapes, bits)
        if layer.output not in declared:
            raise InvalidNetworkError(
                f"layers[{li}] {layer.name!r}.output: tensor {layer.output!r} is not declared in tensors"
            )
        out = declared.pop(layer.output)
        if out.shape != view.out_shape:
            raise InvalidNetworkError(
                f"layers[{li}] {layer.name!r}.output: tensor {out.name!r} is declared as "
                f"{list(out.shape)} but the op produces {list(view.out_shape)}"
            )
        view.out_bits = out.bits
        shapes[out.name], bits[out.name] = view.out_shape, out.bits
        views.append(view)
    if declared:
        raise InvalidNetworkError(f"tensors: {sorted(declared)} are declared but no layer produces them")
    if not net.outputs:
        raise InvalidNetworkError("outputs: a network needs at least one output")
    for i, name in enumerate(net.outputs):
        if name not in shapes:
            raise InvalidNetworkError(f"outputs[{i}]: tensor {name!r} does not exist")
    return views


def _check_tensor(name: Any, shape: tuple[int, ...], bits: int, where: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidNetworkError(f"{where}.name: expected a non-empty string, got {name!r}")
    if not shape or any(d <= 0 for d in shape):
        raise InvalidNetworkError(f"{where}.shape: dimensions must be positive, got {list(shape)}")
    if bits not in VALID_BITS:
        raise InvalidNetworkError(f"{where}.bits: expected one of {list(VALID_BITS)}, got {bits}")


@dataclass
class Graph:
    """Folded ops plus the tensors the runtime plans (numbers may be arrays)."""

    ops: list[OpView]
    tensor_names: list[str]
    tensor_shapes: list[tuple[Any, ...]]
    tensor_bits: list[Any]
    first_use: list[int]
    last_use: list[int]


def fold(views: list[OpView], inputs: list[str], outputs: list[str]) -> Graph:
    """Fold batch norm and activations into their producer and build tensor lifetimes."""
    consumers: dict[str, int] = {}
    for v in views:
        for n in v.input_names:
            consumers[n] = consumers.get(n, 0) + 1
    producer: dict[str, OpView] = {}
    rename: dict[str, str] = {}
    ops: list[OpView] = []
    for v in views:
        original_input = v.input_names[0]
        v.input_names = [rename.get(n, n) for n in v.input_names]
        src = producer.get(v.input_names[0]) if len(v.input_names) == 1 else None
        foldable = src is not None and consumers.get(original_input, 0) == 1 and original_input not in outputs
        if v.kind == OpKind.BATCH_NORM:
            if not (foldable and src.kind in BN_FOLDING_OPS):
                raise UnsupportedLayerError(
                    f"layer {v.name!r}: batch_norm must directly follow a conv2d, depthwise_conv2d "
                    "or linear whose output nothing else reads, so it can be folded into it"
                )
            src.bias = True
            src.fused.append(v.name)
            rename[v.output_name] = v.input_names[0]
            continue
        if (
            v.kind in (OpKind.RELU, OpKind.RELU6)
            and foldable
            and src.kind in FUSING_OPS
            and src.attrs.get("activation", "none") == "none"
        ):
            src.attrs["activation"] = v.kind
            src.fused.append(v.name)
            rename[v.output_name] = v.input_names[0]
            continue
        producer[v.output_name] = v
        ops.append(v)
    return _lifetimes(ops, inputs, [rename.get(o, o) for o in outputs])


def _lifetimes(ops: list[OpView], inputs: list[str], outputs: list[str]) -> Graph:
    names: list[str] = []
    shapes: list[Any] = []
    bits: list[Any] = []
    first: list[int] = []
    index: dict[str, int] = {}
    # Shapes and bits of graph inputs come from the first op reading them.
    for i, n in enumerate(inputs):
        index[n] = i
        names.append(n)
        shapes.append(None)
        bits.append(None)
        first.append(0)
    for step, v in enumerate(ops):
        for n, s, b in zip(v.input_names, v.in_shapes, v.in_bits, strict=True):
            if shapes[index[n]] is None:
                shapes[index[n]], bits[index[n]] = s, b
        index[v.output_name] = len(names)
        names.append(v.output_name)
        shapes.append(v.out_shape)
        bits.append(v.out_bits)
        first.append(step)
    last = list(first)
    for step, v in enumerate(ops):
        for n in v.input_names:
            last[index[n]] = max(last[index[n]], step)
    for n in outputs:
        last[index[n]] = len(ops) - 1
    keep = [i for i, s in enumerate(shapes) if s is not None]
    return Graph(
        ops=ops,
        tensor_names=[names[i] for i in keep],
        tensor_shapes=[shapes[i] for i in keep],
        tensor_bits=[bits[i] for i in keep],
        first_use=[first[i] for i in keep],
        last_use=[last[i] for i in keep],
    )


def compile_network(net: NetworkSpec) -> Graph:
    """Validated, folded graph of `net` with tensor lifetimes in execution order."""
    views = build_views(net)
    return fold(views, [t.name for t in net.inputs], list(net.outputs))
