"""The job worker on real tiny jobs: lifecycle, cancel, failure, resume, takeover after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import inspect, update

from api import crud
from api.db import Job, make_engine, make_session_factory
from api.settings import Settings, get_settings
from api.worker import JobWorker, main
from sparse_nas.spec import SearchJobSpec

REPO = Path(__file__).resolve().parents[2]

SPEC: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
    "strategy": "random",
    "n_trials": 3,
    "training": {"epochs": 1, "batch_size": 64},
}

DATABASES = [
    "sqlite",
    pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.xdist_group("postgres")]),
]


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'service.db'}"


def make_worker(url: str, tmp_path: Path, worker_id: str = "w1") -> JobWorker:
    settings = Settings(
        database_url=url,
        state_dir=tmp_path / "state",
        heartbeat_interval_s=0.2,
        stale_after_s=5.0,
        worker_poll_s=0.05,
    )
    return JobWorker(settings, worker_id=worker_id)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., JobWorker]]:
    made: list[JobWorker] = []

    def make(url: str, worker_id: str = "w1") -> JobWorker:
        made.append(make_worker(url, tmp_path, worker_id))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def submit(worker: JobWorker, **overrides: Any) -> Job:
    with worker.sessions() as session:
        return crud.create_job(session, SearchJobSpec.model_validate(SPEC | overrides))[0]


def job_of(worker: JobWorker, job_id: str) -> Job:
    with worker.sessions() as session:
        return crud.get_job(session, job_id)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def in_background(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(work()), daemon=True)
    thread.start()
    return thread, results


def trials(url: str, study_name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=url).get_trials(deepcopy=False)


def counted(study_trials: list[FrozenTrial]) -> int:
    """Trials that use up the budget, read from Optuna's states and the status attribute."""
    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.user_attrs.get("status") != "interrupted")
        for t in study_trials
    )


def completed(study_trials: list[FrozenTrial]) -> dict[int, tuple[list[float], dict[str, Any]]]:
    return {t.number: (t.values, t.params) for t in study_trials if t.state == TrialState.COMPLETE}


def test_a_job_runs_from_queued_through_running_to_succeeded(db_url, worker_factory):
    worker = worker_factory(db_url)
    assert worker.run_once() is None
    job = submit(worker)
    assert job.status == "queued"
    thread, ran = in_background(worker.run_once)
    wait_for(lambda: job_of(worker, job.id).status != "queued", 60, "the claim")
    assert job_of(worker, job.id).status in ("running", "succeeded")
    thread.join(timeout=120)
    assert ran == [job.id]

    done = job_of(worker, job.id)
    assert done.status == "succeeded", done.error
    assert done.trials_done == 3 and done.worker_id == "w1" and done.error is None
    assert done.created_at <= done.started_at <= done.finished_at
    study_trials = trials(db_url, done.study_name)
    assert len(study_trials) == 3 and counted(study_trials) == 3
    feasible_accuracies = [
        t.user_attrs["val_accuracy"]
        for t in study_trials
        if t.user_attrs.get("status") == "complete" and all(c <= 0 for c in t.constraints.values())
    ]
    assert done.best_accuracy == (max(feasible_accuracies) if feasible_accuracies else None)


