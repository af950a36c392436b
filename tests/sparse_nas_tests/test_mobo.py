"""Tests of the mobo sampler: feasibility, determinism, pickling, pending points, Sobol start, BO gain.

The sampler is driven as the engine drives it (ask, sample the space, cost, store the
costs, tell) on a real search space and device, with a synthetic accuracy that is a
deterministic function of the point: the tests check the sampler, not training. The
acquisition's pieces are checked against independent references (botorch's
hypervolume, GP posterior and qNEHVI).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from search_spaces.families import get_search_space
from sparse_nas.search.costs import cost_point, cost_points, feasible_mask, infeasible_reason
from sparse_nas.search.records import INFEASIBLE_ACCURACY, objective_values
from sparse_nas.search.results import hypervolume
from sparse_nas.strategies import mobo
from sparse_nas.strategies._encoding import ParamEncoding
from sparse_nas.strategies.mobo import MoboConfigError, MoboSampler, NoFeasibleCandidateError

REPO = Path(__file__).resolve().parents[2]
SPACE = get_search_space("ds_cnn", (1, 49, 10), 10)
DEVICE = "stm32f446re"
RUNTIME = "tflm"
OBJECTIVES = ("accuracy", "flash_bytes", "sram_bytes")
DIRECTIONS = ["maximize", "minimize", "minimize"]
# About 70% of uniformly random ds_cnn points break these (checked below).
LIMITS = {"flash_bytes": 64_000.0, "sram_bytes": 48_000.0}
REFERENCE = {"accuracy": 0.0, "flash_bytes": 64_000.0, "sram_bytes": 48_000.0}
N_INITIAL = 6


def synthetic_accuracy(params: dict[str, Any]) -> float:
    """Saturating in the network's total width, a little better with depth and dense blocks, plus a hashed jitter."""
    n = params["n_blocks"]
    width = params["stem_channels"] + sum(params[f"block{i}_channels"] for i in range(n))
    dense = sum(params[f"block{i}_pw_method"] == "dense" for i in range(n)) / n
    jitter = int(hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8], 16) / 16**8
    return 0.3 + 0.5 * (1.0 - math.exp(-width / 150.0)) + 0.03 * n / 6 + 0.05 * dense + 0.02 * jitter


def make_sampler(seed: int = 0, **options: Any) -> MoboSampler:
    settings = {"n_initial": N_INITIAL, "pool_size": 384} | options
    return MoboSampler(SPACE, DEVICE, RUNTIME, OBJECTIVES, LIMITS, REFERENCE, seed=seed, **settings)


def tell(study: optuna.Study, trial: optuna.Trial, params: dict[str, Any]) -> None:
    """Cost the point and tell it as the engine does (an infeasible point is never trained)."""
    costs = cost_point(SPACE, params, DEVICE, RUNTIME)
    for metric, value in costs.items():
        trial.set_user_attr(metric, value)
    feasible = infeasible_reason(costs, LIMITS) is None
    trial.set_user_attr("status", "complete" if feasible else "infeasible")
    accuracy = synthetic_accuracy(params) if feasible else INFEASIBLE_ACCURACY
    study.tell(trial, objective_values(OBJECTIVES, accuracy, costs))


