"""The cost model: flash, SRAM, MACs, latency and energy of a network on a device.

`estimate(network, device, runtime)` costs one network; `estimate_batch` (in
hw_models.batch) costs many networks of one topology with the same formulas, on
arrays. docs/hw_models.md derives every term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hw_models import _weights as W
from hw_models._graph import Graph, compile_network
from hw_models._ops import (
    RNN_GATES,
    OpView,
    numel,
    rule,
    structure_scratch_bytes,
)
from hw_models.devices import MAC_OP_KINDS, DeviceSpec, get_device
from hw_models.ir import NetworkSpec, OpKind
from hw_models.model_file import graph_fixed_bytes, op_file_bytes
from hw_models.persistent import graph_persistent_fixed_bytes, op_persistent_bytes
from hw_models.planner import BaseArenaPlanner, GreedyArenaPlanner
from hw_models.runtimes import RuntimeProfile, get_runtime

# Bytes of one int16 LSTM cell-state element (TFLM integer LSTM keeps the cell in int16).
_CELL_STATE_BYTES = 2


@dataclass(frozen=True)
class LayerCostReport:
    """Cost of one op after folding (fused batch norm / activations listed in `fused`).

    `model_bytes` is the op's share of the model file: its weights as stored, biases,
    quantisation parameters and its metadata entries.
    """

    name: str
    op: str
    fused: tuple[str, ...]
    output_shape: tuple[int, ...]
    params: int
    nonzero_params: int
    model_bytes: int
    macs: int
    output_bytes: int
    scratch_bytes: int
    working_memory_bytes: int
    cycles: float
    latency_ms: float


@dataclass(frozen=True)
class BufferPlacement:
    """One arena buffer: a tensor or an op's scratch, with its lifetime and offset."""

    name: str
    size_bytes: int
    offset_bytes: int
    first_op: int
    last_op: int


@dataclass(frozen=True)
class CostReport:
    """Predicted cost of a network on a device under a runtime profile."""

    network: str
    device: str
    runtime: str
    params: int
    nonzero_params: int
    model_bytes: int
    runtime_code_bytes: int
    flash_bytes: int
    arena_bytes: int
    persistent_bytes: int
    scratch_bytes: int
    sram_overhead_bytes: int
    sram_bytes: int
    working_memory_bytes: int
    peak_live_bytes: int
    macs: int
    latency_ms: float
    energy_mj: float
    device_flash_bytes: int
    device_sram_bytes: int
    layers: tuple[LayerCostReport, ...]
    buffers: tuple[BufferPlacement, ...]

    @property
    def fits_flash(self) -> bool:
        return self.flash_bytes <= self.device_flash_bytes

    @property
    def fits_sram(self) -> bool:
        return self.sram_bytes <= self.device_sram_bytes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fits_flash"] = self.fits_flash
        out["fits_sram"] = self.fits_sram
        return out


@dataclass
class GraphCosts:
    """Raw arrays of a costed graph: totals (N,), per op (N, ops), buffers (N, B)."""

    totals: dict[str, np.ndarray]
    per_op: dict[str, np.ndarray]
    buffer_names: list[str]
    buffer_sizes: np.ndarray
    buffer_offsets: np.ndarray
    buffer_first: list[int]
    buffer_last: list[int]


def _arr(x: Any, n: int, dtype: Any = np.int64) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=dtype), (n,))


def _align(size: np.ndarray, alignment: int) -> np.ndarray:
    return (size + alignment - 1) // alignment * alignment


def _weight_terms(v: OpView, runtime: RuntimeProfile, bias: Any) -> tuple[Any, Any, Any, Any]:
    """(params, non-zeros, model-file bytes, stored tensors) of the op's weights and bias."""
    params: Any = bias
    nonzero: Any = bias
    tensors: Any = np.asarray(bias) > 0
    for w in v.weights.values():
        params = params + W.params(w)
        nonzero = nonzero + W.nonzero(w)
        tensors = tensors + W.stored_arrays(w)
    if runtime.stored_weights:
        stored = op_file_bytes(v, runtime, bias)
    elif v.weights:
        first = next(iter(v.weights.values()))
        stored = sum(W.packed_bytes(W.nonzero(w), w.bits) for w in v.weights.values())
        stored = stored + W.packed_bytes(bias, first.bits)
    else:
        stored = 0
    return params, nonzero, stored, tensors