def test_cancel_while_running_stops_within_one_trial_and_resume_keeps_the_trials(sqlite_url, worker_factory):
    worker = worker_factory(sqlite_url)
    job = submit(worker, n_trials=8, training={"epochs": 2, "batch_size": 64})
    thread, _ = in_background(worker.run_once)
    wait_for(lambda: job_of(worker, job.id).trials_done >= 1, 120, "the first trial")
    with worker.sessions() as session:
        assert crud.request_cancel(session, job.id).status == "cancelling"
    at_cancel = len(trials(sqlite_url, job.study_name))  # includes the trial in flight
    thread.join(timeout=120)
    cancelled = job_of(worker, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    after_cancel = trials(sqlite_url, job.study_name)
    # At most one trial was launched after the cancel (asked for just before it landed).
    assert len(after_cancel) <= at_cancel + 1 and counted(after_cancel) < 8
    assert cancelled.trials_done == counted(after_cancel)
    kept = completed(after_cancel)

    with worker.sessions() as session:
        assert crud.request_resume(session, job.id).status == "queued"
    assert worker.run_once() == job.id
    resumed = job_of(worker, job.id)
    assert resumed.status == "succeeded", resumed.error
    assert resumed.trials_done == 8 and resumed.finished_at > cancelled.finished_at
    final = trials(sqlite_url, job.study_name)
    assert counted(final) == 8
    assert {number: completed(final)[number] for number in kept} == kept


def test_a_running_job_is_not_taken_over_while_its_worker_beats(sqlite_url, worker_factory):
    worker = worker_factory(sqlite_url)
    job = submit(worker, n_trials=2, training={"epochs": 10, "batch_size": 64})
    thread, _ = in_background(worker.run_once)
    wait_for(lambda: job_of(worker, job.id).status == "running", 60, "the claim")
    # One long trial: only the heartbeat thread (every 0.2 s) keeps the job fresh, even
    # to a worker that calls a job stale after 1.5 s.
    watch_until = time.monotonic() + 2.0
    while time.monotonic() < watch_until:
        with worker.sessions() as session:
            assert crud.claim_next_job(session, "intruder", stale_after_s=1.5) is None
        time.sleep(0.1)
    with worker.sessions() as session:
        crud.request_cancel(session, job.id)
    thread.join(timeout=120)
    assert job_of(worker, job.id).status in ("cancelled", "succeeded")


def test_a_job_that_cannot_run_fails_with_its_error(sqlite_url, worker_factory):
    worker = worker_factory(sqlite_url)
    edited = submit(worker)
    with worker.sessions() as session:  # the spec edited under the service's feet
        session.execute(update(Job).where(Job.id == edited.id).values(spec=edited.spec | {"n_trials": 0}))
        session.commit()
    assert worker.run_once() == edited.id
    failed = job_of(worker, edited.id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error.startswith("ValidationError: 1 validation error for SearchJobSpec\nn_trials\n")
    assert "greater than or equal to 1" in failed.error

    # A dataset whose files are not in the data directory: the job fails saying which.
    missing = submit(worker, dataset={"name": "mnist"})
    assert worker.run_once() == missing.id
    failed = job_of(worker, missing.id)
    assert failed.status == "failed"
    assert "mnist" in failed.error.lower() and failed.finished_at is not None


def test_a_cancelling_job_taken_over_from_a_dead_worker_ends_cancelled(sqlite_url, worker_factory):
    worker = worker_factory(sqlite_url, worker_id="w2")
    job = submit(worker)
    with worker.sessions() as session:
        crud.claim_next_job(session, "dead", stale_after_s=60)
        crud.request_cancel(session, job.id)
        session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=job.created_at - timedelta(hours=1)))
        session.commit()
    assert worker.run_once() == job.id
    done = job_of(worker, job.id)
    assert (done.status, done.worker_id) == ("cancelled", "w2")


def test_run_forever_runs_queued_jobs_until_stopped(sqlite_url, worker_factory):
    worker = worker_factory(sqlite_url)
    thread, _ = in_background(worker.run_forever)
    job = submit(worker, n_trials=1)
    wait_for(lambda: job_of(worker, job.id).status == "succeeded", 120, "the job to succeed")
    worker.shutdown.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_service_ray_address_fills_in_only_ray_jobs_that_name_none():
    from api.worker import with_default_ray_address

    ray_job = SearchJobSpec.model_validate(SPEC | {"execution": {"backend": "ray"}})
    assert with_default_ray_address(ray_job, "ray-head:6379").execution.ray_address == "ray-head:6379"
    assert with_default_ray_address(ray_job, None) == ray_job
    named = SearchJobSpec.model_validate(SPEC | {"execution": {"backend": "ray", "ray_address": "other:6379"}})
    assert with_default_ray_address(named, "ray-head:6379").execution.ray_address == "other:6379"
    local = SearchJobSpec.model_validate(SPEC)
    assert with_default_ray_address(local, "ray-head:6379").execution.ray_address is None