def drive(
    sampler: optuna.samplers.BaseSampler, n: int, study: optuna.Study | None = None
) -> tuple[optuna.Study, list[dict[str, Any]]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = study or optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    points = []
    for _ in range(n):
        trial = study.ask()
        params = SPACE.sample(trial)
        tell(study, trial, params)
        points.append(params)
    return study, points


def study_hypervolume(study: optuna.Study) -> float:
    values = [t.values for t in study.trials if t.user_attrs.get("status") == "complete"]
    return hypervolume(values, REFERENCE, OBJECTIVES)


def feasible(params: dict[str, Any]) -> bool:
    return infeasible_reason(cost_point(SPACE, params, DEVICE, RUNTIME), LIMITS) is None


# --- feasibility, determinism, pickling -------------------------------------------------------


def test_every_suggestion_is_feasible_under_tight_limits() -> None:
    random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = [random.ask(SPACE.distributions()).params for _ in range(500)]
    assert feasible_mask(cost_points(SPACE, points, DEVICE, RUNTIME), LIMITS).mean() < 0.4

    study, suggested = drive(make_sampler(), N_INITIAL + 8)
    assert all(feasible(p) for p in suggested)
    assert all(t.user_attrs["status"] == "complete" for t in study.trials)
    assert all(mobo.GP_STATE_ATTR in t.system_attrs for t in study.trials[N_INITIAL:])


def test_same_seed_same_suggestions_other_seed_differs() -> None:
    first = drive(make_sampler(seed=3), N_INITIAL + 4)[1]
    again = drive(make_sampler(seed=3), N_INITIAL + 4)[1]
    other = drive(make_sampler(seed=4), N_INITIAL + 4)[1]
    assert first == again
    assert first[:N_INITIAL] != other[:N_INITIAL]
    assert first[N_INITIAL:] != other[N_INITIAL:]


_FRESH = """
import json, sys
sys.path.insert(0, {tests!r})
from sparse_nas_tests.test_mobo import drive, make_sampler, N_INITIAL
print(json.dumps(drive(make_sampler(seed=3), N_INITIAL + 4)[1]))
"""


def test_same_suggestions_in_a_fresh_process() -> None:
    here = drive(make_sampler(seed=3), N_INITIAL + 4)[1]
    code = _FRESH.format(tests=str(REPO / "tests"))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == json.loads(json.dumps(here))


def test_pickled_sampler_continues_like_the_original() -> None:
    sampler = make_sampler()
    pickle.loads(pickle.dumps(sampler))  # before use
    study, _ = drive(sampler, N_INITIAL + 2)
    clone = pickle.loads(pickle.dumps(sampler))  # after use: caches rebuilt on demand
    twin = optuna.create_study(directions=DIRECTIONS, sampler=clone)
    twin.add_trials(study.trials)
    assert drive(clone, 3, twin)[1] == drive(sampler, 3, study)[1]


def test_sampler_state_is_read_from_the_study_not_the_instance() -> None:
    """A fresh sampler on a half-run study (a resumed job) suggests what the original would."""
    study, _ = drive(make_sampler(), N_INITIAL + 3)
    twin = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler())
    twin.add_trials(study.trials)
    assert drive(twin.sampler, 2, twin)[1] == drive(study.sampler, 2, study)[1]


# --- pending points ---------------------------------------------------------------------------


def test_running_trial_with_the_top_candidate_is_not_suggested_again() -> None:
    study, _ = drive(make_sampler(), N_INITIAL + 4)
    twin = optuna.create_study(directions=DIRECTIONS, sampler=make_sampler())
    twin.add_trials(study.trials)
    running = study.ask()
    top = SPACE.sample(running)  # left RUNNING
    assert SPACE.sample(twin.ask()) == top  # the same history gives the same top candidate
    following = SPACE.sample(study.ask())
    assert following != top
    assert feasible(following)


def test_a_pending_point_removes_its_own_improvement() -> None:
    """NEHVI samples pending points into every front: a candidate equal to one gains nothing."""
    study, _ = drive(make_sampler(), N_INITIAL + 6)
    encoding = ParamEncoding(SPACE.distributions())
    observed = [t.params for t in study.trials]
    observed_costs = np.array([t.values[1:] for t in study.trials])
    accuracy = torch.tensor([[t.values[0]] for t in study.trials], dtype=torch.float64)
    gp, _ = mobo._fit_gp(torch.tensor(encoding.encode(observed)), accuracy, None)
    pool = make_sampler(pool_size=64)._candidate_pool()
    candidates = points(encoding, pool.params, pool.costs)

    def scores(front: mobo._Points) -> np.ndarray:
        return mobo._nehvi(gp, front, candidates, 0.0, n_scored=len(pool), mc_samples=256, seed=1)[0]

    alone = scores(points(encoding, observed, observed_costs))
    best = int(np.argmax(alone))
    pending = points(encoding, [*observed, pool.params[best]], np.vstack([observed_costs, pool.costs[best, :2]]))
    with_pending = scores(pending)
    assert alone[best] > 0
    assert with_pending[best] < 1e-3 * alone[best]
    assert with_pending.sum() < alone.sum()


