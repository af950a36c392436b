"""From architecture parameters to one discrete architecture that meets the job's limits.

Each choice of a node gets a score (:func:`choice_scores`). Kernels and compression are
categorical: the score is the log-probability, and the best choice the argmax, as in
MicroNets and FBNet. Widths and depth are ordinal: a short search leaves a distribution
over 30 widths nearly flat, whose argmax is arbitrary, while the expected costs the
penalties acted on sit at its mean; so the score is the log-density of a normal with the
distribution's mean and variance (in choice steps), best at the choice nearest the mean.
An architecture's score is the sum over nodes.

The derived architecture is the best-scoring one, checked with hw_models' real costs,
the planned arena included (the differentiable SRAM is the peak of live bytes, which the
greedy plan can exceed; :mod:`.costs`). If it breaks a limit it is repaired one node at
a time: each move is the single-node change that lowers the total relative excess
``sum max(0, cost / limit - 1)`` most per unit of score given up. Widths, depth and
densities lower every cost monotonically, so a move exists until the skeleton's
cheapest point, which must then be infeasible (an error naming it). Greedy moves can
overshoot, so the repaired architecture then climbs the score over feasible
single-node changes while one scores higher.

A sweep's members may agree, and an architecture already in the study would only be
trained again: from the feasible architecture, a best-first walk over single-node
changes (best score first, feasible ones only) takes the first architecture whose
network is not excluded. Two parameter sets with the same network (they differ only in
blocks beyond the depth) count as the same architecture.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hw_models import DeviceSpec, NetworkSpec
from hw_models.runtimes import RuntimeProfile
from sparse_nas.errors import SparseNASError
from sparse_nas.search.costs import cost_points
from sparse_nas.strategies.dnas.plan import BaseSupernetPlan

MAX_EXPANSIONS = 200
"""Architectures the distinctness walk expands before giving up."""

Choice = dict[str, int]


class DerivationError(SparseNASError, RuntimeError):
    """No architecture of the supernet meets the limits, or none new is near the searched one."""


@dataclass(frozen=True)
class Derivation:
    """A derived architecture.

    Attributes:
        choice: One choice index per node.
        params: The family's parameters.
        costs: hw_models' costs of its network (``flash_bytes``, ``sram_bytes``, ...).
        score: Its score (the sum of its choices' scores, :func:`choice_scores`).
        repairs: Single-node moves made to meet the limits.
        network: Its hw_models network (what makes two architectures the same).
    """

    choice: Choice
    params: dict[str, Any]
    costs: dict[str, float]
    score: float
    repairs: int
    network: NetworkSpec


ORDINAL_KINDS = ("width", "depth")
MIN_VARIANCE = 0.25
"""Smallest variance (choice steps squared) of an ordinal node's normal: a one-hot node keeps its choice."""


def choice_scores(plan: BaseSupernetPlan, logits: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per node, the score of each choice (see the module docstring)."""
    out = {}
    for node in plan.nodes:
        v = np.asarray(logits[node.name], dtype=np.float64)
        shifted = v - v.max()
        log_p = shifted - np.log(np.exp(shifted).sum())
        if node.kind in ORDINAL_KINDS:
            p, steps = np.exp(log_p), np.arange(len(v), dtype=np.float64)
            mean = float(p @ steps)
            variance = max(float(p @ (steps - mean) ** 2), MIN_VARIANCE)
            out[node.name] = -((steps - mean) ** 2) / (2.0 * variance)
        else:
            out[node.name] = log_p
    return out


def excess(costs: Mapping[str, float], limits: Mapping[str, float]) -> float:
    """Total relative excess over the limits (0.0 when feasible)."""
    return float(sum(max(0.0, costs[metric] / limit - 1.0) for metric, limit in limits.items()))


class Deriver:
    """Derives architectures of one plan on one device, runtime and set of limits."""

    def __init__(
        self,
        plan: BaseSupernetPlan,
        device: DeviceSpec | str,
        runtime: RuntimeProfile | str,
        limits: Mapping[str, float],
    ):
        self.plan = plan
        self.device = device
        self.runtime = runtime
        self.limits = dict(limits)

    def network(self, params: Mapping[str, Any]) -> NetworkSpec:
        return self.plan.space.to_network(params)

    def derive(self, logits: Mapping[str, np.ndarray], exclude: Collection[NetworkSpec] = ()) -> Derivation:
        """The best-scoring feasible architecture whose network is not in ``exclude``.

        Raises:
            DerivationError: The skeleton's cheapest point breaks a limit, or no new
                architecture was found within :data:`MAX_EXPANSIONS` expansions.
        """
        scores = choice_scores(self.plan, logits)
        center = {name: int(np.argmax(v)) for name, v in scores.items()}
        costs = self._costs([center])[0]
        repairs = 0
        while excess(costs, self.limits) > 0:
            center, costs = self._repair(center, costs, scores)
            repairs += 1
        center, costs = self._ascend(center, costs, scores)
        return self._first_new(center, costs, scores, repairs, set(exclude))

    def _repair(
        self, center: Choice, costs: dict[str, float], scores: Mapping[str, np.ndarray]
    ) -> tuple[Choice, dict[str, float]]:
        """The single-node move that lowers the excess most per unit of score given up."""
        moves = self._neighbours(center)
        move_costs = self._costs(moves)
        current, score = excess(costs, self.limits), self._score(center, scores)
        best, best_value = None, -np.inf
        for i, c in enumerate(move_costs):
            gain = current - excess(c, self.limits)
            if gain <= 0:
                continue
            loss = score - self._score(moves[i], scores)
            value = np.inf if loss <= 0 else gain / loss
            if value > best_value:
                best, best_value = i, value
        if best is None:
            raise DerivationError(
                f"no architecture of the {self.plan.family} supernet meets the limits {self.limits}: "
                f"{self._describe(costs)} at its cheapest reachable point; loosen the budgets or widen "
                "search_space.options"
            )
        return moves[best], move_costs[best]

    def _ascend(
        self, center: Choice, costs: dict[str, float], scores: Mapping[str, np.ndarray]
    ) -> tuple[Choice, dict[str, float]]:
        """Hill-climb the score over feasible single-node moves (a repair can overshoot)."""
        while True:
            moves = self._neighbours(center)
            score = self._score(center, scores)
            better = [(self._score(m, scores), i) for i, m in enumerate(moves) if self._score(m, scores) > score]
            if not better:
                return center, costs
            order = [i for _, i in sorted(better, reverse=True)]
            move_costs = self._costs([moves[i] for i in order])
            feasible = [j for j, c in enumerate(move_costs) if excess(c, self.limits) == 0]
            if not feasible:
                return center, costs
            center, costs = moves[order[feasible[0]]], move_costs[feasible[0]]

    def _first_new(
        self, start: Choice, costs: dict[str, float], scores: Mapping[str, np.ndarray], repairs: int, exclude: set
    ) -> Derivation:
        counter = itertools.count()
        queue = [(-self._score(start, scores), next(counter), start, costs)]
        seen = {self.network(self.plan.params(start))}
        for _ in range(MAX_EXPANSIONS):
            if not queue:
                break
            negative_score, _, choice, choice_costs = heapq.heappop(queue)
            params = self.plan.params(choice)
            network = self.network(params)
            if network not in exclude:
                return Derivation(choice, params, choice_costs, -negative_score, repairs, network)
            # Moves of nodes the network ignores (blocks past its depth) give the same
            # network: only moves to networks not met yet are worth walking.
            fresh = []
            for move in self._neighbours(choice):
                moved = self.network(self.plan.params(move))
                if moved not in seen:
                    seen.add(moved)
                    fresh.append(move)
            for m, c in zip(fresh, self._costs(fresh), strict=True):
                if excess(c, self.limits) == 0:
                    heapq.heappush(queue, (-self._score(m, scores), next(counter), m, c))
        raise DerivationError(
            f"no feasible architecture new to the study within {MAX_EXPANSIONS} single-choice steps of the "
            "searched one; the search keeps finding known architectures"
        )

    def _neighbours(self, choice: Mapping[str, int]) -> list[Choice]:
        return [
            {**choice, node.name: j} for node in self.plan.nodes for j in range(len(node)) if j != choice[node.name]
        ]

    def _costs(self, choices: list[Choice]) -> list[dict[str, float]]:
        if not choices:
            return []
        arrays = cost_points(self.plan.space, [self.plan.params(c) for c in choices], self.device, self.runtime)
        return [{metric: float(values[i]) for metric, values in arrays.items()} for i in range(len(choices))]

    @staticmethod
    def _score(choice: Mapping[str, int], scores: Mapping[str, np.ndarray]) -> float:
        return float(sum(scores[name][j] for name, j in choice.items()))

    def _describe(self, costs: Mapping[str, float]) -> str:
        return ", ".join(f"{metric} {costs[metric]:,.4g}" for metric in self.limits)
