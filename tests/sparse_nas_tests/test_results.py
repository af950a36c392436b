"""Tests of sparse_nas.search.results: Pareto front, hypervolume, reference point, best per budget."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sparse_nas.search.costs import constraint_values, cost_points, feasible_mask
from sparse_nas.search.records import TrialRecord, to_records
from sparse_nas.search.results import (
    SCREEN_POINTS,
    SCREEN_SEED,
    ResultsError,
    SearchResults,
    _reference_point_cached,
    best_per_budget,
    hypervolume,
    hypervolume_history,
    pareto_front,
    random_points,
    reference_point,
    reference_point_for,
)
from sparse_nas.spec import SearchJobSpec

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
    "budgets": {"max_sram_bytes": 65536},
    "objectives": ["accuracy", "flash_bytes", "macs"],
}
OBJ3 = ("accuracy", "flash_bytes", "macs")
LIMITS = {"flash_bytes": 100.0, "sram_bytes": 50.0}


def record(
    number: int,
    status: str = "complete",
    values: tuple[float, ...] | None = None,
    costs: dict[str, float] | None = None,
    feasible: bool = True,
    duration_s: float | None = None,
) -> TrialRecord:
    return TrialRecord(
        number=number,
        status=status,  # type: ignore[arg-type]
        params={},
        values=values,
        costs=costs or {},
        constraints={},
        feasible=feasible,
        duration_s=duration_s,
    )


def add_trial(
    study: optuna.Study,
    status: str,
    accuracy: float = 0.0,
    costs: dict[str, float] | None = None,
    limits: dict[str, float] | None = None,
    objectives: tuple[str, ...] = OBJ3,
) -> None:
    """Store a trial the way the engine does (see records.py's table)."""
    costs = costs or {}
    attrs: dict[str, Any] = {**costs, "status": status}
    constraints = constraint_values(costs, limits) if limits and costs else None
    values = [accuracy if name == "accuracy" else costs[name] for name in objectives] if costs else None
    if status == "complete":
        attrs["val_accuracy"] = accuracy
        trial = create_trial(values=values, user_attrs=attrs, constraints=constraints)
    elif status == "infeasible":
        values = [0.0 if name == "accuracy" else costs[name] for name in objectives]
        trial = create_trial(values=values, user_attrs=attrs, constraints=constraints)
    elif status == "stopped":
        attrs["val_accuracy"] = accuracy
        trial = create_trial(
            state=TrialState.PRUNED, user_attrs=attrs, constraints=constraints, intermediate_values={1: accuracy}
        )
    elif status in ("failed", "interrupted"):
        trial = create_trial(state=TrialState.FAIL, user_attrs=attrs, constraints=constraints)
    else:
        trial = create_trial(state=TrialState.RUNNING, user_attrs=attrs)
    study.add_trial(trial)


def new_study(objectives: tuple[str, ...] = OBJ3) -> optuna.Study:
    directions = ["maximize" if name == "accuracy" else "minimize" for name in objectives]
    return optuna.create_study(directions=directions)


# --- Pareto front ---------------------------------------------------------------------------


def test_pareto_front_keeps_only_complete_feasible_non_dominated_trials() -> None:
    study = new_study()
    lim = {"flash_bytes": 1000.0, "sram_bytes": 1000.0}

    def c(flash: float, macs: float) -> dict[str, float]:
        return {"flash_bytes": flash, "sram_bytes": 10.0, "macs": macs}

    add_trial(study, "complete", 0.90, c(500, 5000), lim)  # 0: front
    add_trial(study, "complete", 0.80, c(200, 3000), lim)  # 1: front
    add_trial(study, "complete", 0.70, c(300, 4000), lim)  # 2: dominated by 1
    add_trial(study, "complete", 0.95, c(900, 1000), {"flash_bytes": 800.0, "sram_bytes": 1000.0})  # 3: breaks a limit
    add_trial(study, "infeasible", 0.0, c(2000, 100), lim)  # 4
    add_trial(study, "stopped", 0.99, c(100, 100), lim)  # 5
    add_trial(study, "failed", 0.0, c(100, 100), lim)  # 6
    add_trial(study, "interrupted", 0.0, c(100, 100), lim)  # 7
    add_trial(study, "running")  # 8
    add_trial(study, "complete", 0.50, c(100, 9000), lim)  # 9: front (cheapest flash)
    records = to_records(study.trials)
    assert [r.status for r in records][3:9] == ["complete", "infeasible", "stopped", "failed", "interrupted", "running"]
    assert not records[3].feasible

    front = pareto_front(records, OBJ3)

    assert [r.number for r in front] == [0, 1, 9]


def test_pareto_front_keeps_every_trial_of_a_tie_and_sorts_by_accuracy() -> None:
    records = [
        record(0, values=(0.5, 10.0)),
        record(1, values=(0.9, 50.0)),
        record(2, values=(0.9, 50.0)),
        record(3, values=(0.9, 60.0)),  # dominated by the tie
        record(4, values=(0.7, 20.0)),
    ]

    assert [r.number for r in pareto_front(records, ("accuracy", "flash_bytes"))] == [1, 2, 4, 0]
    assert pareto_front([], ("accuracy", "flash_bytes")) == []


def test_pareto_front_rejects_values_that_do_not_match_the_objectives() -> None:
    with pytest.raises(ResultsError, match="trial 0 has 2 values"):
        pareto_front([record(0, values=(0.5, 10.0))], OBJ3)


# --- hypervolume -------------------------------------------------------------------------------


def test_hypervolume_of_a_2d_staircase_by_hand() -> None:
    objectives = ("accuracy", "flash_bytes")
    ref = {"accuracy": 0.0, "flash_bytes": 100.0}
    points = [(0.9, 50.0), (0.6, 20.0), (0.3, 10.0)]
    # Normalised (0.9, .5), (0.6, .2), (0.3, .1): strips of accuracy 0.3 wide with
    # cost from 0.5, 0.2, 0.1 up to 1: 0.3*0.5 + 0.3*0.8 + 0.3*0.9.
    assert hypervolume(points, ref, objectives) == pytest.approx(0.66)
    # A dominated point, a point beyond the reference cost and one on it add nothing.
    extra = [(0.5, 60.0), (0.95, 150.0), (0.99, 100.0)]
    assert hypervolume(points + extra, ref, objectives) == pytest.approx(0.66)
    # With reference accuracy 0.5 only accuracy above 0.5 counts: 0.3*0.5 + 0.1*0.8.
    assert hypervolume(points, {"accuracy": 0.5, "flash_bytes": 100.0}, objectives) == pytest.approx(0.23)
    assert hypervolume([(1.0, 0.0)], ref, objectives) == pytest.approx(1.0)
    assert hypervolume([], ref, objectives) == 0.0


def test_hypervolume_of_3d_and_4d_boxes_by_hand() -> None:
    ref3 = {"accuracy": 0.0, "flash_bytes": 100.0, "macs": 1000.0}
    assert hypervolume([(0.5, 50.0, 500.0)], ref3, OBJ3) == pytest.approx(0.125)
    # Boxes 0.8*0.5*0.2 = 0.08 and 0.4*0.8*0.5 = 0.16 overlap in 0.4*0.5*0.2 = 0.04.
    two = [(0.8, 50.0, 800.0), (0.4, 20.0, 500.0)]
    assert hypervolume(two, ref3, OBJ3) == pytest.approx(0.2)
    # A third box 0.2*0.9*0.9 = 0.162; inclusion-exclusion over the three boxes:
    # pairwise 0.04, 0.2*0.5*0.2 = 0.02, 0.2*0.8*0.5 = 0.08; triple 0.2*0.5*0.2 = 0.02.
    three = [*two, (0.2, 10.0, 100.0)]
    assert hypervolume(three, ref3, OBJ3) == pytest.approx(0.08 + 0.16 + 0.162 - 0.04 - 0.02 - 0.08 + 0.02)

    obj4 = ("accuracy", "flash_bytes", "sram_bytes", "macs")
    ref4 = {"accuracy": 0.0, "flash_bytes": 10.0, "sram_bytes": 10.0, "macs": 10.0}
    a, b = (0.5, 5.0, 5.0, 5.0), (0.25, 2.0, 8.0, 5.0)
    # 0.5^4 + 0.25*0.8*0.2*0.5 - 0.25*0.5*0.2*0.5
    assert hypervolume([a, b], ref4, obj4) == pytest.approx(0.0625 + 0.02 - 0.0125)


def _monte_carlo(points: np.ndarray, n: int, seed: int) -> float:
    """Share of uniform samples of the unit box (accuracy up, normalised costs down) some point dominates."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n // 20_000):
        samples = rng.uniform(size=(20_000, points.shape[1]))
        better_acc = points[None, :, 0] >= samples[:, None, 0]
        cheaper = np.all(points[None, :, 1:] <= samples[:, None, 1:], axis=2)
        hits += int(np.any(better_acc & cheaper, axis=1).sum())
    return hits / n


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_agrees_with_monte_carlo(m: int) -> None:
    names = ("accuracy", "flash_bytes", "sram_bytes", "macs")[:m]
    rng = np.random.default_rng(m)
    points = rng.uniform(size=(25, m))
    points[:, 0] = 0.4 + 0.6 * points[:, 0]
    ref = {"accuracy": 0.0} | {name: 1.0 for name in names[1:]}
    n = 400_000

    estimate = _monte_carlo(points, n, seed=10 + m)
    exact = hypervolume(points, ref, names)

    sigma = np.sqrt(estimate * (1 - estimate) / n)
    assert abs(exact - estimate) < 5 * sigma
    # Units do not matter: costs in bytes against a reference in bytes give the same volume.
    scaled = points * np.array([1.0] + [4096.0] * (m - 1))
    assert hypervolume(scaled, {"accuracy": 0.0} | {name: 4096.0 for name in names[1:]}, names) == pytest.approx(exact)


def test_hypervolume_rejects_a_bad_reference_or_shape() -> None:
    objectives = ("accuracy", "flash_bytes")
    with pytest.raises(ResultsError, match="reference: no value for objective"):
        hypervolume([(0.5, 1.0)], {"accuracy": 0.0}, objectives)
    with pytest.raises(ResultsError, match=r"reference\.flash_bytes"):
        hypervolume([(0.5, 1.0)], {"accuracy": 0.0, "flash_bytes": 0.0}, objectives)
    with pytest.raises(ResultsError, match=r"reference\.accuracy"):
        hypervolume([(0.5, 1.0)], {"accuracy": 1.0, "flash_bytes": 2.0}, objectives)
    with pytest.raises(ResultsError, match=r"points: expected shape \(n, 2\)"):
        hypervolume([(0.5, 1.0, 2.0)], {"accuracy": 0.0, "flash_bytes": 2.0}, objectives)


# --- hypervolume history ----------------------------------------------------------------------


def test_hypervolume_history_is_monotone_and_counts_budgeted_statuses() -> None:
    objectives = ("accuracy", "flash_bytes")
    ref = {"accuracy": 0.0, "flash_bytes": 100.0}
    records = [
        record(0, values=(0.3, 10.0), duration_s=2.0),  # hv 0.27
        record(1, "infeasible", values=(0.0, 500.0), feasible=False, duration_s=0.5),
        record(2, "interrupted", duration_s=100.0),  # re-queued: no entry, no seconds
        record(3, "stopped", duration_s=1.0),
        record(4, values=(0.9, 50.0), duration_s=None),  # hv 0.27 + 0.6*0.5 = 0.57
        record(5, "failed", duration_s=0.25),
        record(6, "running"),
        record(7, values=(0.2, 60.0), duration_s=1.0),  # dominated
        record(8, values=(0.6, 20.0), duration_s=1.0),  # hv 0.66
        record(9, "waiting"),
    ]

    history = hypervolume_history(list(reversed(records)), objectives, ref)

    assert [h["trial"] for h in history] == [0, 1, 3, 4, 5, 7, 8]
    assert [h["trials_done"] for h in history] == [1, 2, 3, 4, 5, 6, 7]
    assert [h["cpu_seconds"] for h in history] == pytest.approx([2.0, 2.5, 3.5, 3.5, 3.75, 4.75, 5.75])
    volumes = [h["hypervolume"] for h in history]
    assert volumes == pytest.approx([0.27, 0.27, 0.27, 0.57, 0.57, 0.57, 0.66])
    assert all(b >= a for a, b in itertools.pairwise(volumes))
    front = pareto_front(records, objectives)
    assert volumes[-1] == pytest.approx(hypervolume([r.values for r in front], ref, objectives))


def test_history_counts_work_seconds_not_overlapping_durations() -> None:
    # Ray's look-ahead asks trial 1 while trial 0 trains: trial 1's duration (9 s) holds
    # 5 s of trial 0's training. The axis sums what each trial cost: driver + worker.
    objectives, ref = ("accuracy", "flash_bytes"), {"accuracy": 0.0, "flash_bytes": 100.0}
    measured = [{"driver_seconds": 0.5, "worker_seconds": 5.0}, {"driver_seconds": 0.25, "worker_seconds": 4.0}]
    records = [
        replace(record(n, values=(0.5, 10.0 * (n + 1)), duration_s=d), measured=m)
        for n, (d, m) in enumerate(zip((5.5, 9.0), measured, strict=True))
    ]
    records.append(replace(record(2, "infeasible", feasible=False, duration_s=0.2), measured={"driver_seconds": 0.1}))

    history = hypervolume_history(records, objectives, ref)

    assert [h["cpu_seconds"] for h in history] == pytest.approx([5.5, 9.75, 9.85])
    assert [r.work_seconds for r in records] == pytest.approx([5.5, 4.25, 0.1])


def test_hypervolume_history_is_monotone_on_many_random_trials() -> None:
    rng = np.random.default_rng(3)
    objectives = ("accuracy", "flash_bytes", "sram_bytes", "macs")
    ref = {"accuracy": 0.0, "flash_bytes": 1.0, "sram_bytes": 1.0, "macs": 1.0}
    statuses = rng.choice(["complete", "infeasible", "stopped", "failed"], size=150, p=[0.7, 0.1, 0.1, 0.1])
    records = [
        record(i, str(s), values=tuple(rng.uniform(size=4)) if s in ("complete", "infeasible") else None)
        for i, s in enumerate(statuses)
    ]

    volumes = [h["hypervolume"] for h in hypervolume_history(records, objectives, ref)]

    assert len(volumes) == 150
    assert all(b >= a for a, b in itertools.pairwise(volumes))
    assert volumes[-1] == pytest.approx(
        hypervolume([r.values for r in pareto_front(records, objectives)], ref, objectives)
    )


# --- reference point -------------------------------------------------------------------------


def test_random_points_are_reproducible_and_inside_the_distributions() -> None:
    space = SearchJobSpec.model_validate(SPEC).build_search_space()
    dists = space.distributions()

    a, b = random_points(dists, 300, 0), random_points(dists, 300, 0)

    assert a == b
    assert a != random_points(dists, 300, 1)
    for point in a:
        assert space.check_params(point) == point
    for name, dist in dists.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert {p[name] for p in a} == set(dist.choices)
        else:
            drawn = [p[name] for p in a]
            assert min(drawn) < dist.low + 0.2 * (dist.high - dist.low)
            assert max(drawn) > dist.high - 0.2 * (dist.high - dist.low)


def test_reference_point_of_a_real_spec_is_deterministic_and_ignores_the_seed() -> None:
    spec = SearchJobSpec.model_validate(SPEC)
    reseeded = SearchJobSpec.model_validate(SPEC | {"seed": 7, "n_trials": 5})
    _reference_point_cached.cache_clear()

    ref = reference_point(spec)
    _reference_point_cached.cache_clear()
    again = reference_point(reseeded)
    direct = reference_point_for(
        spec.build_search_space(), spec.device_spec(), spec.runtime, spec.objectives, spec.limits()
    )

    assert list(ref) == list(spec.objectives)
    assert ref == again == direct
    assert ref["accuracy"] == 0.0
    assert ref["flash_bytes"] == spec.limits()["flash_bytes"] == spec.device_spec().flash_bytes
    # MACs have no limit: the most of any feasible point of the fixed screen (every point
    # of this tiny space fits in 64 KiB of SRAM), above what the smallest network needs.
    space = spec.build_search_space()
    screen = cost_points(space, random_points(space.distributions(), SCREEN_POINTS, SCREEN_SEED), "stm32f446re", "tflm")
    assert feasible_mask(screen, spec.limits()).all()
    assert ref["macs"] == screen["macs"].max() > spec.minimum_costs()["macs"]
    assert reference_point(spec) is not reference_point(spec)  # a fresh dict each call


def test_reference_point_for_uses_budgets_and_falls_back_to_all_points() -> None:
    spec = SearchJobSpec.model_validate(SPEC)
    space, device = spec.build_search_space(), spec.device_spec()
    objectives = ("accuracy", "sram_bytes", "latency_ms")

    budgeted = reference_point_for(space, device, "tflm", objectives, spec.limits() | {"latency_ms": 12.5})
    assert budgeted == {"accuracy": 0.0, "sram_bytes": 65536.0, "latency_ms": 12.5}

    # Only the feasible points count, unless none is feasible: then all of them do.
    screen = cost_points(space, random_points(space.distributions(), SCREEN_POINTS, SCREEN_SEED), device, "tflm")
    tight = {"flash_bytes": 60_000.0, "sram_bytes": 18_000.0}
    feasible = (screen["flash_bytes"] <= 60_000) & (screen["sram_bytes"] <= 18_000)
    assert 0 < feasible.sum() < SCREEN_POINTS
    some = reference_point_for(space, device, "tflm", ("accuracy", "macs", "latency_ms"), tight)
    assert some["macs"] == screen["macs"][feasible].max() < screen["macs"].max()
    assert some["latency_ms"] == screen["latency_ms"][feasible].max() < screen["latency_ms"].max()
    nothing = reference_point_for(space, device, "tflm", objectives, {"flash_bytes": 1.0, "sram_bytes": 1.0})
    assert nothing == {"accuracy": 0.0, "sram_bytes": 1.0, "latency_ms": screen["latency_ms"].max()}


# --- best per budget ---------------------------------------------------------------------------


def test_best_per_budget_picks_the_most_accurate_trial_within_each_budget() -> None:
    objectives = ("accuracy", "flash_bytes")

    def c(flash: float, sram: float) -> dict[str, float]:
        return {"flash_bytes": flash, "sram_bytes": sram, "macs": 1.0}

    records = [
        record(0, values=(0.95, 99.0), costs=c(99, 40)),
        record(1, values=(0.90, 70.0), costs=c(70, 10)),
        record(2, values=(0.80, 40.0), costs=c(40, 45)),
        record(3, values=(0.80, 30.0), costs=c(30, 45)),  # ties trial 2: the earlier wins
        record(4, values=(0.60, 20.0), costs=c(20, 5)),
        record(5, values=(0.99, 10.0), costs=c(10, 5), feasible=False),
        record(6, "stopped", costs=c(5, 5)),
        record(7, "infeasible", values=(0.0, 5.0), costs=c(5, 5), feasible=False),
        record(8, values=(0.97, 101.0), costs=c(101, 5)),  # stored feasible, beyond these limits
    ]

    result = best_per_budget(records, objectives, LIMITS)

    assert result["limits"] == LIMITS
    assert result["best"] == {"number": 0, "accuracy": 0.95, "costs": c(99, 40)}
    flash = result["staircase"]["flash_bytes"]
    assert [step["fraction"] for step in flash] == [0.25, 0.5, 0.75, 1.0]
    assert [step["budget"] for step in flash] == [25.0, 50.0, 75.0, 100.0]
    assert [step["best"]["number"] for step in flash] == [4, 2, 1, 0]
    sram = result["staircase"]["sram_bytes"]
    # SRAM 12.5: trials 1 and 4 fit, 1 is more accurate; SRAM 25 likewise; 37.5 too; 50: trial 0.
    assert [step["best"]["number"] for step in sram] == [1, 1, 1, 0]
    assert best_per_budget(records, objectives, {"flash_bytes": 15.0})["best"] is None
    assert best_per_budget(records, objectives, {"flash_bytes": 60.0})["staircase"]["flash_bytes"][0]["best"] is None


# --- SearchResults -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def job() -> tuple[SearchJobSpec, optuna.Study]:
    spec = SearchJobSpec.model_validate(SPEC)
    limits = spec.limits()
    study = new_study()
    trials = [
        ("complete", 0.92, 300_000, 40_000, 2_000_000),
        ("complete", 0.88, 120_000, 30_000, 900_000),
        ("complete", 0.88, 120_000, 30_000, 900_000),
        ("complete", 0.70, 60_000, 20_000, 300_000),
        ("complete", 0.65, 150_000, 20_000, 950_000),  # dominated
        ("infeasible", 0.0, 400_000, 90_000, 800_000),
        ("stopped", 0.40, 50_000, 10_000, 100_000),
        ("failed", 0.0, 50_000, 10_000, 100_000),
        ("interrupted", 0.0, 50_000, 10_000, 100_000),
    ]
    for status, acc, flash, sram, macs in trials:
        costs = {"flash_bytes": flash, "sram_bytes": sram, "macs": macs, "latency_ms": macs / 1e5, "energy_mj": 0.1}
        add_trial(study, status, acc, costs, limits)
    add_trial(study, "running")
    return spec, study


def test_search_results_from_study(job: tuple[SearchJobSpec, optuna.Study]) -> None:
    spec, study = job

    results = SearchResults.from_study(study, spec)

    assert results.objectives == OBJ3
    assert results.reference_point == reference_point(spec)
    assert [r.number for r in results.pareto_front] == [0, 1, 2, 3]
    assert results.counts == {
        "complete": 5,
        "infeasible": 1,
        "stopped": 1,
        "failed": 1,
        "interrupted": 1,
        "running": 1,
        "waiting": 0,
    }
    assert len(results.hypervolume_history) == 8
    assert results.hypervolume_history[-1]["hypervolume"] == pytest.approx(results.hypervolume)
    assert 0 < results.hypervolume < 1
    assert results.best_per_budget["best"]["number"] == 0
    # SRAM budgets 16 KiB (no trial fits), 32 KiB, 48 KiB, 64 KiB.
    sram = results.best_per_budget["staircase"]["sram_bytes"]
    assert [step["best"] and step["best"]["number"] for step in sram] == [None, 1, 0, 0]


def test_search_results_to_dict_is_json(job: tuple[SearchJobSpec, optuna.Study]) -> None:
    spec, study = job
    results = SearchResults.from_study(study, spec)

    data = json.loads(json.dumps(results.to_dict()))

    assert data["objectives"] == list(OBJ3)
    assert [t["number"] for t in data["pareto_front"]] == [0, 1, 2, 3]
    assert len(data["trials"]) == 10
    assert data["hypervolume"] == pytest.approx(results.hypervolume)
    assert data["best_per_budget"]["best"]["number"] == 0


def test_format_table_has_one_row_per_front_member(job: tuple[SearchJobSpec, optuna.Study]) -> None:
    spec, study = job
    results = SearchResults.from_study(study, spec)

    lines = results.format_table().splitlines()

    assert lines[0].startswith("Pareto front: 4 of 8 trials; objectives accuracy (max), flash_bytes (min), macs (min)")
    assert lines[1].split() == ["trial", "accuracy", "%", "flash", "KiB", "SRAM", "KiB", "MACs", "latency", "ms"]
    rows = [line.split() for line in lines[3:]]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    assert rows[0] == ["0", "92.00", "293.0", "39.1", "2,000,000", "20"]
    truncated = results.format_table(max_rows=2).splitlines()
    assert len(truncated) == 3 + 2 + 1
    assert truncated[-1] == "... and 2 more"


def test_format_table_of_an_empty_front() -> None:
    spec = SearchJobSpec.model_validate(SPEC)
    study = new_study()
    add_trial(study, "failed")

    results = SearchResults.from_study(study, spec)

    assert results.pareto_front == ()
    assert results.hypervolume == 0.0
    assert results.format_table().splitlines()[1].startswith("(empty")
    json.dumps(results.to_dict())


def test_from_study_rejects_a_study_of_other_objectives() -> None:
    with pytest.raises(ResultsError, match="has 2 objectives"):
        SearchResults.from_study(new_study(("accuracy", "flash_bytes")), SearchJobSpec.model_validate(SPEC))