def points(encoding: ParamEncoding, params: list[dict[str, Any]], costs: np.ndarray) -> mobo._Points:
    scale = np.array([REFERENCE["flash_bytes"], REFERENCE["sram_bytes"]])
    # Screened costs hold the objectives first, then the GP's capacity features.
    objective_costs = np.asarray(costs)[:, : len(scale)]
    return mobo._Points(torch.tensor(encoding.encode(params)), torch.tensor(-objective_costs / scale))


# --- the initial phase and the BO phase -------------------------------------------------------


def test_initial_suggestions_are_the_first_feasible_sobol_points() -> None:
    n_initial = 10
    suggested = drive(make_sampler(seed=5, n_initial=n_initial), n_initial)[1]
    encoding = ParamEncoding(SPACE.distributions())
    unit = torch.quasirandom.SobolEngine(encoding.n_unit, scramble=True, seed=5).draw(256, dtype=torch.float64)
    sobol = encoding.from_unit(unit.numpy())
    mask = feasible_mask(cost_points(SPACE, sobol, DEVICE, RUNTIME), LIMITS)
    assert suggested == [p for p, ok in zip(sobol, mask, strict=True) if ok][:n_initial]
    assert len({json.dumps(p, sort_keys=True) for p in suggested}) == n_initial
    assert {p["stem_kernel"] for p in suggested} == {"10x4", "5x3", "3x3"}
    assert {p["block0_dw_kernel"] for p in suggested} == {3, 5}
    assert len({p["block0_pw_method"] for p in suggested}) >= 5


def test_bo_phase_beats_random_and_space_filling_in_hypervolume() -> None:
    n_trials = 25
    gains = []
    for seed in (0, 1):
        bo = study_hypervolume(drive(make_sampler(seed, n_initial=8), n_trials)[0])
        sobol_only = study_hypervolume(drive(make_sampler(seed, n_initial=n_trials), n_trials)[0])
        random = study_hypervolume(drive(optuna.samplers.RandomSampler(seed=seed), n_trials)[0])
        gains.append((bo, sobol_only, random))
    bo, sobol_only, random = np.mean(gains, axis=0)
    assert bo > sobol_only
    assert bo > random


# --- acquisition pieces against independent references ------------------------------------------


@pytest.mark.parametrize("n_costs", [1, 2, 3])
def test_improvement_matches_botorch_hypervolume(n_costs: int) -> None:
    from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

    def volume(y: torch.Tensor, ref: torch.Tensor) -> float:
        return DominatedPartitioning(ref_point=ref, Y=y).compute_hypervolume().item() if len(y) else 0.0

    generator = torch.Generator().manual_seed(n_costs)
    ref_accuracy = 0.2
    ref = torch.tensor([ref_accuracy] + [-1.0] * n_costs, dtype=torch.float64)
    for k in (0, 1, 5, 11):
        front_z = -1.2 * torch.rand(k, n_costs, generator=generator, dtype=torch.float64)  # some beyond the reference
        front_acc = torch.rand(3, k, generator=generator, dtype=torch.float64)
        z = -1.2 * torch.rand(6, n_costs, generator=generator, dtype=torch.float64)
        z[: min(3, k)] = front_z[: min(3, k)]  # costs on the grid's edges
        acc = torch.rand(3, 6, generator=generator, dtype=torch.float64)
        gains = mobo._improvement(acc, z, front_acc, front_z, ref_accuracy)
        for s in range(3):
            front = torch.cat([front_acc[s].unsqueeze(-1), front_z], dim=-1)
            for i in range(6):
                point = torch.cat([acc[s, i : i + 1], z[i]]).unsqueeze(0)
                expected = volume(torch.cat([front, point]), ref) - volume(front, ref)
                assert gains[s, i].item() == pytest.approx(expected, abs=1e-12)


