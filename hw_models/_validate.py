"""Validation of NetworkSpec and parsing of its JSON form (docs/ir.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hw_models._graph import build_views, layer_view
from hw_models.errors import InvalidNetworkError
from hw_models.ir import (
    IR_FORMAT,
    IR_VERSION,
    STRUCTURES,
    LayerSpec,
    NetworkSpec,
    TensorSpec,
    WeightSpec,
)


def validate_network(net: NetworkSpec) -> None:
    """Raise InvalidNetworkError (or UnsupportedLayerError) naming the bad field."""
    build_views(net)


def _get(data: Mapping[str, Any], key: str, where: str, types: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in data:
        if default is ...:
            raise InvalidNetworkError(f"{where}.{key}: required field is missing")
        return default
    value = data[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise InvalidNetworkError(f"{where}.{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidNetworkError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _only(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidNetworkError(f"{where}: unknown field(s) {unknown}; valid: {sorted(allowed)}")


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidNetworkError(f"{where}: expected a list of integers, got {value!r}")
    return tuple(value)


def _tensor(data: Any, where: str) -> TensorSpec:
    data = _mapping(data, where)
    _only(data, {"name", "shape", "bits"}, where)
    return TensorSpec(
        name=_get(data, "name", where, str),
        shape=_shape(_get(data, "shape", where, list), f"{where}.shape"),
        bits=_get(data, "bits", where, int, 8),
    )


def _structure(data: Any, where: str) -> Any:
    data = _mapping(data, where)
    kind = _get(data, "kind", where, str)
    if kind not in STRUCTURES:
        raise InvalidNetworkError(f"{where}.kind: expected one of {sorted(STRUCTURES)}, got {kind!r}")
    cls = STRUCTURES[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    _only(data, fields | {"kind"}, where)
    kwargs = {}
    for name in fields:
        if name in data:
            value = data[name]
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InvalidNetworkError(f"{where}: {exc}") from exc


def _weight(data: Any, where: str) -> WeightSpec:
    data = _mapping(data, where)
    _only(data, {"shape", "bits", "structure"}, where)
    structure = _structure(data["structure"], f"{where}.structure") if "structure" in data else None
    return WeightSpec(
        shape=_shape(_get(data, "shape", where, list), f"{where}.shape"),
        bits=_get(data, "bits", where, int, 8),
        **({"structure": structure} if structure is not None else {}),
    )


def _layer(data: Any, where: str) -> LayerSpec:
    data = _mapping(data, where)
    _only(data, {"name", "op", "inputs", "output", "attrs", "weights"}, where)
    inputs = _get(data, "inputs", where, list)
    if not all(isinstance(n, str) for n in inputs):
        raise InvalidNetworkError(f"{where}.inputs: expected a list of tensor names, got {inputs!r}")
    weights = _mapping(_get(data, "weights", where, dict, {}), f"{where}.weights")
    return LayerSpec(
        name=_get(data, "name", where, str),
        op=_get(data, "op", where, str),
        inputs=tuple(inputs),
        output=_get(data, "output", where, str),
        attrs=_mapping(_get(data, "attrs", where, dict, {}), f"{where}.attrs"),
        weights={k: _weight(w, f"{where}.weights.{k}") for k, w in weights.items()},
    )


def parse_network(data: Mapping[str, Any]) -> NetworkSpec:
    """Build a NetworkSpec from its JSON form, inferring undeclared tensor shapes."""
    data = _mapping(data, "network")
    _only(data, {"format", "version", "name", "inputs", "layers", "tensors", "outputs"}, "network")
    fmt = data.get("format", IR_FORMAT)
    if fmt != IR_FORMAT:
        raise InvalidNetworkError(f"format: expected {IR_FORMAT!r}, got {fmt!r}")
    version = data.get("version", IR_VERSION)
    if version != IR_VERSION:
        raise InvalidNetworkError(f"version: this sparse-nas reads version {IR_VERSION}, got {version!r}")
    inputs = [_tensor(t, f"inputs[{i}]") for i, t in enumerate(_get(data, "inputs", "network", list))]
    layers = [_layer(layer, f"layers[{i}]") for i, layer in enumerate(_get(data, "layers", "network", list))]
    tensors = [_tensor(t, f"tensors[{i}]") for i, t in enumerate(_get(data, "tensors", "network", list, []))]
    outputs = _get(data, "outputs", "network", list)
    if not all(isinstance(n, str) for n in outputs):
        raise InvalidNetworkError(f"outputs: expected a list of tensor names, got {outputs!r}")
    declared = {t.name for t in tensors}
    n_declared = len(tensors)
    shapes = {t.name: t.shape for t in inputs + tensors}
    bits = {t.name: t.bits for t in inputs + tensors}
    for i, layer in enumerate(layers):
        if layer.output in declared:
            continue
        if any(n not in shapes for n in layer.inputs):
            break  # validation below reports the undefined input
        view = layer_view(layer, i, {k: v for k, v in shapes.items() if k != layer.output}, bits)
        inferred = TensorSpec(layer.output, view.out_shape, view.out_bits)
        tensors.append(inferred)
        declared.add(layer.output)
        shapes[layer.output], bits[layer.output] = inferred.shape, inferred.bits
    if len(tensors) != n_declared:
        order = {layer.output: i for i, layer in enumerate(layers)}
        tensors.sort(key=lambda t: order.get(t.name, len(order)))
    return NetworkSpec(
        name=_get(data, "name", "network", str),
        inputs=tuple(inputs),
        layers=tuple(layers),
        tensors=tuple(tensors),
        outputs=tuple(outputs),
    )
