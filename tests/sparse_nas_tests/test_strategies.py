"""The sampler contract, for every strategy: seeded, reproducible in a fresh process, picklable.

The samplers are driven as the engine drives them (ask, sample the space, cost, store
costs and constraints, tell) but with a synthetic accuracy, so no model is trained.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from sparse_nas.search.costs import constraint_values, cost_point, infeasible_reason
from sparse_nas.search.records import INFEASIBLE_ACCURACY, objective_values
from sparse_nas.search.results import reference_point
from sparse_nas.spec import SearchJobSpec
from sparse_nas.strategies import SAMPLER_STRATEGIES, StrategyError, make_sampler

REPO = Path(__file__).resolve().parents[2]
N_TRIALS = 7


def spec_for(strategy: str, seed: int = 0) -> SearchJobSpec:
    return SearchJobSpec.model_validate(
        {
            "dataset": {"name": "digits"},
            "search_space": {"name": "sparse_cnn"},
            "device": "stm32f446re",
            "budgets": {"max_sram_bytes": 20000},
            "strategy": strategy,
            "seed": seed,
            "n_trials": N_TRIALS,
            "initial_trials": 4,
        }
    )


def synthetic_accuracy(params: dict[str, Any]) -> float:
    """Deterministic in the point: wider first layers score higher, plus a hashed jitter."""
    jitter = int(hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:6], 16) / 16**6
    return min(0.99, 0.5 + params["conv0_channels"] / 200 + 0.05 * jitter)


def drive(spec: SearchJobSpec, sampler: optuna.samplers.BaseSampler, study: optuna.Study | None = None,
          n: int = N_TRIALS) -> tuple[optuna.Study, list[dict[str, Any]]]:  # fmt: skip
    space, device, limits = spec.build_search_space(), spec.device_spec(), spec.limits()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = study or optuna.create_study(directions=spec.directions(), sampler=sampler)
    points = []
    for _ in range(n):
        trial = study.ask()
        params = space.sample(trial)
        costs = cost_point(space, params, device, spec.runtime)
        for metric, value in costs.items():
            trial.set_user_attr(metric, value)
        for name, value in constraint_values(costs, limits).items():
            trial.set_constraint(name, value)
        feasible = infeasible_reason(costs, limits) is None
        trial.set_user_attr("status", "complete" if feasible else "infeasible")
        accuracy = synthetic_accuracy(params) if feasible else INFEASIBLE_ACCURACY
        study.tell(trial, objective_values(spec.objectives, accuracy, costs))
        points.append(params)
    return study, points


def sampler_for(strategy: str, seed: int = 0) -> tuple[SearchJobSpec, optuna.samplers.BaseSampler]:
    spec = spec_for(strategy, seed)
    return spec, make_sampler(spec, spec.build_search_space(), reference_point(spec))


@pytest.mark.parametrize("strategy", SAMPLER_STRATEGIES)
def test_other_seeds_give_other_suggestions(strategy: str) -> None:
    # Same seed, same suggestions: test_suggestions_are_the_same_in_a_fresh_process.
    assert drive(*sampler_for(strategy, seed=3))[1] != drive(*sampler_for(strategy, seed=4))[1]


@pytest.mark.parametrize("strategy", SAMPLER_STRATEGIES)
def test_a_pickled_sampler_continues_like_the_original(strategy: str) -> None:
    spec, sampler = sampler_for(strategy)
    pickle.loads(pickle.dumps(sampler))  # before use
    study, _ = drive(spec, sampler, n=4)
    clone = pickle.loads(pickle.dumps(sampler))  # after use
    twin = optuna.create_study(directions=spec.directions(), sampler=clone)
    twin.add_trials(study.trials)
    _, original_next = drive(spec, sampler, study, n=3)
    _, clone_next = drive(spec, clone, twin, n=3)
    assert clone_next == original_next


_FRESH = """
import json, sys
sys.path.insert(0, {tests!r})
from sparse_nas_tests.test_strategies import drive, sampler_for
print(json.dumps({{s: drive(*sampler_for(s, seed=3))[1] for s in {strategies!r}}}))
"""


def test_suggestions_are_the_same_in_a_fresh_process() -> None:
    code = _FRESH.format(tests=str(REPO / "tests"), strategies=list(SAMPLER_STRATEGIES))
    fresh_process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    here = {s: drive(*sampler_for(s, seed=3))[1] for s in SAMPLER_STRATEGIES}
    stdout, stderr = fresh_process.communicate(timeout=600)
    assert fresh_process.returncode == 0, stderr
    done = subprocess.CompletedProcess(fresh_process.args, 0, stdout, stderr)
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    for strategy in SAMPLER_STRATEGIES:
        assert fresh[strategy] == json.loads(json.dumps(here[strategy])), strategy


def test_dnas_is_not_a_sampler_strategy() -> None:
    spec = spec_for("dnas")
    with pytest.raises(StrategyError, match="mobo, gp, nsga2, tpe, random"):
        make_sampler(spec, spec.build_search_space(), reference_point(spec))