def test_marginals_match_the_gp_posterior() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(30, 5, generator=generator, dtype=torch.float64)
    y = x[:, :2].sum(-1, keepdim=True) + 0.05 * torch.randn(30, 1, generator=generator, dtype=torch.float64)
    gp, _ = mobo._fit_gp(x, y, None)
    query = torch.rand(40, 5, generator=generator, dtype=torch.float64)
    mean, std = mobo._marginals(gp, query)
    with torch.no_grad():
        posterior = gp.posterior(query)
    assert torch.allclose(mean, posterior.mean.reshape(-1), atol=1e-9)
    assert torch.allclose(std, posterior.variance.reshape(-1).sqrt(), atol=1e-9)


@pytest.mark.filterwarnings("ignore:qNoisyExpectedHypervolumeImprovement has known numerical issues")
@pytest.mark.parametrize("n_costs", [1, 2])
def test_nehvi_matches_botorch_qnehvi(n_costs: int) -> None:
    """Same model, same reference, same pending point: botorch's MC qNEHVI (box decompositions) agrees."""
    from botorch.acquisition.multi_objective.monte_carlo import qNoisyExpectedHypervolumeImprovement
    from botorch.models import ModelList, SingleTaskGP
    from botorch.models.deterministic import GenericDeterministicModel
    from botorch.models.transforms.outcome import Standardize
    from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
    from botorch.sampling import ListSampler, SobolQMCNormalSampler
    from botorch.sampling.index_sampler import IndexSampler

    generator = torch.Generator().manual_seed(n_costs)
    mc_samples = 256  # botorch decomposes the front once per sample: 10 ms each for 3 objectives
    d = 3
    x = torch.rand(12, d, generator=generator, dtype=torch.float64)
    z = -0.2 - 0.7 * torch.rand(12, n_costs, generator=generator, dtype=torch.float64)
    y = 0.5 + 0.3 * x[:, :1] - 0.2 * z[:, :1] + 0.02 * torch.randn(12, 1, generator=generator, dtype=torch.float64)
    train, pending, candidates = slice(0, 10), slice(10, 11), slice(11, 12)
    gp, _ = mobo._fit_gp(x[train], y[train], None)
    cand_x = torch.cat([x[candidates], torch.rand(5, d, generator=generator, dtype=torch.float64)])
    cand_z = torch.cat([z[candidates], -0.3 * torch.rand(5, n_costs, generator=generator, dtype=torch.float64)])
    ours = mobo._nehvi(
        gp,
        mobo._Points(x[:11], z[:11]),
        mobo._Points(cand_x, cand_z),
        0.3,
        n_scored=6,
        mc_samples=mc_samples,
        seed=0,
    )[0]

    # The same GP over (encoding, costs) features, seeing the encoding only; costs exact.
    features = torch.cat([x, z], dim=-1)
    reference_gp = SingleTaskGP(
        features[train],
        y[train],
        covar_module=get_covar_module_with_dim_scaled_prior(ard_num_dims=d, active_dims=list(range(d))),
        outcome_transform=Standardize(m=1),
    )
    reference_gp.load_state_dict(gp.state_dict(), strict=False)  # all but its active_dims
    reference_gp.eval()
    model = ModelList(reference_gp, GenericDeterministicModel(lambda f: f[..., d:], num_outputs=n_costs))
    shape = torch.Size([mc_samples])
    acquisition = qNoisyExpectedHypervolumeImprovement(
        model,
        ref_point=[0.3] + [-1.0] * n_costs,
        X_baseline=features[train],
        sampler=ListSampler(SobolQMCNormalSampler(shape, seed=0), IndexSampler(shape, seed=0)),
        X_pending=features[pending],
        prune_baseline=False,
    )
    with torch.no_grad():
        theirs = acquisition(torch.cat([cand_x, cand_z], dim=-1).unsqueeze(-2)).numpy()
    assert theirs.max() > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=0.1, atol=0.02 * theirs.max())


# --- encoding ------------------------------------------------------------------------------------


