"""Points of a fixed Optuna search space to and from the unit cube.

Two maps, for two uses:

- ``from_unit`` turns a point of ``[0, 1]^p`` (one coordinate per parameter that can
  take more than one value) into parameters, so that uniform or Sobol points of the
  cube become uniform or space-filling points of the space: an integer or stepped
  float takes the value of the bin its coordinate falls in, a log-scaled number is
  spread evenly in log space, a categorical takes the choice of its bin.
- ``encode`` turns parameters into the GP's features in ``[0, 1]^d``: numbers
  normalised to their range (in log space when log-scaled), two-choice categoricals as
  one 0/1 feature, wider categoricals one-hot. Parameters with a single value take no
  feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

ParamKey = tuple[Any, ...]
"""A hashable identity of a point: its values in the encoding's parameter order."""


class ParamEncoding:
    """The two unit-cube maps of one search space (see the module docstring).

    Args:
        distributions: The space's fixed distributions (Int, Float or Categorical).
    """

    def __init__(self, distributions: Mapping[str, BaseDistribution]):
        for name, dist in distributions.items():
            if not isinstance(dist, IntDistribution | FloatDistribution | CategoricalDistribution):
                raise TypeError(f"{name}: unsupported distribution {type(dist).__name__}")
        self.distributions = dict(distributions)
        self.names: tuple[str, ...] = tuple(distributions)
        self.free: tuple[str, ...] = tuple(n for n, d in distributions.items() if not d.single())
        """Parameters with more than one value: one unit-cube coordinate each, in this order."""
        self.width = sum(_feature_width(distributions[n]) for n in self.free)
        """Number of GP features of ``encode``."""

    @property
    def n_unit(self) -> int:
        """Dimension of the cube ``from_unit`` reads."""
        return len(self.free)

    def key(self, params: Mapping[str, Any]) -> ParamKey:
        return tuple(params[name] for name in self.names)

    def has_all(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` sets every parameter of the space."""
        return all(name in params for name in self.names)

    # --- unit cube -> parameters ------------------------------------------------------

    def from_unit(self, unit: np.ndarray) -> list[dict[str, Any]]:
        """Parameters of each row of ``unit`` (shape ``n x n_unit``, values in [0, 1])."""
        unit = np.asarray(unit, dtype=np.float64).reshape(-1, self.n_unit)
        columns: dict[str, list[Any]] = {}
        for name, dist in self.distributions.items():
            if dist.single():
                columns[name] = [_single_value(dist)] * len(unit)
            else:
                columns[name] = self.values_from_unit(name, unit[:, self.free.index(name)])
        return [{name: columns[name][i] for name in self.names} for i in range(len(unit))]

    def values_from_unit(self, name: str, u: np.ndarray) -> list[Any]:
        """Values of parameter ``name`` at coordinates ``u`` (1-D, in [0, 1])."""
        dist = self.distributions[name]
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
        if isinstance(dist, CategoricalDistribution):
            return [dist.choices[i] for i in _bins(u, len(dist.choices))]
        if isinstance(dist, IntDistribution):
            if dist.log:
                # Optuna's own rounding of log integers: each value owns [v - 0.5, v + 0.5).
                lo, hi = math.log(dist.low - 0.5), math.log(dist.high + 0.5)
                values = np.clip(np.round(np.exp(lo + u * (hi - lo))), dist.low, dist.high)
                return [int(v) for v in values]
            n_values = (dist.high - dist.low) // dist.step + 1
            return [int(dist.low + i * dist.step) for i in _bins(u, n_values)]
        if dist.step is not None:
            n_values = round((dist.high - dist.low) / dist.step) + 1
            return [float(min(dist.low + i * dist.step, dist.high)) for i in _bins(u, n_values)]
        if dist.log:
            lo, hi = math.log(dist.low), math.log(dist.high)
            return [float(v) for v in np.clip(np.exp(lo + u * (hi - lo)), dist.low, dist.high)]
        return [float(v) for v in dist.low + u * (dist.high - dist.low)]

    def choice_count(self, name: str) -> int | None:
        """Number of values of a categorical or stepped parameter; None for continuous ones."""
        dist = self.distributions[name]
        if isinstance(dist, CategoricalDistribution):
            return len(dist.choices)
        if isinstance(dist, IntDistribution):
            return None if dist.log else (dist.high - dist.low) // dist.step + 1
        if dist.step is not None:
            return round((dist.high - dist.low) / dist.step) + 1
        return None

    def to_unit(self, name: str, value: Any) -> float:
        """A coordinate that ``values_from_unit`` maps back to ``value`` (a bin's centre)."""
        dist = self.distributions[name]
        count = self.choice_count(name)
        if isinstance(dist, CategoricalDistribution):
            return (dist.choices.index(value) + 0.5) / count
        if count is not None:
            step = dist.step
            return (round((value - dist.low) / step) + 0.5) / count
        return float(_normalise(dist, value))

    # --- parameters -> GP features ----------------------------------------------------

    def encode(self, points: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """GP features of ``points``: shape ``len(points) x width``, values in [0, 1]."""
        out = np.zeros((len(points), self.width), dtype=np.float64)
        col = 0
        for name in self.free:
            dist = self.distributions[name]
            values = [p[name] for p in points]
            if isinstance(dist, CategoricalDistribution):
                index = np.asarray([dist.choices.index(v) for v in values], dtype=np.int64)
                if len(dist.choices) == 2:
                    out[:, col] = index
                else:
                    out[np.arange(len(points)), col + index] = 1.0
            else:
                out[:, col] = _normalise(dist, np.asarray(values, dtype=np.float64))
            col += _feature_width(dist)
        return out


def _feature_width(dist: BaseDistribution) -> int:
    if dist.single():
        return 0
    if isinstance(dist, CategoricalDistribution):
        return 1 if len(dist.choices) == 2 else len(dist.choices)
    return 1


def _normalise(dist: IntDistribution | FloatDistribution, value: Any) -> Any:
    if dist.log:
        return (np.log(value) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low))
    return (np.asarray(value, dtype=np.float64) - dist.low) / (dist.high - dist.low)


def _bins(u: np.ndarray, count: int) -> np.ndarray:
    return np.minimum((u * count).astype(np.int64), count - 1)


def _single_value(dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0]
    if isinstance(dist, IntDistribution):
        return int(dist.low)
    return float(dist.low)
