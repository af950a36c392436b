"""A job's whole life through the API with the real engine: submit, run, follow, cancel, resume.

The worker runs in a thread of the test (``JobWorker.run_once``); the test reads
everything back through the REST API only. Each test runs on SQLite and, marked
``postgres``, on a fresh PostgreSQL database.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.schemas import EXAMPLE_JOB_SPEC
from api.settings import Settings
from api.worker import JobWorker

FINISHED = ("succeeded", "failed", "cancelled")
COUNTED = ("complete", "infeasible", "stopped", "failed")
DEADLINE_S = 300.0


@pytest.fixture(autouse=True)
def _no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SPARSE_NAS_"):
            monkeypatch.delenv(name)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.xdist_group("postgres")]),
    ]
)
def settings(request: pytest.FixtureRequest, tmp_path) -> Settings:
    url = (
        f"sqlite:///{tmp_path / 'service.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    return Settings(
        state_dir=tmp_path / "state",
        data_dir=tmp_path / "data",
        artifact_dir=tmp_path / "artifacts",
        database_url=url,
        host="127.0.0.1",
        api_token=None,
        heartbeat_interval_s=0.5,
        stale_after_s=60.0,
        worker_poll_s=0.1,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


class Follower:
    """Reads a job's trials with ``?after=`` the way a dashboard would, each finished trial once."""

    def __init__(self, client: TestClient, job_id: str):
        self.client = client
        self.job_id = job_id
        self.after = -1
        self.finished: list[dict] = []

    def poll(self) -> None:
        while True:
            page = self.client.get(f"/api/jobs/{self.job_id}/trials", params={"after": self.after}).json()
            new = [t for t in page["items"] if t["number"] <= page["next_after"]]
            assert [t["number"] for t in new] == sorted(t["number"] for t in new)
            self.finished += new
            self.after = page["next_after"]
            if not page["has_more"]:
                return

    def status(self) -> str:
        return self.client.get(f"/api/jobs/{self.job_id}").json()["status"]

    def until(self, done, worker: threading.Thread) -> None:
        """Poll until ``done()``; the worker thread's join is the pause between polls."""
        deadline = time.monotonic() + DEADLINE_S
        while not done():
            assert time.monotonic() < deadline, f"job {self.job_id} still {self.status()!r} after {DEADLINE_S} s"
            job = self.client.get(f"/api/jobs/{self.job_id}").json()
            assert job["status"] != "failed", job["error"]
            worker.join(timeout=0.1)
            self.poll()


def start_worker(settings: Settings) -> threading.Thread:
    worker = JobWorker(settings, worker_id="test-worker")

    def run() -> None:
        try:
            worker.run_once()
        finally:
            worker.close()

    thread = threading.Thread(target=run, name="test-job-worker", daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_job_runs_to_the_end_and_its_trials_stream_in(client, settings):
    created = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC)
    assert created.status_code == 201
    job_id = created.json()["id"]
    follower = Follower(client, job_id)
    worker = start_worker(settings)

    def job_over() -> bool:
        # Status first: once it is final, the poll after it has every trial.
        finished = follower.status() in FINISHED
        follower.poll()
        return finished

    follower.until(job_over, worker)
    worker.join(timeout=DEADLINE_S)

    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == {"trials_done": 3, "n_trials": 3, "fraction": 1.0}
    assert job["started_at"] and job["finished_at"] and job["finished_at"] >= job["started_at"]
    assert [t["number"] for t in follower.finished] == [0, 1, 2]
    assert all(t["status"] in COUNTED for t in follower.finished)
    trained = [t for t in follower.finished if t["status"] == "complete"]
    if trained:
        assert job["best_accuracy"] == pytest.approx(
            max(t["measured"]["val_accuracy"] for t in trained if t["feasible"])
        )
        assert all(0.0 <= t["measured"]["val_accuracy"] <= 1.0 for t in trained)
    assert client.get(f"/api/jobs/{job_id}/trials/2").json() == follower.finished[2]

    pareto = client.get(f"/api/jobs/{job_id}/pareto").json()
    assert sum(pareto["counts"].values()) == 3
    assert {t["number"] for t in pareto["pareto_front"]} <= {t["number"] for t in trained if t["feasible"]}
    assert 0.0 <= pareto["hypervolume"] <= 1.0
    assert client.delete(f"/api/jobs/{job_id}").status_code == 204


@pytest.mark.slow
def test_cancel_a_running_job_then_resume_it_to_the_end(client, settings):
    n_trials = 8
    job_id = client.post("/api/jobs", json=EXAMPLE_JOB_SPEC | {"n_trials": n_trials}).json()["id"]
    follower = Follower(client, job_id)
    worker = start_worker(settings)
    follower.until(lambda: bool(follower.finished), worker)

    cancel = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelling"
    follower.until(lambda: follower.status() == "cancelled", worker)
    worker.join(timeout=DEADLINE_S)
    stopped = client.get(f"/api/jobs/{job_id}").json()
    assert 1 <= stopped["progress"]["trials_done"] < n_trials
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 409

    resumed = client.post(f"/api/jobs/{job_id}/resume").json()
    assert resumed["status"] == "queued" and resumed["error"] is None
    worker = start_worker(settings)

    def job_over() -> bool:
        finished = follower.status() in FINISHED
        follower.poll()
        return finished

    follower.until(job_over, worker)
    worker.join(timeout=DEADLINE_S)
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["trials_done"] == n_trials
    # The resumed run kept the first run's trials and added the rest, each seen once.
    counted = [t for t in follower.finished if t["status"] in COUNTED]
    assert len(counted) == n_trials
    numbers = [t["number"] for t in follower.finished]
    assert numbers == sorted(set(numbers))
