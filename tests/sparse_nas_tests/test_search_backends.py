"""The engine on its real backends: PostgreSQL storage, a local Ray, and a `ray start --head` cluster."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparse_nas.search.engine import SearchEngine
from sparse_nas.search.records import TrialRecord, to_records
from sparse_nas.spec import SearchJobSpec


def job(**overrides: Any) -> SearchJobSpec:
    data: dict[str, Any] = {
        "name": "backend",
        "dataset": {"name": "digits"},
        "search_space": {"name": "sparse_cnn"},
        "device": "stm32f446re",
        "budgets": {"max_sram_bytes": 20000},
        "strategy": "tpe",
        "n_trials": 6,
        "initial_trials": 3,
        "training": {"epochs": 2, "batch_size": 64},
    }
    data.update(overrides)
    return SearchJobSpec.model_validate(data)


def ray_job(n_trials: int, concurrency: int, **overrides: Any) -> SearchJobSpec:
    """Random points with no budget, on a local Ray with ``concurrency`` one-CPU slots."""
    execution = {"backend": "ray", "concurrency": concurrency, "cpus_per_trial": 1}
    return job(strategy="random", n_trials=n_trials, budgets={}, execution=execution, **overrides)


def run(spec: SearchJobSpec, url: str, tmp_path: Path) -> list[TrialRecord]:
    engine = SearchEngine(spec, storage_url=url, study_name="backend", artifact_dir=tmp_path / "artifacts")
    return list(engine.run().records)


def comparable(record: TrialRecord) -> dict[str, Any]:
    """What must not depend on the storage: the points, statuses, values, costs, constraints."""
    return {
        "number": record.number,
        "status": record.status,
        "params": record.params,
        "values": record.values,
        "costs": record.costs,
        "constraints": record.constraints,
        "reason": record.reason,
        "intermediate": record.intermediate_accuracy,
        "nonzero_params": record.measured.get("nonzero_params"),
    }


@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_sqlite_and_postgresql_give_the_same_trial_records(tmp_path: Path, postgres_url: str) -> None:
    spec = job()
    on_sqlite = run(spec, f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path / "sqlite")
    on_postgres = run(spec, postgres_url, tmp_path / "postgres")
    assert len(on_sqlite) == 6
    assert {r.status for r in on_sqlite} >= {"complete"}
    assert [comparable(r) for r in on_postgres] == [comparable(r) for r in on_sqlite]


def _overlap(a: TrialRecord, b: TrialRecord) -> bool:
    start_a, start_b = a.measured["worker_started_at"], b.measured["worker_started_at"]
    end_a, end_b = start_a + a.measured["worker_seconds"], start_b + b.measured["worker_seconds"]
    return start_a < end_b and start_b < end_a


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_local_ray_runs_two_trials_at_once(tmp_path: Path) -> None:
    spec = ray_job(4, 2, training={"epochs": 3, "batch_size": 32})
    records = run(spec, f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)
    trained = [r for r in records if r.status == "complete"]
    assert len(trained) == 4
    assert len({r.measured["worker_pid"] for r in trained}) >= 2
    pairs = [(a, b) for i, a in enumerate(trained) for b in trained[i + 1 :]]
    assert any(_overlap(a, b) and a.measured["worker_pid"] != b.measured["worker_pid"] for a, b in pairs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_search_on_a_ray_cluster_started_with_ray_start_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray 2.60 enables token auth and keeps the token per user; a private test cluster
    # on 127.0.0.1 runs without it, so an earlier local Ray's token cannot interfere.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_cli = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    temp_dir = Path("/tmp") / f"snhead-{port}"  # Ray's socket paths must stay short
    start = [
        ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
        "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    started = subprocess.run(start, capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        spec = job(
            strategy="random",
            n_trials=3,
            budgets={},
            execution={"backend": "ray", "concurrency": 2, "ray_address": f"127.0.0.1:{port}"},
        )
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(spec.to_json())
        # The driver runs as its own process (as a user runs it): a Ray driver that
        # connects to a second cluster inside a long-lived test worker is fragile.
        db = tmp_path / "jobs.db"
        command = [sys.executable, "-m", "api.cli", "search", str(spec_file), "--storage", f"sqlite:///{db}",
                   "--artifacts", str(tmp_path / "artifacts"), "--quiet"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert done.returncode == 0, done.stderr[-3000:]
        import optuna

        records = to_records(optuna.load_study(study_name="backend", storage=f"sqlite:///{db}").trials)
        assert [r.status for r in records] == ["complete"] * 3
    finally:
        # Not `ray stop`: it kills every Ray on the machine, including the private local
        # Ray of a test running beside this one (xdist groups did not keep them apart).
        _stop_processes_mentioning(str(temp_dir))


def _stop_processes_mentioning(text: str, grace_s: float = 10.0) -> None:
    """SIGTERM every process whose command line contains ``text``, then SIGKILL what is left."""
    import signal
    import time

    def matching() -> list[int]:
        me = os.getpid()
        return [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and int(entry.name) != me and text in _cmdline(int(entry.name))
        ]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in matching():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while matching() and time.monotonic() < deadline:
            time.sleep(0.1)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _has_complete_trial(db: Path) -> bool:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] > 0
    except sqlite3.OperationalError:  # the tables are not there yet
        return False


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
@pytest.mark.parametrize("kills", [1, 2])
def test_a_trial_whose_ray_worker_is_killed_runs_again_and_the_job_completes(tmp_path: Path, kills: int) -> None:
    import signal
    import time

    import optuna

    spec = ray_job(3, 1, training={"epochs": 6, "batch_size": 16})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    db = tmp_path / "jobs.db"
    command = [sys.executable, "-m", "api.cli", "search", str(spec_file), "--storage", f"sqlite:///{db}",
               "--artifacts", str(tmp_path / "artifacts"), "--quiet"]  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The Ray worker running the first trial is a descendant of the driver titled
        # after the task's function. The driver prepares one trial ahead, so trial 1 runs
        # before the re-run of trial 0's point: the second kill waits for trial 1 to
        # complete and hits the re-run.
        killed: list[int] = []
        deadline = time.monotonic() + 180
        while len(killed) < kills and time.monotonic() < deadline and driver.poll() is None:
            running = [p for p in _descendants(driver.pid) if "ray::_run_on_ray" in _cmdline(p) and p not in killed]
            if killed and not _has_complete_trial(db):
                running = []
            if running:
                os.kill(running[0], signal.SIGKILL)
                killed.append(running[0])
            time.sleep(0.05)
        if len(killed) < kills:
            driver.kill()
            _out, err = driver.communicate(timeout=60)
            pytest.fail(f"killed {len(killed)} of {kills} Ray workers; driver exit {driver.returncode}: {err[-3000:]}")
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="backend", storage=f"sqlite:///{db}").trials
    records = to_records(trials)
    interrupted = [r for r in records if r.status == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].reason.startswith("Ray worker lost")
    rerun = [t for t in trials if t.user_attrs.get("retry_of") == interrupted[0].number]
    assert len(rerun) == 1 and rerun[0].params == interrupted[0].params
    assert rerun[0].user_attrs["lost_count"] == 1
    statuses = [r.status for r in records]
    if kills == 1:
        # Nothing lost: the point ran again and the job has its 3 trials.
        assert statuses.count("complete") == 3 and "failed" not in statuses
    else:
        # A point that keeps losing its worker is recorded failed (it counts), not run forever.
        failed = [r for r in records if r.status == "failed"]
        assert len(failed) == 1 and failed[0].number == rerun[0].number
        assert "2 times in a row" in failed[0].reason
        assert statuses.count("complete") == 2


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_on_ray_the_next_trial_is_prepared_while_one_trains(tmp_path: Path) -> None:
    """One slot: the driver asks (and costs) the next trial before the running one is told.

    It also submits it before storing the finished one, but when Ray's worker starts it is
    up to Ray's scheduling (measured 26 ms after the tell once), so that is not asserted.
    """
    import optuna

    spec = ray_job(4, 1)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    records = run(spec, url, tmp_path)
    assert [r.status for r in records] == ["complete"] * 4
    trials = optuna.load_study(study_name="backend", storage=url).trials
    for before, after in itertools.pairwise(trials):
        assert after.datetime_start < before.datetime_complete


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_a_trial_prepared_ahead_of_a_stop_is_run_when_the_job_resumes(tmp_path: Path) -> None:
    import optuna

    spec = ray_job(3, 1)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"

    def asked() -> int:
        return len(optuna.load_study(study_name="backend", storage=url).trials)

    # The stop comes once trial 1 has been asked (while trial 0 trained): before it starts.
    engine = SearchEngine(
        spec, storage_url=url, study_name="backend", artifact_dir=tmp_path / "artifacts", should_stop=lambda: asked() >= 2
    )
    stopped = list(engine.run().records)
    assert engine.stopped
    assert [r.status for r in stopped[:2]] == ["complete", "interrupted"]
    assert "job stopped before it started" in stopped[1].reason
    resumed = run(spec, url, tmp_path)
    assert [r.status for r in resumed] == ["complete", "interrupted", "complete", "complete"]
    assert resumed[2].params == stopped[1].params
    assert optuna.load_study(study_name="backend", storage=url).trials[2].user_attrs["retry_of"] == 1