def cost_graph(
    graph: Graph,
    device: DeviceSpec,
    runtime: RuntimeProfile,
    n: int,
    planner: BaseArenaPlanner | None = None,
) -> GraphCosts:
    """Cost a (possibly batched) graph; every number in it broadcasts to (n,)."""
    planner = planner or GreedyArenaPlanner()
    per_op: dict[str, list[np.ndarray]] = {
        k: []
        for k in ("params", "nonzero", "weight_bytes", "macs", "out_bytes", "scratch", "wm", "cycles")
    }
    persistent = _arr(0, n)
    for v in graph.ops:
        r = rule(v.kind)
        bias = r.bias(v)
        params, nonzero, wbytes, stored_tensors = _weight_terms(v, runtime, bias)
        macs = r.macs(v)
        if v.kind in MAC_OP_KINDS:
            # Two terms: per MAC, and per output element (requantisation, im2col, loop
            # set-up), which makes narrow layers dearer per MAC (docs/devices.md).
            cycles = device.cycles_per_mac[v.kind] * np.asarray(macs, dtype=np.float64)
            cycles = cycles + device.cycles_per_output[v.kind] * np.asarray(r.outputs(v), dtype=np.float64)
        else:
            cycles = device.cycles_per_element[v.kind] * np.asarray(r.work(v), dtype=np.float64)
        cycles = cycles + device.op_overhead_cycles
        scratch = 0
        if runtime.count_scratch:
            scratch = r.scratch(v, device.dsp) + structure_scratch_bytes(v)
        out_bytes = W.packed_bytes(numel(v.out_shape), v.out_bits)
        in_bytes = sum(W.packed_bytes(numel(s), b) for s, b in zip(v.in_shapes, v.in_bits, strict=True))
        op_persistent = op_persistent_bytes(v, runtime, r.out_channels(v), stored_tensors)
        if v.kind in RNN_GATES and runtime.plan_arena:
            # TFLM allocates RNN state (variable tensors) in the persistent area.
            h = v.weight_shapes["w_hh"][1]
            state = W.packed_bytes(h, v.out_bits)
            if v.kind == OpKind.LSTM:
                state = state + h * _CELL_STATE_BYTES
            op_persistent = op_persistent + state
        persistent = persistent + op_persistent
        for key, value in (
            ("params", params), ("nonzero", nonzero), ("weight_bytes", wbytes), ("macs", macs),
            ("out_bytes", out_bytes), ("scratch", scratch), ("wm", in_bytes + out_bytes),
        ):
            per_op[key].append(_arr(value, n))
        per_op["cycles"].append(_arr(cycles, n, np.float64))
    ops = {k: np.stack(v, axis=1) for k, v in per_op.items()}

    # Arena buffers: every tensor for its lifetime, then each op's scratch for its step.
    tensor_bytes = [
        _arr(W.packed_bytes(numel(s), b), n)
        for s, b in zip(graph.tensor_shapes, graph.tensor_bits, strict=True)
    ]
    names = list(graph.tensor_names)
    first = list(graph.first_use)
    last = list(graph.last_use)
    sizes = list(tensor_bytes)
    if runtime.count_scratch:
        for step, v in enumerate(graph.ops):
            names.append(f"{v.name}/scratch")
            sizes.append(ops["scratch"][:, step])
            first.append(step)
            last.append(step)
    raw = np.stack(sizes, axis=1)
    aligned = _align(raw, runtime.tensor_alignment_bytes)
    n_ops = len(graph.ops)
    steps = np.arange(n_ops)
    alive = (np.asarray(first)[:, None] <= steps[None, :]) & (steps[None, :] <= np.asarray(last)[:, None])
    peak_live = (aligned @ alive.astype(np.int64)).max(axis=1)
    wm = ops["wm"].max(axis=1)
    if runtime.plan_arena:
        offsets, arena = planner.plan(aligned, first, last)
        persistent = persistent + graph_persistent_fixed_bytes(graph, runtime)
        overhead = _arr(device.sram_overhead_bytes if runtime.include_sram_overhead else 0, n)
        sram = arena + persistent + overhead
    else:
        offsets = np.zeros_like(aligned)
        arena = wm
        persistent = _arr(0, n)
        overhead = _arr(0, n)
        sram = wm
    kinds = {v.kind for v in graph.ops}
    model = ops["weight_bytes"].sum(axis=1) + graph_fixed_bytes(graph, runtime)
    code = runtime.code_base_bytes + sum(runtime.code_bytes_per_op_kind.get(k, 0) for k in kinds)
    cycles_total = ops["cycles"].sum(axis=1)
    latency_ms = cycles_total / device.clock_hz * 1000.0
    totals = {
        "params": ops["params"].sum(axis=1),
        "nonzero_params": ops["nonzero"].sum(axis=1),
        "model_bytes": model,
        "runtime_code_bytes": _arr(code, n),
        "flash_bytes": model + code,
        "arena_bytes": arena,
        "persistent_bytes": persistent,
        "scratch_bytes": ops["scratch"].max(axis=1),
        "sram_overhead_bytes": overhead,
        "sram_bytes": sram,
        "working_memory_bytes": wm,
        "peak_live_bytes": peak_live if runtime.plan_arena else wm,
        "macs": ops["macs"].sum(axis=1),
        "latency_ms": latency_ms,
        "energy_mj": latency_ms * device.active_power_mw / 1000.0,
    }
    return GraphCosts(totals, ops, names, aligned, offsets, first, last)


