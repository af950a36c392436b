"""The search driver on real trials: digits, sparse_cnn, a real device, real training (tiny)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from sparse_nas.search.early_stopping import rung_epochs, stop_below
from sparse_nas.search.engine import JobMismatchError, SearchEngine
from sparse_nas.search.executors import InProcessExecutor
from sparse_nas.search.records import to_records
from sparse_nas.search.storage import artifact_store, load_weights
from sparse_nas.search.trial_runner import TrialTask
from sparse_nas.spec import SearchJobSpec

REPO = Path(__file__).resolve().parents[2]


def job(**overrides: Any) -> SearchJobSpec:
    """A tiny job: most random sparse_cnn points break a 20 KB SRAM budget on the F446RE."""
    data: dict[str, Any] = {
        "name": "tiny",
        "dataset": {"name": "digits"},
        "search_space": {"name": "sparse_cnn"},
        "device": "stm32f446re",
        "budgets": {"max_sram_bytes": 20000},
        "strategy": "random",
        "n_trials": 6,
        "initial_trials": 3,
        "training": {"epochs": 2, "batch_size": 64},
    }
    data.update(overrides)
    return SearchJobSpec.model_validate(data)


def engine(spec: SearchJobSpec, tmp_path: Path, url: str | None = None, **kwargs: Any) -> SearchEngine:
    return SearchEngine(
        spec,
        storage_url=url or f"sqlite:///{tmp_path / 'jobs.db'}",
        study_name=kwargs.pop("study_name", "job"),
        artifact_dir=tmp_path / "artifacts",
        **kwargs,
    )


class RecordingExecutor(InProcessExecutor):
    """The real in-process executor, remembering every task it was given."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tasks: list[TrialTask] = []

    def submit(self, task: TrialTask) -> None:
        self.tasks.append(task)
        super().submit(task)


def _executor_for(e: SearchEngine) -> RecordingExecutor:
    from sparse_nas.datasets import load_dataset

    return RecordingExecutor(e.space, load_dataset(e.spec.dataset_config()))


def test_infeasible_points_are_recorded_with_reason_and_never_trained(tmp_path: Path) -> None:
    e = engine(job(n_trials=8), tmp_path)
    executor = _executor_for(e)
    results = e.run(executor)
    records = results.records
    assert len(records) == 8
    infeasible = [r for r in records if r.status == "infeasible"]
    trained = [r for r in records if r.status == "complete"]
    assert infeasible and trained, "the budget should split this seed's points"
    trained_params = [t.params for t in executor.tasks]
    for r in infeasible:
        assert r.params not in trained_params
        assert "SRAM" in r.reason and "exceeds the limit 20,000 B" in r.reason
        assert r.costs["sram_bytes"] > 20000
        assert not r.feasible and r.constraints["sram_bytes"] > 0
        assert r.artifact_id is None and "val_accuracy" not in r.measured
    assert len(executor.tasks) == len(trained)
    for r in trained:
        assert r.feasible and r.constraints["sram_bytes"] <= 0
        assert 0.0 <= r.accuracy <= 1.0 and r.measured["epochs_completed"] == 2
    assert all(r.status == "complete" for r in results.pareto_front)


def test_constraints_are_visible_to_optuna(tmp_path: Path) -> None:
    e = engine(job(), tmp_path)
    e.run()
    study = optuna.load_study(study_name="job", storage=e.storage_url)
    for trial in study.trials:
        assert set(trial.constraints) == {"flash_bytes", "sram_bytes"}
        sram_limit = 20000
        assert trial.constraints["sram_bytes"] == pytest.approx(trial.user_attrs["sram_bytes"] / sram_limit - 1)
    feasible = optuna.study._constrained_optimization._get_feasible_trials(study.trials)
    assert {t.number for t in feasible} == {t.number for t in study.trials if t.user_attrs["status"] != "infeasible"}
    # Optuna's own front (constraint-aware) never lists an infeasible trial.
    assert all(t.user_attrs["status"] == "complete" for t in study.best_trials)


