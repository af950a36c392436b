"""The differentiable search: exact cost terms, gradients, budgets, and whole jobs (engine and API).

Oracles: hw_models' own ``estimate`` of the family's network (``to_network``) for the
costs, and hand counts of TFLM's persistent tail per op (docs/hw_models.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from hw_models import estimate
from hw_models.runtimes import TFLM
from search_spaces.families import get_search_space
from sparse_nas.datasets import DatasetConfig, load_dataset
from sparse_nas.search import SearchEngine, load_weights
from sparse_nas.search.records import DNAS_ATTRS, DNAS_SOURCE
from sparse_nas.search.storage import artifact_store
from sparse_nas.spec import SearchJobSpec
from sparse_nas.strategies.dnas import (
    ArchParameters,
    Deriver,
    SearchConfig,
    SupernetCostModel,
    architecture_loss,
    build_supernet,
    make_plan,
    penalty_sweep,
    search,
    smooth_max,
)

DEVICE = "stm32f446re"
COMPRESSION = (("dense", 0), ("magnitude_pruning", 2), ("magnitude_pruning", 3), ("low_rank", 2))
ALIGN = TFLM.tensor_alignment_bytes


def _spaces() -> dict[str, Any]:
    return {
        "ds_cnn": get_search_space("ds_cnn", (1, 49, 10), 12, {"channels": [4, 48], "max_blocks": 4}),
        "sparse_cnn": get_search_space("sparse_cnn", (1, 28, 28), 10, {"channels": [4, 32], "max_conv_blocks": 3}),
    }


SPACES = _spaces()
PLANS = {name: make_plan(space, COMPRESSION) for name, space in SPACES.items()}
MODELS = {name: SupernetCostModel(plan, DEVICE) for name, plan in PLANS.items()}


def random_choices(plan: Any, n: int, seed: int) -> list[dict[str, int]]:
    """Random one-hot choices, plus every choice of every node at least once."""
    rng = np.random.default_rng(seed)
    out = [{node.name: int(rng.integers(len(node))) for node in plan.nodes} for _ in range(n)]
    for node in plan.nodes:
        for j in range(len(node)):
            base = dict(out[j % n])
            base[node.name] = j
            out.append(base)
    return out


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _persistent_oracle(op: str, out_channels: int, weight_arrays: int) -> int:
    """TFLM's persistent tail of one op with its output tensor (docs/hw_models.md, SRAM step 4)."""
    per_tensor = TFLM.persistent_bytes_per_tensor
    node = TFLM.persistent_bytes_per_op + TFLM.persistent_bytes_per_op_kind.get(op, 0)
    if op in ("conv2d", "depthwise_conv2d", "linear"):
        # Output multiplier and shift: two int32 arrays, each rounded up to the alignment;
        # eval tensors of the weight arrays, the bias and the output.
        return node + 2 * _aligned(4 * out_channels) + (weight_arrays + 2) * per_tensor
    if op == "global_avg_pool":
        return node + 2 * per_tensor  # the output and MEAN's axes
    return node + per_tensor


# --- cost terms ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(PLANS))
def test_every_node_indexes_some_cost_term(family: str) -> None:
    plan, model = PLANS[family], MODELS[family]
    indexing = {n for t in model.tables for n in t.nodes} | {t.present[0] for t in model.tables if t.present}
    assert indexing == {node.name for node in plan.nodes}
    assert {"width", "kernel", "compression", "depth"} <= {node.kind for node in plan.nodes}


@pytest.mark.parametrize("family", sorted(PLANS))
def test_each_op_term_equals_hw_models_layer_on_one_hot_choices(family: str) -> None:
    """Table entries against the matching layer of hw_models' report of the family's network."""
    plan, model, space = PLANS[family], MODELS[family], SPACES[family]
    checked: dict[str, int] = {}
    for choice in random_choices(plan, 12, seed=1):
        params = plan.params(choice)
        network = space.to_network(params)
        report = estimate(network, DEVICE)
        layers = {layer.name: layer for layer in report.layers}
        depth = plan.values(choice)[plan.depth_node]
        previous_bytes = _aligned(int(np.prod(space.hw_input_shape())))
        for table in model.tables:
            present = table.present is None or choice[table.present[0]] in table.present[1]
            name = table.name.split("@")[0]
            if not present:
                assert not table.name.endswith(f"@{depth}"), "the head at the chosen depth always exists"
                continue
            layer = layers[name]
            got = table.at(choice)
            assert got["flash_bytes"] == layer.model_bytes, (table.name, choice)
            assert got["macs"] == layer.macs
            assert got["latency_ms"] == pytest.approx(layer.latency_ms, rel=1e-12)
            working_set = previous_bytes + _aligned(layer.output_bytes) + _aligned(layer.scratch_bytes)
            assert got["working_set_bytes"] == working_set, (table.name, choice)
            weight = network.layers[[lr.name for lr in network.layers].index(name)].weights.get("weight")
            arrays = {"dense": 1, "sparse": 1, "low_rank": 2}[weight.structure.kind] if weight is not None else 0
            out_channels = layer.output_shape[-1]
            assert got["persistent_bytes"] == _persistent_oracle(layer.op, out_channels, arrays), (table.name, choice)
            previous_bytes = _aligned(layer.output_bytes)
            checked[table.name] = checked.get(table.name, 0) + 1
    assert set(checked) == {t.name for t in model.tables}, "every term was present in some network"


