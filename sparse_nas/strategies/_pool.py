"""Feasible candidate points for the mobo sampler: screened random pool, Sobol stream, mutations.

Every point here has been costed with :func:`~sparse_nas.search.costs.cost_points` and
kept only when :func:`~sparse_nas.search.costs.feasible_mask` holds and the space can
build it (``invalid_reason`` is None), so the sampler never proposes a point that breaks
a budget or cannot be trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from hw_models import DeviceSpec
from search_spaces.families import BaseSearchSpace
from sparse_nas.search.costs import cost_points, feasible_mask
from sparse_nas.strategies._encoding import ParamEncoding, ParamKey

SOBOL_CHUNK = 256
"""Sobol points screened at a time (cost_batch is vectorised; one point at a time is slow)."""


@dataclass(frozen=True)
class ScreenedPoints:
    """Feasible points with their costs.

    Attributes:
        params: One parameter dict per point.
        keys: ``ParamEncoding.key`` of each point.
        costs: ``len(params) x len(metrics)`` costs, in the metrics' own units.
    """

    params: list[dict[str, Any]]
    keys: list[ParamKey]
    costs: np.ndarray

    def __len__(self) -> int:
        return len(self.params)


@dataclass(frozen=True)
class Screen:
    """What decides feasibility and which costs are kept (the sampler's job settings)."""

    space: BaseSearchSpace
    encoding: ParamEncoding
    device: DeviceSpec | str
    runtime: str
    limits: Mapping[str, float]
    metrics: tuple[str, ...]
    """Cost metrics kept in ``ScreenedPoints.costs``, in this order."""

    def costs(self, points: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``len(points) x len(metrics)`` costs of any points, feasible or not."""
        if not points:
            return np.zeros((0, len(self.metrics)))
        costs = cost_points(self.space, points, self.device, self.runtime)
        return np.stack([costs[m] for m in self.metrics], axis=1)

    def feasible(self, points: Sequence[dict[str, Any]]) -> ScreenedPoints:
        """The feasible subset of ``points``, in their order."""
        if not points:
            return ScreenedPoints([], [], np.zeros((0, len(self.metrics))))
        costs = cost_points(self.space, points, self.device, self.runtime)
        valid = np.array([self.space.invalid_reason(p) is None for p in points], dtype=bool)
        rows = np.flatnonzero(feasible_mask(costs, self.limits) & valid)
        kept = [points[i] for i in rows]
        table = np.stack([costs[m][rows] for m in self.metrics], axis=1)
        return ScreenedPoints(kept, [self.encoding.key(p) for p in kept], table)


def random_pool(screen: Screen, size: int, seed: int, max_screened: int) -> ScreenedPoints:
    """Up to ``size`` distinct feasible points drawn uniformly (seeded), screening at most ``max_screened``.

    Uniform in ``from_unit``'s cube: every value of an integer or categorical is equally
    likely, log-scaled numbers are log-uniform (as Optuna's RandomSampler draws them).
    """
    rng = np.random.default_rng([seed, 0x9E3779B9])
    params: list[dict[str, Any]] = []
    keys: list[ParamKey] = []
    costs: list[np.ndarray] = []
    seen: set[ParamKey] = set()
    screened = 0
    while len(params) < size and screened < max_screened:
        # Sized by the feasible share seen so far (costing is the expensive part).
        share = max(len(params) / screened, 0.05) if screened else 1.0
        draw = min(max(int(1.1 * (size - len(params)) / share), 64), max_screened - screened)
        found = screen.feasible(screen.encoding.from_unit(rng.random((draw, screen.encoding.n_unit))))
        screened += draw
        for i, key in enumerate(found.keys):
            if key not in seen and len(params) < size:
                seen.add(key)
                params.append(found.params[i])
                keys.append(key)
                costs.append(found.costs[i])
    table = np.stack(costs) if costs else np.zeros((0, len(screen.metrics)))
    return ScreenedPoints(params, keys, table)


class SobolStream:
    """The feasible points of a scrambled Sobol sequence, in sequence order, screened lazily.

    Args:
        n_unit: Dimension of the encoding's unit cube.
        seed: Scrambling seed (torch's SobolEngine, Owen scrambling).
        max_points: Sequence length after which the stream is exhausted.
    """

    def __init__(self, n_unit: int, seed: int, max_points: int):
        self.n_unit = n_unit
        self.seed = seed
        self.max_points = max_points
        self._feasible: list[tuple[dict[str, Any], ParamKey]] = []
        self._drawn = 0

    def first_new(self, screen: Screen, exclude: set[ParamKey]) -> dict[str, Any] | None:
        """The first feasible point of the sequence whose key is not in ``exclude`` (None when exhausted)."""
        index = 0
        while True:
            while index < len(self._feasible):
                params, key = self._feasible[index]
                if key not in exclude:
                    return dict(params)
                index += 1
            if self._drawn >= self.max_points:
                return None
            self._extend(screen)

    def _extend(self, screen: Screen) -> None:
        import torch

        engine = torch.quasirandom.SobolEngine(self.n_unit, scramble=True, seed=self.seed)
        engine.fast_forward(self._drawn)
        unit = engine.draw(SOBOL_CHUNK, dtype=torch.float64).numpy()
        self._drawn += SOBOL_CHUNK
        found = screen.feasible(screen.encoding.from_unit(unit))
        self._feasible += list(zip(found.params, found.keys, strict=True))


def mutations(
    encoding: ParamEncoding, centres: Sequence[Mapping[str, Any]], count: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """``count`` one- or two-parameter mutations of ``centres`` (taken in turn), not yet screened.

    A number moves by a Gaussian step of 0.1 of its range (at least one value for integers
    and categorical bins); a categorical changes to another choice, uniformly.
    """
    out: list[dict[str, Any]] = []
    if not centres or not encoding.free:
        return out
    for i in range(count):
        point = dict(centres[i % len(centres)])
        n_changes = min(len(encoding.free), 1 + int(rng.random() < 0.5))
        for index in rng.choice(len(encoding.free), size=n_changes, replace=False):
            name = encoding.free[index]
            point[name] = _mutate(encoding, name, point[name], rng)
        out.append(point)
    return out


def _mutate(encoding: ParamEncoding, name: str, value: Any, rng: np.random.Generator) -> Any:
    dist = encoding.distributions[name]
    count = encoding.choice_count(name)
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[int(rng.integers(len(others)))]
    u = encoding.to_unit(name, value)
    moved = float(np.clip(u + rng.normal(0.0, 0.1), 0.0, 1.0))
    new = encoding.values_from_unit(name, np.array([moved]))[0]
    if new == value and count is not None:
        # A small step stayed inside the bin: move to the neighbouring value instead.
        direction = 1.0 if moved > u or (moved == u and u < 0.5) else -1.0
        new = encoding.values_from_unit(name, np.array([u + direction / count]))[0]
    return new