def test_every_strategy_runs_and_samplers_see_constraints(tmp_path: Path) -> None:
    for strategy in ("tpe", "nsga2", "gp", "mobo"):
        e = engine(
            job(strategy=strategy, n_trials=4, initial_trials=2, training={"epochs": 1}), tmp_path, study_name=strategy
        )
        results = e.run()
        assert len(results.records) == 4, strategy
        assert all(r.constraints for r in results.records), strategy
    # mobo screens its pool: it never suggests an infeasible point.
    mobo = optuna.load_study(study_name="mobo", storage=f"sqlite:///{tmp_path / 'jobs.db'}")
    assert all(t.user_attrs["status"] != "infeasible" for t in mobo.trials)


def test_weights_artifact_reloads_into_the_model_with_its_accuracy(tmp_path: Path) -> None:
    e = engine(job(n_trials=3, budgets={}), tmp_path)
    results = e.run()
    best = max((r for r in results.records if r.status == "complete"), key=lambda r: r.accuracy)
    state = load_weights(artifact_store(tmp_path / "artifacts"), best.artifact_id)
    model = e.space.build(best.params)
    model.load_state_dict(state)
    model.eval()
    from sparse_nas.datasets import load_dataset

    splits = load_dataset(e.spec.dataset_config())
    with torch.no_grad():
        accuracy = (model(splits.val.x).argmax(1) == splits.val.y).float().mean().item()
    assert accuracy == pytest.approx(best.accuracy, abs=1e-6)


def test_training_failure_is_a_failed_trial_with_its_reason(tmp_path: Path) -> None:
    # A learning rate of 1e4 makes the loss non-finite within the first check.
    e = engine(job(n_trials=3, budgets={}, training={"epochs": 2, "lr": 1e4, "check_every_steps": 1}), tmp_path)
    results = e.run()
    failed = [r for r in results.records if r.status == "failed"]
    assert failed, [r.status for r in results.records]
    for r in failed:
        assert "diverged" in r.reason or "non-finite" in r.reason or "NaN" in r.reason
        assert r.values is None and r.artifact_id is None
    assert len(results.records) == 3  # failed trials count toward the budget


def test_resume_with_a_different_job_is_refused_naming_the_fields(tmp_path: Path) -> None:
    engine(job(n_trials=3), tmp_path).run()
    with pytest.raises(JobMismatchError, match=r"\['budgets'\]"):
        engine(job(n_trials=3, budgets={"max_sram_bytes": 30000}), tmp_path).open_study()
    # More trials is a resumable change: the job continues where it stopped.
    results = engine(job(n_trials=5), tmp_path).run()
    assert len(results.records) == 5


def test_resume_does_not_replay_the_samplers_points(tmp_path: Path) -> None:
    engine(job(n_trials=3, budgets={}), tmp_path).run()
    results = engine(job(n_trials=6, budgets={}), tmp_path).run()
    keys = [json.dumps(r.params, sort_keys=True) for r in results.records]
    assert len(set(keys)) == len(keys)


def test_early_stopping_rungs_and_bars() -> None:
    assert rung_epochs(1, 10) == [1, 3, 9]
    assert rung_epochs(2, 6) == [2]
    assert rung_epochs(3, 3) == []
    histories = [[0.1, 0.2], [0.5, 0.6], [0.3, 0.4], [0.9]]
    # 4 trials at epoch 1: keep floor(4/3) = 1, the bar is the best one.
    assert stop_below(histories, [1]) == {1: 0.9}
    # Only 3 reached epoch 2: keep 1 of them.
    assert stop_below(histories, [1, 2]) == {1: 0.9, 2: 0.6}
    assert stop_below(histories[:2], [1]) == {}


