"""Hardware costs of search points, checked against a job's limits before any training.

The costs come from hw_models through the search space (``cost_batch``), so a trial's
figures, the mobo sampler's screened pool and the spec's minimum costs all agree. A
point is feasible when every limit holds; the constraint values stored with each trial
are *relative* excesses, ``cost / limit - 1`` (<= 0 is feasible, Optuna's convention),
so constraints of bytes and of milliseconds are on the same scale for the samplers
that model them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hw_models import DeviceSpec
from hw_models.runtimes import RuntimeProfile
from search_spaces.families import COST_METRICS, BaseSearchSpace

CostFigures = dict[str, float]
"""Planned costs of one point: ``flash_bytes``, ``sram_bytes``, ``macs``, ``latency_ms``, ``energy_mj``."""

_UNITS = {"flash_bytes": "B", "sram_bytes": "B", "latency_ms": "ms"}
_LABELS = {"flash_bytes": "flash", "sram_bytes": "SRAM", "latency_ms": "latency"}


def cost_points(
    space: BaseSearchSpace,
    points: Sequence[Mapping[str, Any]],
    device: DeviceSpec | str,
    runtime: RuntimeProfile | str,
) -> dict[str, np.ndarray]:
    """Every cost metric of many points at once: arrays indexed like ``points``."""
    report = space.cost_batch(points, device, runtime)
    return {metric: np.asarray(getattr(report, metric), dtype=np.float64) for metric in COST_METRICS}


def cost_point(
    space: BaseSearchSpace, params: Mapping[str, Any], device: DeviceSpec | str, runtime: RuntimeProfile | str
) -> CostFigures:
    """The planned costs of one point (the same vectorised path as screening)."""
    costs = cost_points(space, [params], device, runtime)
    return {metric: float(values[0]) for metric, values in costs.items()}


def feasible_mask(costs: Mapping[str, np.ndarray], limits: Mapping[str, float]) -> np.ndarray:
    """True where every limit holds (``costs`` as from :func:`cost_points`)."""
    size = len(next(iter(costs.values())))
    mask = np.ones(size, dtype=bool)
    for metric, limit in limits.items():
        mask &= costs[metric] <= limit
    return mask


def constraint_values(costs: Mapping[str, float], limits: Mapping[str, float]) -> dict[str, float]:
    """Relative excess per limit, ``cost / limit - 1``: zero or less is feasible."""
    return {metric: float(costs[metric]) / float(limit) - 1.0 for metric, limit in limits.items()}


def infeasible_reason(costs: Mapping[str, float], limits: Mapping[str, float]) -> str | None:
    """A sentence naming every broken limit with the cost and the limit, or None if feasible."""
    broken = [
        f"{_LABELS[metric]} {_format(costs[metric], metric)} exceeds the limit {_format(limit, metric)}"
        for metric, limit in limits.items()
        if costs[metric] > limit
    ]
    return "; ".join(broken) if broken else None


def _format(value: float, metric: str) -> str:
    if _UNITS[metric] == "B":
        return f"{value:,.0f} B"
    return f"{value:.4g} ms"