@pytest.mark.parametrize("family", sorted(PLANS))
def test_expected_costs_equal_hw_models_on_one_hot_whole_networks(family: str) -> None:
    plan, model, space = PLANS[family], MODELS[family], SPACES[family]
    planned_at_bound = 0
    for choice in random_choices(plan, 40, seed=2):
        report = estimate(space.to_network(plan.params(choice)), DEVICE)
        got = model.at(choice)
        assert got["flash_bytes"] == report.flash_bytes
        assert got["macs"] == report.macs
        assert got["latency_ms"] == pytest.approx(report.latency_ms, rel=1e-12)
        # The smooth max of working sets is the peak of live bytes; the greedy plan is never below it.
        assert got["working_set_bytes"] == report.peak_live_bytes
        assert got["sram_bytes"] == report.peak_live_bytes + report.persistent_bytes + report.sram_overhead_bytes
        assert got["sram_bytes"] <= report.sram_bytes
        if report.arena_bytes == report.peak_live_bytes:
            assert got["sram_bytes"] == report.sram_bytes
            planned_at_bound += 1
    assert planned_at_bound > 0


@pytest.mark.parametrize("family", sorted(PLANS))
def test_sram_equals_hw_models_exactly_under_the_ideal_runtime(family: str) -> None:
    """Under ``ideal`` SRAM is SpArSe's working memory, a max over ops: equal on every one-hot choice."""
    plan, space = PLANS[family], SPACES[family]
    model = SupernetCostModel(plan, DEVICE, "ideal")
    for choice in random_choices(plan, 20, seed=3):
        report = estimate(space.to_network(plan.params(choice)), DEVICE, "ideal")
        got = model.at(choice)
        assert (got["flash_bytes"], got["sram_bytes"], got["macs"]) == (
            report.flash_bytes,
            report.sram_bytes,
            report.macs,
        )


@pytest.mark.parametrize("family", sorted(PLANS))
def test_additive_costs_are_exact_expectations_over_each_node(family: str) -> None:
    """One node mixed, the others one-hot: expected flash, MACs and latency are the p-weighted one-hot costs."""
    plan, model = PLANS[family], MODELS[family]
    rng = np.random.default_rng(4)
    base = random_choices(plan, 1, seed=5)[0]
    for node in plan.nodes:
        p = rng.dirichlet(np.ones(len(node)))
        probabilities = {}
        for other in plan.nodes:
            vector = torch.zeros(len(other), dtype=torch.float64)
            if other.name == node.name:
                vector = torch.as_tensor(p)
            else:
                vector[base[other.name]] = 1.0
            probabilities[other.name] = vector
        expected = model.expected(probabilities)
        one_hot = [model.at({**base, node.name: j}) for j in range(len(node))]
        for metric in ("flash_bytes", "macs", "latency_ms"):
            mixture = sum(pj * costs[metric] for pj, costs in zip(p, one_hot, strict=True))
            assert float(expected[metric]) == pytest.approx(mixture, rel=1e-12), (node.name, metric)


def test_smooth_max_is_exact_in_value_and_soft_in_gradient() -> None:
    values = torch.tensor([100.0, 98.0, 10.0], dtype=torch.float64, requires_grad=True)
    out = smooth_max(values, 0.02)
    assert out.item() == 100.0
    out.backward()
    grad = values.grad
    assert grad.sum().item() == pytest.approx(1.0)
    assert grad[0] > grad[1] > 0 and grad[2] < 1e-6  # the runner-up shares the gradient