def estimate(
    network: NetworkSpec,
    device: DeviceSpec | str,
    runtime: RuntimeProfile | str = "tflm",
    planner: BaseArenaPlanner | None = None,
) -> CostReport:
    """Predicted flash, SRAM, MACs, latency and energy of `network` on `device`.

    Args:
        network: a validated network.
        device: a DeviceSpec or a catalogue name (see `sparse-nas devices`).
        runtime: `tflm` (TensorFlow Lite Micro + CMSIS-NN) or `ideal` (papers' accounting).
        planner: arena planner; TFLM's greedy planner by default.
    """
    device = get_device(device) if isinstance(device, str) else device
    runtime = get_runtime(runtime)
    graph = compile_network(network)
    c = cost_graph(graph, device, runtime, 1, planner)
    t = {k: v[0] for k, v in c.totals.items()}
    cycles = c.per_op["cycles"][0]
    layers = tuple(
        LayerCostReport(
            name=v.name,
            op=v.kind,
            fused=tuple(v.fused),
            output_shape=tuple(int(d) for d in v.out_shape),
            params=int(c.per_op["params"][0, i]),
            nonzero_params=int(c.per_op["nonzero"][0, i]),
            model_bytes=int(c.per_op["weight_bytes"][0, i]),
            macs=int(c.per_op["macs"][0, i]),
            output_bytes=int(c.per_op["out_bytes"][0, i]),
            scratch_bytes=int(c.per_op["scratch"][0, i]),
            working_memory_bytes=int(c.per_op["wm"][0, i]),
            cycles=float(cycles[i]),
            latency_ms=float(cycles[i] / device.clock_hz * 1000.0),
        )
        for i, v in enumerate(graph.ops)
    )
    buffers = tuple(
        BufferPlacement(
            name, int(c.buffer_sizes[0, j]), int(c.buffer_offsets[0, j]), c.buffer_first[j], c.buffer_last[j]
        )
        for j, name in enumerate(c.buffer_names)
        if j < len(graph.tensor_names) or c.buffer_sizes[0, j] > 0
    )
    return CostReport(
        network=network.name,
        device=device.name,
        runtime=runtime.name,
        **{k: float(v) if k in ("latency_ms", "energy_mj") else int(v) for k, v in t.items()},
        device_flash_bytes=device.flash_bytes,
        device_sram_bytes=device.sram_bytes,
        layers=layers,
        buffers=buffers,
    )