def test_early_stopped_trials_are_pruned_and_off_the_front(tmp_path: Path) -> None:
    spec = job(
        n_trials=10,
        budgets={},
        training={"epochs": 3, "batch_size": 64, "early_stopping": True, "min_epochs": 1},
    )
    results = engine(spec, tmp_path).run()
    stopped = [r for r in results.records if r.status == "stopped"]
    assert stopped, [r.status for r in results.records]
    for r in stopped:
        assert r.measured["epochs_completed"] < 3 and "stopped early" in r.reason
        assert len(r.intermediate_accuracy) == r.measured["epochs_completed"]
    front = {r.number for r in results.pareto_front}
    assert not front & {r.number for r in stopped}
    study = optuna.load_study(study_name="job", storage=f"sqlite:///{tmp_path / 'jobs.db'}")
    assert {t.number for t in study.trials if t.state == optuna.trial.TrialState.PRUNED} == {r.number for r in stopped}


def _write_spec(path: Path, spec: SearchJobSpec) -> Path:
    path.write_text(spec.to_json())
    return path


def _completed_and_training(db: Path) -> tuple[int, int]:
    """Trials COMPLETE, and trials RUNNING whose point is fully sampled and costed (training)."""
    with sqlite3.connect(db) as connection:
        (complete,) = connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
        (training,) = connection.execute(
            "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING' AND a.key = 'sram_bytes'"
        ).fetchone()
    return complete, training


@pytest.mark.slow
def test_driver_killed_with_sigkill_resumes_keeping_completed_trials(tmp_path: Path) -> None:
    spec = job(n_trials=8, budgets={}, training={"epochs": 3, "batch_size": 32})
    spec_file = _write_spec(tmp_path / "spec.json", spec)
    db = tmp_path / "jobs.db"
    command = [
        sys.executable, "-m", "api.cli", "search", str(spec_file), "--storage", f"sqlite:///{db}",
        "--artifacts", str(tmp_path / "artifacts"), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if db.exists():
            try:
                complete, training = _completed_and_training(db)
                if complete >= 2 and training >= 1:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    else:
        driver.kill()
        pytest.fail(f"the driver never got 2 trials done: {driver.communicate()}")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {r.number: r for r in to_records(optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials)}
    completed = {n: r for n, r in before.items() if r.status in ("complete", "infeasible")}
    running = [r for r in before.values() if r.status == "running"]
    assert completed and running

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = {r.number: r for r in to_records(optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials)}
    for number, record in completed.items():
        assert after[number].values == record.values and after[number].artifact_id == record.artifact_id
    for record in running:
        assert after[record.number].status == "interrupted"
        retries = [r for r in after.values() if r.params == record.params and r.status == "complete"]
        assert retries, f"interrupted trial {record.number} was not run again"
    counted = [r for r in after.values() if r.status in ("complete", "infeasible", "stopped", "failed")]
    assert len(counted) == 8
    assert "Pareto front" in resumed.stdout or "front" in resumed.stdout.lower()


def test_should_stop_ends_the_run_after_the_trials_in_flight_and_a_rerun_resumes(tmp_path: Path) -> None:
    told: list[int] = []
    e = engine(job(n_trials=6, budgets={}), tmp_path, on_trial=lambda r: told.append(r.number),
               should_stop=lambda: len(told) >= 2)  # fmt: skip
    results = e.run()
    assert e.stopped and len(results.records) == 2 == len(told)
    resumed = engine(job(n_trials=6, budgets={}), tmp_path)
    assert not resumed.stopped and len(resumed.run().records) == 6


def test_a_point_the_space_cannot_build_is_infeasible_and_never_trained(tmp_path: Path) -> None:
    spec = job(budgets={}, n_trials=1, initial_trials=1)
    eng = engine(spec, tmp_path)
    study = eng.open_study()
    point = eng.space.smallest() | {"n_conv": 4} | {f"conv{i}_downsample": "stride" for i in range(3)}
    study.enqueue_trial(point | {"conv3_downsample": "max"})
    executor = _executor_for(eng)
    records = eng.run(executor).records
    assert [r.status for r in records] == ["infeasible"]
    assert records[0].reason.startswith("conv3_downsample: max pooling of a 1x1 map has no output")
    assert executor.tasks == []