def test_unit_cube_maps_onto_every_value_and_encodes_into_the_unit_cube() -> None:
    encoding = ParamEncoding(SPACE.distributions())
    grid = np.linspace(0.0, 1.0, 257)
    for name in encoding.free:
        values = set(encoding.values_from_unit(name, grid))
        count = encoding.choice_count(name)
        if count is not None:
            assert len(values) == count, name
        for value in values:
            assert encoding.values_from_unit(name, np.array([encoding.to_unit(name, value)]))[0] == value
    points = encoding.from_unit(np.random.default_rng(0).random((50, encoding.n_unit)))
    assert all(SPACE.check_params(p) == p for p in points)
    features = encoding.encode(points)
    assert features.shape == (50, encoding.width)
    assert features.min() >= 0.0 and features.max() <= 1.0


def test_log_integers_spread_evenly_in_log_space() -> None:
    from optuna.distributions import IntDistribution

    encoding = ParamEncoding({"units": IntDistribution(16, 256, log=True)})
    values = np.array(encoding.values_from_unit("units", np.linspace(0, 1, 10001)))
    assert values.min() == 16 and values.max() == 256
    assert np.median(values) == pytest.approx(64, rel=0.05)  # the geometric mean of 16 and 256


# --- errors and fallbacks ------------------------------------------------------------------------


def test_no_feasible_point_is_a_clear_error() -> None:
    sampler = MoboSampler(
        SPACE, DEVICE, RUNTIME, OBJECTIVES, {"flash_bytes": 1000.0}, REFERENCE, pool_size=16, max_screened=64
    )
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    with pytest.raises(NoFeasibleCandidateError, match="no feasible point of search space 'ds_cnn'"):
        SPACE.sample(study.ask())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"objectives": ("flash_bytes", "accuracy")}, "objectives"),
        ({"objectives": ("accuracy", "flash_bytes", "flash_bytes")}, "objectives"),
        ({"limits": {"energy_mj": 1.0}}, "limits.energy_mj"),
        ({"reference_point": {"accuracy": 0.0, "flash_bytes": 0.0, "sram_bytes": 1.0}}, "reference_point.flash_bytes"),
        ({"reference_point": {"accuracy": 0.0}}, "reference_point"),
        ({"n_initial": 0}, "n_initial"),
        ({"n_neighbours": -1}, "n_neighbours"),
    ],
)
def test_bad_arguments_are_rejected_by_name(change: dict[str, Any], field: str) -> None:
    arguments = {"objectives": OBJECTIVES, "limits": LIMITS, "reference_point": REFERENCE} | change
    with pytest.raises(MoboConfigError, match=field):
        MoboSampler(SPACE, DEVICE, RUNTIME, **arguments)


def test_a_failing_gp_fit_falls_back_to_the_next_sobol_point(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from linear_operator.utils.errors import NotPSDError

    study, _ = drive(make_sampler(), N_INITIAL)
    expected = drive(make_sampler(n_initial=N_INITIAL + 1), N_INITIAL + 1)[1][-1]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise NotPSDError("matrix not positive definite")

    monkeypatch.setattr(mobo, "_fit_gp", broken)
    with caplog.at_level(logging.WARNING, logger="sparse_nas.strategies.mobo"):
        suggested = drive(study.sampler, 1, study)[1][0]
    assert suggested == expected
    assert "suggesting the next Sobol point" in caplog.text


def test_only_complete_trials_are_observations_and_no_point_is_suggested_twice() -> None:
    study, suggested = drive(make_sampler(), N_INITIAL)
    failed, stopped = study.ask(), study.ask()
    suggested += [SPACE.sample(failed), SPACE.sample(stopped)]
    study.tell(failed, state=TrialState.FAIL)
    study.tell(stopped, state=TrialState.PRUNED)
    waiting = drive(make_sampler(seed=9), N_INITIAL + 1)[1][-1]
    study.enqueue_trial(waiting)

    history = study.sampler._read(study, optuna.trial.create_trial(state=TrialState.RUNNING))
    assert len(history.observed) == N_INITIAL
    assert history.pending == [waiting]
    assert len(history.exclude) == N_INITIAL + 3

    later = drive(study.sampler, 4, study)[1]
    assert later[0] == waiting  # Optuna runs the enqueued trial first, with its fixed parameters
    keys = {json.dumps(p, sort_keys=True) for p in [*suggested, *later]}
    assert len(keys) == len(suggested) + len(later)