def test_main_once_migrates_the_database_and_exits_when_there_is_no_job(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'service.db'}"
    monkeypatch.setenv("SPARSE_NAS_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        assert main(["--once", "--worker-id", "cli"]) == 0
    finally:
        get_settings.cache_clear()
    engine = make_engine(url)
    assert "sparse_nas_jobs" in inspect(engine).get_table_names()
    engine.dispose()


# --- a worker killed mid-job -----------------------------------------------------------------


def start_worker(url: str, tmp_path: Path, worker_id: str) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "SPARSE_NAS_DATABASE_URL": url,
        "SPARSE_NAS_STATE_DIR": str(tmp_path / "state"),
        "SPARSE_NAS_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "SPARSE_NAS_HEARTBEAT_INTERVAL_S": "0.5",
        "SPARSE_NAS_STALE_AFTER_S": "3",
        "SPARSE_NAS_WORKER_POLL_S": "0.2",
    }
    log = open(tmp_path / f"{worker_id}.log", "wb")  # noqa: SIM115 - the process writes it
    return subprocess.Popen(
        [sys.executable, "-m", "api.worker", "--worker-id", worker_id],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def submit_when_migrated(url: str, sessions: Any, *, n_trials: int, epochs: int, wait_completed: int) -> Job:
    """Submit a job once a started worker has migrated; return it after ``wait_completed`` completed trials."""
    wait_for(lambda: _has_jobs_table(url), 60, "the worker's migration")
    with sessions() as session:
        spec = SearchJobSpec.model_validate(SPEC | {"n_trials": n_trials, "training": {"epochs": epochs, "batch_size": 64}})
        job = crud.create_job(session, spec)[0]
    wait_for(
        lambda: _study_exists(url, job.study_name) and len(completed(trials(url, job.study_name))) >= wait_completed,
        120,
        f"{wait_completed} completed trial(s)",
    )
    return job


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_is_taken_over_and_keeps_its_trials(db_url, tmp_path):
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    first = start_worker(db_url, tmp_path, "first")
    second = None
    try:
        job = submit_when_migrated(db_url, sessions, n_trials=10, epochs=3, wait_completed=2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        before_kill = completed(trials(db_url, job.study_name))

        second = start_worker(db_url, tmp_path, "second")
        wait_for(lambda: _status(sessions, job.id) in ("succeeded", "failed"), 180, "the job to finish")
        with sessions() as session:
            done = crud.get_job(session, job.id)
        assert done.status == "succeeded", done.error
        assert done.worker_id == "second" and done.trials_done == 10
        final = trials(db_url, job.study_name)
        assert counted(final) == 10
        assert {number: completed(final)[number] for number in before_kill} == before_kill
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        engine.dispose()


@pytest.mark.slow
def test_sigterm_stops_the_worker_after_its_trial_and_queues_the_job_again(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    sessions = make_session_factory(engine)
    first = start_worker(sqlite_url, tmp_path, "first")
    second = None
    try:
        job = submit_when_migrated(sqlite_url, sessions, n_trials=8, epochs=2, wait_completed=1)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 0
        with sessions() as session:
            released = crud.get_job(session, job.id)
        # Handed back at once, not left running until its heartbeat goes stale.
        assert (released.status, released.worker_id, released.heartbeat_at) == ("queued", None, None)
        before = trials(sqlite_url, job.study_name)
        # The trial in flight at the signal finished and was stored: nothing is interrupted.
        assert all(t.state not in (TrialState.RUNNING, TrialState.WAITING) for t in before)
        assert not any(t.user_attrs.get("status") == "interrupted" for t in before)
        kept = completed(before)

        second = start_worker(sqlite_url, tmp_path, "second")
        wait_for(lambda: _status(sessions, job.id) in ("succeeded", "failed"), 180, "the job to finish")
        with sessions() as session:
            done = crud.get_job(session, job.id)
        assert done.status == "succeeded", done.error
        assert done.worker_id == "second" and done.trials_done == 8
        final = trials(sqlite_url, job.study_name)
        assert counted(final) == 8
        assert {number: completed(final)[number] for number in kept} == kept
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        engine.dispose()


def test_a_worker_started_with_parent_pid_stops_when_that_parent_is_gone(sqlite_url, tmp_path):
    # A pid that is not our parent: the worker must see at once that "its parent" is gone.
    env = os.environ | {"SPARSE_NAS_DATABASE_URL": sqlite_url, "SPARSE_NAS_STATE_DIR": str(tmp_path / "state")}
    process = subprocess.run(
        [sys.executable, "-m", "api.worker", "--parent-pid", str(os.getpid() + 10_000_000)],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr.decode()
    assert b"SIGTERM" in process.stderr or b"Terminated" in process.stderr


def _has_jobs_table(url: str) -> bool:
    engine = make_engine(url)
    try:
        return "sparse_nas_jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def _study_exists(url: str, study_name: str) -> bool:
    return study_name in optuna.get_all_study_names(url)


def _status(sessions: Any, job_id: str) -> str:
    with sessions() as session:
        return crud.get_job(session, job_id).status
