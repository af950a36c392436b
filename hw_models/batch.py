"""Vectorised costing of many candidate networks at once, for screening before training.

A NetworkBatch (from `NetworkBuilder.build_batch` with array arguments, or from
`stack_networks`) is costed by exactly the formulas of `estimate`, on numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hw_models._graph import build_views, fold
from hw_models.builder import NetworkBatch
from hw_models.cost import cost_graph
from hw_models.devices import DeviceSpec, get_device
from hw_models.errors import InvalidNetworkError
from hw_models.ir import NetworkSpec
from hw_models.planner import BaseArenaPlanner
from hw_models.runtimes import RuntimeProfile, get_runtime


@dataclass(frozen=True)
class BatchCostReport:
    """Totals of `CostReport`, one array entry per network of the batch."""

    device: str
    runtime: str
    size: int
    params: np.ndarray
    nonzero_params: np.ndarray
    model_bytes: np.ndarray
    runtime_code_bytes: np.ndarray
    flash_bytes: np.ndarray
    arena_bytes: np.ndarray
    persistent_bytes: np.ndarray
    scratch_bytes: np.ndarray
    sram_overhead_bytes: np.ndarray
    sram_bytes: np.ndarray
    working_memory_bytes: np.ndarray
    peak_live_bytes: np.ndarray
    macs: np.ndarray
    latency_ms: np.ndarray
    energy_mj: np.ndarray
    device_flash_bytes: int
    device_sram_bytes: int

    def feasible(
        self,
        max_flash_bytes: float | None = None,
        max_sram_bytes: float | None = None,
        max_latency_ms: float | None = None,
    ) -> np.ndarray:
        """Boolean mask of networks within the budgets (and the device's memories)."""
        ok = (self.flash_bytes <= self.device_flash_bytes) & (self.sram_bytes <= self.device_sram_bytes)
        if max_flash_bytes is not None:
            ok &= self.flash_bytes <= max_flash_bytes
        if max_sram_bytes is not None:
            ok &= self.sram_bytes <= max_sram_bytes
        if max_latency_ms is not None:
            ok &= self.latency_ms <= max_latency_ms
        return ok


def estimate_batch(
    batch: NetworkBatch,
    device: DeviceSpec | str,
    runtime: RuntimeProfile | str = "tflm",
    planner: BaseArenaPlanner | None = None,
) -> BatchCostReport:
    """Cost every network of `batch`; entry i equals `estimate` of network i."""
    device = get_device(device) if isinstance(device, str) else device
    runtime = get_runtime(runtime)
    c = cost_graph(batch.graph, device, runtime, batch.size, planner)
    return BatchCostReport(
        device=device.name,
        runtime=runtime.name,
        size=batch.size,
        device_flash_bytes=device.flash_bytes,
        device_sram_bytes=device.sram_bytes,
        **{k: np.ascontiguousarray(v) for k, v in c.totals.items()},
    )


def _stack(values: list[Any], where: str) -> Any:
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        if any(v != first for v in values):
            raise InvalidNetworkError(f"{where}: networks differ in a non-numeric field ({first!r} vs others)")
        return first
    if isinstance(first, int | float | np.integer | np.floating):
        return np.asarray(values)
    if isinstance(first, tuple | list):
        if any(len(v) != len(first) for v in values):
            raise InvalidNetworkError(f"{where}: networks differ in rank")
        return type(first)(_stack([v[i] for v in values], f"{where}[{i}]") for i in range(len(first)))
    if isinstance(first, dict):
        if any(v.keys() != first.keys() for v in values):
            raise InvalidNetworkError(f"{where}: networks differ in keys")
        return {k: _stack([v[k] for v in values], f"{where}.{k}") for k in first}
    if hasattr(first, "__dict__"):
        out = type(first).__new__(type(first))
        out.__dict__.update(_stack([v.__dict__ for v in values], where))
        return out
    raise InvalidNetworkError(f"{where}: cannot stack {type(first).__name__}")


def stack_networks(networks: Sequence[NetworkSpec], name: str = "batch") -> NetworkBatch:
    """One NetworkBatch from networks of one topology (same ops, names and structures)."""
    if not networks:
        raise InvalidNetworkError("networks: need at least one network to stack")
    views = [build_views(net) for net in networks]
    if any(len(v) != len(views[0]) for v in views):
        raise InvalidNetworkError("networks: every network must have the same layers to be stacked")
    stacked = [_stack([v[i] for v in views], f"layers[{i}]") for i in range(len(views[0]))]
    graph = fold(stacked, [t.name for t in networks[0].inputs], list(networks[0].outputs))
    return NetworkBatch(name, len(networks), graph)