# --- gradients -----------------------------------------------------------------------------


def _digits_batch(family: str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    options: dict[str, Any] = {"channels": [4, 16]}
    if family == "ds_cnn":
        options |= {"stem_kernels": ["3x3"], "max_blocks": 3}
    space = get_search_space(family, (1, 8, 8), 10, options)
    splits = load_dataset(DatasetConfig(name="digits", seed=0))
    return space, splits.val.x[:32], splits.val.y[:32]


@pytest.mark.parametrize("family", sorted(PLANS))
def test_gradients_reach_every_architecture_parameter(family: str) -> None:
    space, x, y = _digits_batch(family)
    plan = make_plan(space, COMPRESSION)
    model = SupernetCostModel(plan, DEVICE)
    torch.manual_seed(0)
    supernet, member = build_supernet(plan), ArchParameters(plan.nodes)
    limits = {"flash_bytes": 60_000.0, "sram_bytes": 20_000.0}
    loss = architecture_loss(
        supernet, member, model, x, y, temperature=1.0, penalty=0.5, objectives=("flash_bytes", "macs"),
        reference={"flash_bytes": 60_000.0, "macs": 1e6}, limits=limits, config=SearchConfig(),
    )  # fmt: skip
    loss.backward()
    for name, logits in member.logits.items():
        assert logits.grad is not None and torch.isfinite(logits.grad).all(), name
        assert logits.grad.abs().sum() > 0, f"no gradient reached {name}"
    assert all(p.grad is not None for p in supernet.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", sorted(PLANS))
@pytest.mark.parametrize("training", [False, True])
def test_a_single_path_is_the_supernet_with_one_hot_gates(family: str, training: bool) -> None:
    space, x, _ = _digits_batch(family)
    plan = make_plan(space, COMPRESSION)
    torch.manual_seed(1)
    supernet = build_supernet(plan).train(training)
    generator = torch.Generator().manual_seed(2)
    for choice in random_choices(plan, 3, seed=6)[:12]:
        gates = {node.name: F.one_hot(torch.tensor(choice[node.name]), len(node)).float() for node in plan.nodes}
        with torch.no_grad():
            soft, single = supernet(x, gates), supernet.path(x, choice)
        torch.testing.assert_close(single, soft, rtol=1e-4, atol=1e-5)
    assert ArchParameters(plan.nodes).sample_choice(generator).keys() == {n.name for n in plan.nodes}


def test_cost_penalty_pushes_towards_cheaper_choices() -> None:
    plan, model = PLANS["ds_cnn"], MODELS["ds_cnn"]
    member = ArchParameters(plan.nodes)
    flash = model.expected(member.probabilities())["flash_bytes"]
    torch.log(flash).backward()
    widths = member.logits["block0_channels"].grad
    # Raising the logit of a wider choice raises the expected flash.
    assert widths[-1] > 0 > widths[0]
    assert member.logits["n_blocks"].grad[-1] > 0 > member.logits["n_blocks"].grad[0]


# --- derivation ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(PLANS))
def test_derived_architectures_respect_binding_budgets_per_hw_models(family: str) -> None:
    plan, space = PLANS[family], SPACES[family]
    # Logits that favour the widest, deepest, least compressed network, far over the budgets.
    favourite = {node.name: len(node) - 1 if node.kind != "compression" else 0 for node in plan.nodes}
    logits = {node.name: np.where(np.arange(len(node)) == favourite[node.name], 8.0, 0.0) for node in plan.nodes}
    big = estimate(space.to_network(plan.params(favourite)), DEVICE)
    limits = {"flash_bytes": 0.6 * big.flash_bytes, "sram_bytes": 0.8 * big.sram_bytes}
    deriver = Deriver(plan, DEVICE, "tflm", limits)
    first = deriver.derive(logits)
    assert first.repairs > 0, "the budgets bind"
    second = deriver.derive(logits, exclude={first.network})
    assert second.network != first.network
    for derived in (first, second):
        report = estimate(space.to_network(derived.params), DEVICE)  # the real plan, arena included
        assert report.flash_bytes <= limits["flash_bytes"]
        assert report.sram_bytes <= limits["sram_bytes"]
        assert derived.costs["sram_bytes"] == report.sram_bytes
    assert first.score >= second.score


def test_a_short_search_derives_feasible_distinct_architectures_along_the_sweep() -> None:
    space, _, _ = _digits_batch("sparse_cnn")
    plan = make_plan(space, COMPRESSION)
    model = SupernetCostModel(plan, DEVICE)
    splits = load_dataset(DatasetConfig(name="digits", seed=0))
    limits = {"flash_bytes": 45_000.0, "sram_bytes": 14_500.0}
    spec = SearchJobSpec.model_validate(
        {"dataset": {"name": "digits"}, "search_space": {"name": "sparse_cnn"}, "device": DEVICE}
    )
    penalties = penalty_sweep(0.02, 2.0, 3)
    report = search(
        plan, model, splits, penalties=penalties, objectives=("flash_bytes", "sram_bytes"),
        reference=limits, limits=limits, config=SearchConfig(warmup_epochs=1, search_epochs=1),
        train_config=spec.training.train_config(seed=0), seed=0,
    )  # fmt: skip
    assert [m.penalty for m in report.members] == penalties
    assert report.arch_steps > 0
    # A stronger penalty expects a cheaper network.
    flashes = [m.expected_costs["flash_bytes"] for m in report.members]
    assert flashes[-1] < flashes[0]
    deriver, seen = Deriver(plan, DEVICE, "tflm", limits), set()
    for member in report.members:
        derived = deriver.derive(member.logits, seen)
        seen.add(derived.network)
        real = estimate(space.to_network(derived.params), DEVICE)
        assert real.flash_bytes <= limits["flash_bytes"] and real.sram_bytes <= limits["sram_bytes"]
    assert len(seen) == len(report.members)


# --- the job spec --------------------------------------------------------------------------


def _spec(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "dnas-tiny",
        "dataset": {"name": "digits"},
        "search_space": {"name": "sparse_cnn", "options": {"channels": [4, 16], "max_conv_blocks": 2}},
        "device": DEVICE,
        "budgets": {"max_sram_bytes": 20000, "max_flash_bytes": 60000},
        "strategy": "dnas",
        "n_trials": 2,
        "initial_trials": 1,
        "training": {"epochs": 1, "batch_size": 64},
        "dnas": {"warmup_epochs": 0, "search_epochs": 1},
        "execution": {"backend": "inprocess"},
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "loc", "words"),
    [
        ({"search_space": {"name": "mbv2"}}, ("strategy",), "ds_cnn, sparse_cnn"),
        ({"strategy": "mobo", "dnas": {"search_epochs": 1}}, ("dnas",), "only used with strategy"),
        ({"dnas": {"compression": ["dense", "kronecker:2"]}}, ("dnas", "compression", 1), "kronecker:2"),
        ({"dnas": {"sweep_points": 2}}, ("dnas", "sweep_points"), "only for hybrid"),
        ({"strategy": "hybrid", "dnas": {"sweep_points": 5}}, ("dnas", "sweep_points"), "at most n_trials"),
        ({"dnas": {"penalty_range": [2.0, 0.1]}}, ("dnas", "penalty_range"), "low <= high"),
    ],
)
def test_spec_errors_name_the_dnas_field(overrides: dict[str, Any], loc: tuple[Any, ...], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SearchJobSpec.model_validate(_spec(**overrides))
    errors = [e for e in caught.value.errors() if tuple(e["loc"]) == loc]
    assert errors and words in errors[0]["msg"], caught.value.errors()


# --- whole jobs ------------------------------------------------------------------------------


def _run(spec: SearchJobSpec, tmp_path: Path) -> tuple[Any, optuna.Study]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    results = SearchEngine(spec, storage_url=url, study_name="job", artifact_dir=tmp_path / "artifacts").run()
    return results, optuna.load_study(study_name="job", storage=url)


def test_dnas_job_trains_each_derived_architecture_as_a_trial_and_resumes(tmp_path: Path) -> None:
    spec = SearchJobSpec.model_validate(_spec())
    results, _ = _run(spec, tmp_path)
    assert [r.status for r in results.records] == ["complete", "complete"]
    limits, space = spec.limits(), spec.build_search_space()
    store = artifact_store(tmp_path / "artifacts")
    for record in results.records:
        assert record.source == DNAS_SOURCE
        assert set(DNAS_ATTRS[:2]) <= set(record.measured)
        assert record.feasible and all(record.costs[m] <= limits[m] for m in limits)
        real = estimate(space.to_network(record.params), spec.device_spec())
        assert record.costs["sram_bytes"] == real.sram_bytes and record.costs["flash_bytes"] == real.flash_bytes
        # The trained weights are the trial's artifact and load into the family's own model.
        space.build(record.params).load_state_dict(load_weights(store, record.artifact_id))
    first, second = results.records
    # The first trial's duration holds the supernet's search; the penalties sweep upwards.
    assert first.duration_s >= first.measured["dnas_search_seconds"]
    assert first.measured["dnas_penalty"] < second.measured["dnas_penalty"]
    assert first.params != second.params
    # One trial trains at a time in-process, so durations (the history's CPU seconds)
    # must not overlap: the second trial starts after the first one finished.
    study = optuna.load_study(study_name="job", storage=f"sqlite:///{tmp_path / 'jobs.db'}")
    one, two = sorted(study.get_trials(), key=lambda t: t.number)
    assert one.datetime_complete <= two.datetime_start
    assert sum(r.duration_s for r in results.records) <= (two.datetime_complete - one.datetime_start).total_seconds()
    assert results.pareto_front and results.hypervolume > 0

    resumed = SearchJobSpec.model_validate(_spec(n_trials=3))
    results, _ = _run(resumed, tmp_path)
    assert len(results.records) == 3
    assert sorted(r.measured["dnas_sweep_index"] for r in results.records) == [0, 1, 2]
    assert len({tuple(sorted(r.params.items())) for r in results.records}) == 3


def test_a_job_stopped_during_the_search_is_interrupted_then_resumes(tmp_path: Path) -> None:
    spec = SearchJobSpec.model_validate(_spec())
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    polls = iter([False, True])  # the phase's check before the search, then the search's first step
    engine = SearchEngine(
        spec, storage_url=url, study_name="job", artifact_dir=tmp_path / "artifacts",
        should_stop=lambda: next(polls, True),
    )  # fmt: skip
    stopped = engine.run()
    assert engine.stopped
    assert [(r.status, r.source) for r in stopped.records] == [("interrupted", DNAS_SOURCE)]
    assert "during the differentiable search" in stopped.records[0].reason
    results, _ = _run(spec, tmp_path)
    assert [r.status for r in results.records] == ["interrupted", "complete", "complete"]
    assert sorted(r.measured["dnas_sweep_index"] for r in results.records[1:]) == [0, 1]


def test_hybrid_job_seeds_mobo_with_dnas_architectures(tmp_path: Path) -> None:
    dnas = {"warmup_epochs": 0, "search_epochs": 1, "sweep_points": 2}
    spec = SearchJobSpec.model_validate(_spec(strategy="hybrid", n_trials=4, initial_trials=3, dnas=dnas))
    results, _ = _run(spec, tmp_path)
    assert len(results.records) == 4
    assert [r.source for r in results.records] == [DNAS_SOURCE, DNAS_SOURCE, None, None]
    assert all(r.status in ("complete", "infeasible") for r in results.records)


# --- through the API -------------------------------------------------------------------------


def test_a_dnas_job_runs_end_to_end_through_the_job_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings
    from api.worker import JobWorker

    for name in list(os.environ):
        if name.startswith("SPARSE_NAS_"):
            monkeypatch.delenv(name)
    settings = Settings(
        state_dir=tmp_path / "state",
        data_dir=tmp_path / "data",
        artifact_dir=tmp_path / "artifacts",
        database_url=f"sqlite:///{tmp_path / 'service.db'}",
        host="127.0.0.1",
        api_token=None,
        heartbeat_interval_s=0.5,
        stale_after_s=60.0,
        worker_poll_s=0.1,
    )
    with TestClient(create_app(settings)) as client:
        created = client.post("/api/jobs", json=_spec())
        assert created.status_code == 201, created.json()
        job_id = created.json()["id"]
        worker = JobWorker(settings, worker_id="dnas-test")

        def work() -> None:
            try:
                worker.run_once()
            finally:
                worker.close()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        deadline = time.monotonic() + 300
        while client.get(f"/api/jobs/{job_id}").json()["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline
            thread.join(timeout=0.2)
        thread.join(timeout=60)
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "succeeded", job["error"]
        assert job["progress"]["trials_done"] == 2
        trials = client.get(f"/api/jobs/{job_id}/trials").json()["items"]
        assert [t["status"] for t in trials] == ["complete", "complete"]
        assert all(t["artifact_id"] and "dnas_penalty" in t["measured"] for t in trials)
        pareto = client.get(f"/api/jobs/{job_id}/pareto").json()
        assert pareto["pareto_front"] and 0.0 < pareto["hypervolume"] <= 1.0
