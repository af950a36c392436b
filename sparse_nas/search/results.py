"""What a search found: the Pareto front, its hypervolume over trials, and the best network per budget.

Everything here is read back from the job's Optuna study (:func:`~sparse_nas.search.records.to_records`),
so the same figures come out of a finished job, a running one and a resumed one.

Hypervolume (Zitzler & Thiele, "Multiobjective Optimization Using Evolutionary
Algorithms - A Comparative Case Study", PPSN V, 1998) is measured in a normalised
space so that jobs and strategies compare on one scale: accuracy stays as it is and
each cost is divided by its reference value, so the box between the reference point
(accuracy 0, each cost at its limit) and the ideal point (accuracy 1, zero cost) is
the unit cube and every hypervolume lies in ``[0, 1]``.

The reference point of a cost is its limit when the job has one (flash and SRAM
always, latency when budgeted). A cost without a limit (MACs, unbudgeted latency) is
referred to the largest value it takes over the feasible points of a fixed random
screen of the space; the screen's seed is fixed rather than the job's, so jobs that
differ only in their seed are measured against the same point.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

# Optuna's exact hypervolume (WFG: While, Bradstreet & Barone, "A Fast Way of Calculating
# Exact Hypervolumes", IEEE TEC 16(1), 2012; an O(N^2) sweep in 3-D; a staircase in 2-D).
# `optuna._hypervolume` is a private package (it is what optuna.visualization's hypervolume
# history uses); optuna is pinned, and test_results checks this against hand-computed
# volumes and a Monte-Carlo estimate, so a change of its contract is caught there.
from optuna._hypervolume import compute_hypervolume
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hw_models import DeviceSpec
from hw_models.runtimes import RuntimeProfile
from search_spaces.families import BaseSearchSpace
from sparse_nas.errors import SparseNASError
from sparse_nas.search.costs import cost_points, feasible_mask
from sparse_nas.search.records import COUNTED_STATUSES, TrialRecord, TrialStatus, to_records
from sparse_nas.spec import ACCURACY, SearchJobSpec

if TYPE_CHECKING:
    import optuna

SCREEN_POINTS = 1024
"""Random points costed to find the reference of a cost without a limit."""
SCREEN_SEED = 0
"""Fixed (not the job's seed), so jobs that differ only in their seed share a reference point."""
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
"""Fractions of each limit in :func:`best_per_budget`'s staircases."""

_TABLE_COLUMNS = (
    ("flash_bytes", "flash KiB", lambda v: f"{v / 1024:.1f}"),
    ("sram_bytes", "SRAM KiB", lambda v: f"{v / 1024:.1f}"),
    ("macs", "MACs", lambda v: f"{v:,.0f}"),
    ("latency_ms", "latency ms", lambda v: f"{v:.3g}"),
)


class ResultsError(SparseNASError, ValueError):
    """Inputs the results cannot be computed from (bad reference point, values that do not match the objectives)."""


# --- reference point -------------------------------------------------------------------


def reference_point(spec: SearchJobSpec) -> dict[str, float]:
    """The hypervolume reference point of a job, one value per objective (see :func:`reference_point_for`).

    Cached per process on the JSON of the fields it depends on (dataset, search space,
    device, runtime, budgets, objectives): the screen takes up to a few seconds.
    """
    key = {
        "dataset": spec.dataset.model_dump(mode="json"),
        "search_space": spec.search_space.model_dump(mode="json"),
        "device": spec.device,
        "runtime": spec.runtime,
        "budgets": spec.budgets.model_dump(mode="json"),
        "objectives": list(spec.objectives),
    }
    return dict(_reference_point_cached(json.dumps(key, sort_keys=True)))


@functools.lru_cache(maxsize=64)
def _reference_point_cached(spec_json: str) -> tuple[tuple[str, float], ...]:
    spec = SearchJobSpec.model_validate_json(spec_json)
    point = reference_point_for(
        spec.build_search_space(), spec.device_spec(), spec.runtime, spec.objectives, spec.limits()
    )
    return tuple(point.items())


def reference_point_for(
    space: BaseSearchSpace,
    device: DeviceSpec | str,
    runtime: RuntimeProfile | str,
    objectives: Sequence[str],
    limits: Mapping[str, float],
) -> dict[str, float]:
    """The hypervolume reference point: accuracy 0, each cost at its limit or, without one, its screened maximum.

    A cost without a limit takes the largest value it has over the feasible points of
    :data:`SCREEN_POINTS` random points of ``space`` drawn with seed :data:`SCREEN_SEED`
    (over all of them when none is feasible). Deterministic; the screen is only costed
    when some objective needs it.

    Args:
        space: The job's search space.
        device: Target device (as for :func:`~sparse_nas.search.costs.cost_points`).
        runtime: Deployment runtime.
        objectives: ``"accuracy"`` and cost metrics, in the job's order.
        limits: The job's limits (``SearchJobSpec.limits()``), by cost metric.

    Returns:
        One value per objective, in ``objectives`` order.
    """
    screened = [name for name in objectives if name != ACCURACY and name not in limits]
    maxima: dict[str, float] = {}
    if screened:
        points = random_points(space.distributions(), SCREEN_POINTS, SCREEN_SEED)
        costs = cost_points(space, points, device, runtime)
        mask = feasible_mask(costs, limits)
        if not mask.any():
            mask = np.ones_like(mask)
        for name in screened:
            if name not in costs:
                raise ResultsError(f"objectives: unknown cost {name!r}; valid: {', '.join(costs)}")
            maxima[name] = float(costs[name][mask].max())
    return {
        name: 0.0 if name == ACCURACY else float(limits[name]) if name in limits else maxima[name]
        for name in objectives
    }


def random_points(distributions: Mapping[str, BaseDistribution], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` points drawn uniformly from Optuna distributions (log-uniform where ``log``), reproducibly for ``seed``.

    Values are plain Python values (categorical ones are the distribution's choices).
    """
    rng = np.random.default_rng(seed)
    columns = {name: _draw(name, dist, n, rng) for name, dist in distributions.items()}
    return [{name: column[i] for name, column in columns.items()} for i in range(n)]


def _draw(name: str, dist: BaseDistribution, n: int, rng: np.random.Generator) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return [dist.choices[i] for i in rng.integers(len(dist.choices), size=n)]
    if isinstance(dist, IntDistribution):
        if dist.log:
            # Widened by half a step each side so the end values are as likely as inner ones.
            drawn = np.exp(rng.uniform(np.log(dist.low - 0.5), np.log(dist.high + 0.5), size=n))
            return [int(v) for v in np.clip(np.rint(drawn), dist.low, dist.high)]
        steps = (dist.high - dist.low) // dist.step
        return [int(dist.low + k * dist.step) for k in rng.integers(steps + 1, size=n)]
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            steps = round((dist.high - dist.low) / dist.step)
            return [float(min(dist.low + k * dist.step, dist.high)) for k in rng.integers(steps + 1, size=n)]
        if dist.log:
            return [float(v) for v in np.exp(rng.uniform(np.log(dist.low), np.log(dist.high), size=n))]
        return [float(v) for v in rng.uniform(dist.low, dist.high, size=n)]
    raise ResultsError(f"{name}: unsupported distribution {type(dist).__name__}")


# --- Pareto front and hypervolume ------------------------------------------------------------


def _on_front_candidate(record: TrialRecord) -> bool:
    """Trained to the end and within every limit: the only trials a Pareto front may hold."""
    return record.status == "complete" and record.feasible and record.values is not None


def _values(record: TrialRecord, objectives: Sequence[str]) -> tuple[float, ...]:
    if record.values is None or len(record.values) != len(objectives):
        count = 0 if record.values is None else len(record.values)
        raise ResultsError(
            f"trial {record.number} has {count} values, expected one per objective ({', '.join(objectives)})"
        )
    return record.values


def _losses(values: np.ndarray, objectives: Sequence[str]) -> np.ndarray:
    """Objective vectors (rows) turned into losses: accuracy negated, costs as they are."""
    sign = np.array([-1.0 if name == ACCURACY else 1.0 for name in objectives])
    return values * sign


def _non_dominated(losses: np.ndarray) -> np.ndarray:
    """True for rows no other row Pareto-dominates (identical rows do not dominate each other)."""
    no_worse = np.all(losses[:, None, :] <= losses[None, :, :], axis=2)
    better = np.any(losses[:, None, :] < losses[None, :, :], axis=2)
    dominated = np.any(no_worse & better, axis=0)
    return ~dominated


def pareto_front(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    """The non-dominated complete, feasible trials (accuracy maximised, costs minimised).

    Infeasible, stopped, failed and unfinished trials are never on it. Trials with
    identical objective vectors are all kept. Values are ``record.values`` in
    ``objectives`` order.

    Returns:
        The front, most accurate first (then by each later objective, then trial number).
    """
    candidates = [r for r in records if _on_front_candidate(r)]
    if not candidates:
        return []
    losses = _losses(np.array([_values(r, objectives) for r in candidates], dtype=np.float64), objectives)
    keep = _non_dominated(losses)
    front = [(tuple(row), r.number, r) for row, r, k in zip(losses, candidates, keep, strict=True) if k]
    front.sort(key=lambda item: (item[0], item[1]))
    return [r for _, _, r in front]


def hypervolume(
    points: Sequence[Sequence[float]] | np.ndarray, reference: Mapping[str, float], objectives: Sequence[str]
) -> float:
    """Normalised hypervolume dominated by objective vectors, in ``[0, 1]``.

    Accuracy ``a`` stays ``a`` (the region ``[reference accuracy, 1]``) and each cost
    ``c`` becomes ``c / reference[c]`` (the region ``[0, 1]``); the volume is measured
    inside the box between the reference point and the ideal point (accuracy 1, zero
    costs). A point not strictly better than the reference in every objective adds
    nothing.

    Args:
        points: Shape ``(n, len(objectives))``, in objective units and order.
        reference: One value per objective (:func:`reference_point`).
        objectives: Names of the columns of ``points``.

    Raises:
        ResultsError: The reference lacks an objective, its accuracy is outside ``[0, 1)``
            or a cost is not positive and finite, or ``points`` has the wrong shape.
    """
    ref = _reference_losses(reference, objectives)
    values = np.asarray(points, dtype=np.float64)
    if values.size == 0:
        return 0.0
    if values.ndim != 2 or values.shape[1] != len(objectives):
        raise ResultsError(f"points: expected shape (n, {len(objectives)}), got {values.shape}")
    scale = np.array([1.0 if name == ACCURACY else float(reference[name]) for name in objectives])
    losses = _losses(values / scale, objectives)
    inside = np.all(losses < ref, axis=1)
    if not inside.any():
        return 0.0
    return float(compute_hypervolume(losses[inside], ref))


def _reference_losses(reference: Mapping[str, float], objectives: Sequence[str]) -> np.ndarray:
    missing = [name for name in objectives if name not in reference]
    if missing:
        raise ResultsError(f"reference: no value for objective(s) {', '.join(missing)}")
    out = []
    for name in objectives:
        value = float(reference[name])
        if name == ACCURACY:
            if not 0.0 <= value < 1.0:
                raise ResultsError(f"reference.{name}: expected an accuracy in [0, 1), got {value!r}")
            out.append(-value)
        else:
            if not (np.isfinite(value) and value > 0):
                raise ResultsError(f"reference.{name}: expected a positive finite cost, got {value!r}")
            out.append(1.0)
    return np.array(out)


def hypervolume_history(
    records: Sequence[TrialRecord], objectives: Sequence[str], reference: Mapping[str, float]
) -> list[dict[str, Any]]:
    """The front's hypervolume after each finished trial, in trial-number order.

    Every trial that uses up the job's budget (complete, infeasible, stopped, failed)
    gets an entry; interrupted, running and waiting ones do not (an interrupted trial's
    work is lost, so it is left out of ``cpu_seconds`` too).

    Returns:
        Entries ``{"trial": number, "trials_done": k, "hypervolume": hv, "cpu_seconds": s}``,
        ``s`` the summed work seconds (:attr:`TrialRecord.work_seconds`: driver plus worker)
        of the ``k`` trials so far.
    """
    _reference_losses(reference, objectives)
    history: list[dict[str, Any]] = []
    front = np.empty((0, len(objectives)))
    volume, done, seconds = 0.0, 0, 0.0
    for record in sorted(records, key=lambda r: r.number):
        if record.status not in COUNTED_STATUSES:
            continue
        done += 1
        seconds += record.work_seconds
        if _on_front_candidate(record):
            front = np.vstack([front, _values(record, objectives)])
            front = front[_non_dominated(_losses(front, objectives))]
            # The exact volume of a growing set never falls; max() only absorbs rounding.
            volume = max(volume, hypervolume(front, reference, objectives))
        history.append(
            {"trial": int(record.number), "trials_done": done, "hypervolume": float(volume), "cpu_seconds": seconds}
        )
    return history


# --- best network per budget ------------------------------------------------------------


def best_per_budget(
    records: Sequence[TrialRecord], objectives: Sequence[str], limits: Mapping[str, float]
) -> dict[str, Any]:
    """The most accurate deployable trial for the job's limits, and for tighter ones.

    A trial qualifies when it is complete, feasible and its costs are within every
    limit (a trial missing a limited cost never qualifies). Ties on accuracy go to the
    earlier trial.

    Returns:
        ``{"limits": {...}, "best": entry | None, "staircase": {metric: [step, ...]}}``: an
        entry is ``{"number", "accuracy", "costs"}``; each limited cost has one step per
        fraction of :data:`BUDGET_FRACTIONS`, ``{"fraction", "budget", "best": entry | None}``,
        the best trial with that cost within ``fraction * limit`` and the other limits held.
    """
    if ACCURACY not in objectives:
        raise ResultsError(f"objectives: expected {ACCURACY!r} among {', '.join(objectives)}")
    column = list(objectives).index(ACCURACY)
    candidates = [(_values(r, objectives)[column], r) for r in records if _on_front_candidate(r)]

    def best_within(bounds: Mapping[str, float]) -> dict[str, Any] | None:
        within = [
            (accuracy, r)
            for accuracy, r in candidates
            if all(metric in r.costs and r.costs[metric] <= bound for metric, bound in bounds.items())
        ]
        if not within:
            return None
        accuracy, record = max(within, key=lambda item: (item[0], -item[1].number))
        return {
            "number": int(record.number),
            "accuracy": float(accuracy),
            "costs": {k: float(v) for k, v in record.costs.items()},
        }

    bounds = {metric: float(limit) for metric, limit in limits.items()}
    return {
        "limits": bounds,
        "best": best_within(bounds),
        "staircase": {
            metric: [
                {
                    "fraction": fraction,
                    "budget": fraction * limit,
                    "best": best_within(bounds | {metric: fraction * limit}),
                }
                for fraction in BUDGET_FRACTIONS
            ]
            for metric, limit in bounds.items()
        },
    }


# --- everything together ----------------------------------------------------------------


@dataclass(frozen=True)
class SearchResults:
    """A job's results read from its study: front, hypervolume, best per budget, status counts.

    Attributes:
        objectives: The job's objectives, accuracy first.
        reference_point: The hypervolume reference point (:func:`reference_point`).
        limits: The job's limits (``SearchJobSpec.limits()``).
        records: Every trial, in trial-number order.
        pareto_front: :func:`pareto_front` of ``records``.
        hypervolume_history: :func:`hypervolume_history` of ``records``.
        hypervolume: Normalised hypervolume of the front (0.0 when it is empty).
        best_per_budget: :func:`best_per_budget` for ``limits``.
        counts: Trials per status, every status present (zero when none).
    """

    objectives: tuple[str, ...]
    reference_point: dict[str, float]
    limits: dict[str, float]
    records: tuple[TrialRecord, ...]
    pareto_front: tuple[TrialRecord, ...]
    hypervolume_history: tuple[dict[str, Any], ...]
    hypervolume: float
    best_per_budget: dict[str, Any]
    counts: dict[str, int]

    @classmethod
    def from_study(cls, study: optuna.Study, spec: SearchJobSpec) -> SearchResults:
        """Read the results of ``spec``'s job from its study.

        Raises:
            ResultsError: The study has another number of objectives than ``spec``.
        """
        objectives = tuple(spec.objectives)
        if len(study.directions) != len(objectives):
            raise ResultsError(
                f"study {study.study_name!r} has {len(study.directions)} objectives, the spec "
                f"{len(objectives)} ({', '.join(objectives)})"
            )
        records = to_records(study.get_trials(deepcopy=False))
        reference = reference_point(spec)
        limits = {metric: float(limit) for metric, limit in spec.limits().items()}
        front = pareto_front(records, objectives)
        counts = {status: 0 for status in get_args(TrialStatus)}
        for record in records:
            counts[record.status] += 1
        return cls(
            objectives=objectives,
            reference_point=reference,
            limits=limits,
            records=tuple(records),
            pareto_front=tuple(front),
            hypervolume_history=tuple(hypervolume_history(records, objectives, reference)),
            hypervolume=hypervolume([r.values for r in front], reference, objectives),
            best_per_budget=best_per_budget(records, objectives, limits),
            counts=counts,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain Python types only)."""
        return {
            "objectives": list(self.objectives),
            "reference_point": dict(self.reference_point),
            "limits": dict(self.limits),
            "hypervolume": float(self.hypervolume),
            "hypervolume_history": [dict(entry) for entry in self.hypervolume_history],
            "pareto_front": [r.to_dict() for r in self.pareto_front],
            "best_per_budget": self.best_per_budget,
            "counts": dict(self.counts),
            "trials": [r.to_dict() for r in self.records],
        }

    def format_table(self, max_rows: int = 20) -> str:
        """The Pareto front as a plain-text table for a terminal, most accurate first.

        Columns: trial, accuracy %, then flash KiB, SRAM KiB, MACs and latency ms for
        each cost that is an objective or known for some front member.
        """
        if max_rows < 1:
            raise ResultsError(f"max_rows: expected at least 1, got {max_rows}")
        done = sum(self.counts[status] for status in COUNTED_STATUSES)
        goals = ", ".join(f"{name} ({'max' if name == ACCURACY else 'min'})" for name in self.objectives)
        title = f"Pareto front: {len(self.pareto_front)} of {done} trials; objectives {goals}"
        if not self.pareto_front:
            return f"{title}\n(empty: no complete trial within the limits yet)"
        title += f"; hypervolume {self.hypervolume:.4f}"
        column = self.objectives.index(ACCURACY)
        shown = [
            (metric, header, fmt)
            for metric, header, fmt in _TABLE_COLUMNS
            if metric in self.objectives or any(metric in r.costs for r in self.pareto_front)
        ]
        headers = ["trial", "accuracy %"] + [header for _, header, _ in shown]
        rows = []
        for record in self.pareto_front[:max_rows]:
            values = _values(record, self.objectives)
            cells = [str(record.number), f"{100 * values[column]:.2f}"]
            for metric, _, fmt in shown:
                cost = values[self.objectives.index(metric)] if metric in self.objectives else record.costs.get(metric)
                cells.append("-" if cost is None else fmt(cost))
            rows.append(cells)
        widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
        lines = [title, "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        hidden = len(self.pareto_front) - max_rows
        if hidden > 0:
            lines.append(f"... and {hidden} more")
        return "\n".join(lines)
