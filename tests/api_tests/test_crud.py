"""The service's write layer on SQLite and PostgreSQL: lifecycle, idempotency, races."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api import crud
from api.db import TRANSITIONS, Job, make_engine, make_session_factory, upgrade
from api.errors import IdempotencyConflictError, InvalidQueryError, InvalidTransitionError, JobNotFoundError
from sparse_nas.spec import SearchJobSpec

SPEC = {
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


@pytest.fixture(scope="module")
def spec() -> SearchJobSpec:
    return SearchJobSpec.model_validate(SPEC)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A migrated, empty service database: a SQLite file, or a fresh PostgreSQL database."""
    url = (
        f"sqlite:///{tmp_path / 'service.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    )
    upgrade(url)
    return url


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


def in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(n) on n threads released at once; re-raise any error."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def count_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def make_stale(sessions: sessionmaker[Session], job_id: str) -> None:
    """Age the job's heartbeat past any staleness limit (a test-only write, not through crud)."""
    with sessions() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))
        s.commit()


# --- create, get, list ---------------------------------------------------------------------


def test_create_get_and_list_with_status_filter_and_pagination(sessions, spec):
    with sessions() as s:
        ids = [crud.create_job(s, spec)[0].id for _ in range(5)]
        for job_id in ids[:2]:
            crud.request_cancel(s, job_id)

    with sessions() as s:
        job = crud.get_job(s, ids[4])
        assert job.status == "queued" and job.name == "tiny" and job.n_trials == 3 and job.trials_done == 0
        assert job.study_name == f"job-{job.id}" and len(job.id) == 32
        assert job.spec == spec.to_dict()
        assert job.created_at.tzinfo is not None and job.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - job.created_at) < timedelta(minutes=1)

        jobs, total = crud.list_jobs(s)
        assert total == 5 and [j.id for j in jobs] == ids[::-1]
        jobs, total = crud.list_jobs(s, status="cancelled")
        assert total == 2 and [j.id for j in jobs] == ids[1::-1]
        jobs, total = crud.list_jobs(s, status="queued", limit=2, offset=1)
        assert total == 3 and [j.id for j in jobs] == [ids[3], ids[2]]
        jobs, total = crud.list_jobs(s, limit=2, offset=4)
        assert total == 5 and [j.id for j in jobs] == [ids[0]]
        assert crud.list_jobs(s, status="succeeded") == ([], 0)

        with pytest.raises(JobNotFoundError, match="job 'nope' does not exist"):
            crud.get_job(s, "nope")
        with pytest.raises(InvalidQueryError, match="unknown job status 'done'; valid: queued, running"):
            crud.list_jobs(s, status="done")
        with pytest.raises(InvalidQueryError, match="limit"):
            crud.list_jobs(s, limit=0)
        with pytest.raises(InvalidQueryError, match="offset"):
            crud.list_jobs(s, offset=-1)


def test_get_job_reads_changes_made_by_other_sessions(sessions, spec):
    with sessions() as reader, sessions() as writer:
        job = crud.create_job(reader, spec)[0]
        crud.request_cancel(writer, job.id)
        assert crud.get_job(reader, job.id).status == "cancelled"


def test_idempotent_create_returns_the_same_job_and_refuses_another_spec(sessions, spec):
    with sessions() as s:
        first, created = crud.create_job(s, spec, idempotency_key="key-1")
        again, created_again = crud.create_job(s, spec, idempotency_key="key-1")
        assert created and not created_again and again.id == first.id
        other = SearchJobSpec.model_validate(SPEC | {"n_trials": 4})
        with pytest.raises(IdempotencyConflictError, match=f"'key-1' was already used for job '{first.id}'"):
            crud.create_job(s, other, idempotency_key="key-1")
        # Without a key, or with another key, every submission is a new job.
        assert crud.create_job(s, spec)[0].id != first.id
        assert crud.create_job(s, other, idempotency_key="key-2")[1]
    assert count_rows(sessions) == 3


def test_200_concurrent_submissions_with_one_key_store_one_job(sessions, spec):
    def submit(_: int) -> tuple[str, bool]:
        with sessions() as s:
            job, created = crud.create_job(s, spec, idempotency_key="same")
            return job.id, created

    results = in_threads(200, submit)
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert count_rows(sessions) == 1


def test_50_concurrent_submissions_with_different_keys_store_50_jobs(sessions, spec):
    def submit(i: int) -> tuple[str, bool]:
        with sessions() as s:
            job, created = crud.create_job(s, spec, idempotency_key=f"key-{i}")
            return job.id, created

    results = in_threads(50, submit)
    assert all(created for _, created in results) and len({job_id for job_id, _ in results}) == 50
    assert count_rows(sessions) == 50


# --- the lifecycle -------------------------------------------------------------------------

# (status the job is in, action) -> status after it, or None when refused (written out by
# hand from the design, independently of api.db.models.TRANSITIONS).
EXPECTED = {
    ("queued", "cancel"): "cancelled",
    ("running", "cancel"): "cancelling",
    ("cancelling", "cancel"): "cancelling",
    ("cancelled", "cancel"): None,
    ("succeeded", "cancel"): None,
    ("failed", "cancel"): None,
    ("queued", "resume"): None,
    ("running", "resume"): None,
    ("cancelling", "resume"): None,
    ("cancelled", "resume"): "queued",
    ("succeeded", "resume"): None,
    ("failed", "resume"): "queued",
    ("queued", "delete"): "deleted",
    ("running", "delete"): None,
    ("cancelling", "delete"): None,
    ("cancelled", "delete"): "deleted",
    ("succeeded", "delete"): "deleted",
    ("failed", "delete"): "deleted",
}
ALLOWED_FROM = {
    "cancel": "'queued' or 'running' or 'cancelling'",
    "resume": "'cancelled' or 'failed'",
    "delete": "'queued' or 'cancelled' or 'succeeded' or 'failed'",
}


def job_in(s: Session, spec: SearchJobSpec, status: str) -> Job:
    """A new job brought to ``status`` the way the service does it."""
    job = crud.create_job(s, spec)[0]
    if status in ("running", "cancelling", "succeeded", "failed"):
        assert crud.claim_next_job(s, "w1", stale_after_s=60).id == job.id
    if status == "cancelling":
        crud.request_cancel(s, job.id)
    if status in ("succeeded", "failed"):
        crud.finish_job(s, job.id, "w1", status, error="boom" if status == "failed" else None)
    if status == "cancelled":
        crud.request_cancel(s, job.id)
    job = crud.get_job(s, job.id)
    assert job.status == status
    return job


def test_every_action_is_allowed_or_refused_per_the_lifecycle_table(sessions, db_url, spec):
    act = {
        "cancel": crud.request_cancel,
        "resume": crud.request_resume,
        "delete": lambda s, job_id: crud.delete_job(s, job_id, storage_url=db_url),
    }
    with sessions() as s:
        for (status, action), expected in EXPECTED.items():
            # A job left queued by the previous case would be claimed instead of this one.
            for leftover in crud.list_jobs(s, status="queued")[0]:
                crud.delete_job(s, leftover.id, storage_url=db_url)
            job = job_in(s, spec, status)
            if expected is None:
                with pytest.raises(InvalidTransitionError) as refused:
                    act[action](s, job.id)
                message = str(refused.value)
                assert f"cannot {action} job '{job.id}': its status is '{status}'" in message, message
                assert f"{action} is allowed only when the status is {ALLOWED_FROM[action]}" in message, message
                assert crud.get_job(s, job.id).status == status
                continue
            act[action](s, job.id)
            if expected == "deleted":
                with pytest.raises(JobNotFoundError):
                    crud.get_job(s, job.id)
                continue
            after = crud.get_job(s, job.id)
            assert after.status == expected, (status, action)
            assert expected == status or expected in TRANSITIONS[status]
            if expected == "cancelled":
                assert after.finished_at is not None
            if expected == "queued":
                assert after.error is None and after.worker_id is None and after.finished_at is None


def test_only_the_owning_worker_finishes_and_only_as_a_finished_status(sessions, spec):
    with sessions() as s:
        job = crud.create_job(s, spec)[0]
        with pytest.raises(InvalidTransitionError, match="its status is 'queued'; finish is allowed only"):
            crud.finish_job(s, job.id, "w1", "succeeded")
        crud.claim_next_job(s, "w1", stale_after_s=60)
        with pytest.raises(ValueError, match="one of cancelled, succeeded, failed, got 'running'"):
            crud.finish_job(s, job.id, "w1", "running")
        with pytest.raises(InvalidTransitionError, match=r"only by the worker that owns it \('w1', not 'w2'\)"):
            crud.finish_job(s, job.id, "w2", "succeeded")
        with pytest.raises(JobNotFoundError):
            crud.finish_job(s, "nope", "w1", "succeeded")
        done = crud.finish_job(s, job.id, "w1", "failed", error="RuntimeError: boom")
        assert done.status == "failed" and done.error == "RuntimeError: boom" and done.finished_at is not None
        resumed = crud.request_resume(s, job.id)
        assert resumed.status == "queued" and resumed.error is None and resumed.started_at == done.started_at


# --- claiming ------------------------------------------------------------------------------


def test_claim_takes_the_oldest_queued_job_and_heartbeat_reports_its_status(sessions, spec):
    with sessions() as s:
        assert crud.claim_next_job(s, "w1", stale_after_s=60) is None
        first, second = crud.create_job(s, spec)[0], crud.create_job(s, spec)[0]
        claimed = crud.claim_next_job(s, "w1", stale_after_s=60)
        assert claimed.id == first.id and claimed.status == "running" and claimed.worker_id == "w1"
        assert claimed.started_at is not None and claimed.heartbeat_at >= claimed.started_at
        assert crud.claim_next_job(s, "w2", stale_after_s=60).id == second.id
        assert crud.claim_next_job(s, "w3", stale_after_s=60) is None

        beat_before = crud.get_job(s, first.id).heartbeat_at
        assert crud.heartbeat(s, first.id, "w1") == "running"
        assert crud.get_job(s, first.id).heartbeat_at > beat_before
        assert crud.heartbeat(s, first.id, "w2") is None
        crud.request_cancel(s, first.id)
        assert crud.heartbeat(s, first.id, "w1") == "cancelling"

        crud.update_progress(s, second.id, "w2", trials_done=2, best_accuracy=0.5)
        crud.update_progress(s, second.id, "w1", trials_done=3, best_accuracy=0.9)  # not its job: ignored
        progressed = crud.get_job(s, second.id)
        assert (progressed.trials_done, progressed.best_accuracy) == (2, 0.5)


def test_concurrent_claims_never_take_a_job_twice(sessions, spec):
    with sessions() as s:
        ids = {crud.create_job(s, spec)[0].id for _ in range(24)}

    def claim_all(i: int) -> list[str]:
        claimed = []
        with sessions() as s:
            while (job := crud.claim_next_job(s, f"w{i}", stale_after_s=60)) is not None:
                claimed.append(job.id)
        return claimed

    per_worker = in_threads(6, claim_all)
    claimed = [job_id for jobs in per_worker for job_id in jobs]
    assert sorted(claimed) == sorted(ids)
    with sessions() as s:
        owners = dict(s.execute(select(Job.id, Job.worker_id)).all())
    for i, jobs in enumerate(per_worker):
        assert all(owners[job_id] == f"w{i}" for job_id in jobs)


def test_a_stale_job_is_taken_over_with_its_status_and_the_old_worker_loses_it(sessions, spec):
    with sessions() as s:
        running = crud.create_job(s, spec)[0]
        cancelling = crud.create_job(s, spec)[0]
        crud.claim_next_job(s, "dead", stale_after_s=60)
        first_start = crud.claim_next_job(s, "dead", stale_after_s=60).started_at
        crud.request_cancel(s, cancelling.id)
        assert crud.claim_next_job(s, "w2", stale_after_s=60) is None  # heartbeats are fresh

        make_stale(sessions, running.id)
        make_stale(sessions, cancelling.id)
        taken = crud.claim_next_job(s, "w2", stale_after_s=60)
        assert (taken.id, taken.status, taken.worker_id) == (running.id, "running", "w2")
        assert taken.started_at < taken.heartbeat_at  # the first start is kept
        taken_cancelling = crud.claim_next_job(s, "w3", stale_after_s=60)
        assert (taken_cancelling.id, taken_cancelling.status) == (cancelling.id, "cancelling")
        assert taken_cancelling.started_at == first_start

        assert crud.heartbeat(s, running.id, "dead") is None
        assert crud.heartbeat(s, running.id, "w2") == "running"
        crud.update_progress(s, running.id, "dead", trials_done=9, best_accuracy=1.0)
        assert crud.get_job(s, running.id).trials_done == 0
        with pytest.raises(InvalidTransitionError, match="'w2', not 'dead'"):
            crud.finish_job(s, running.id, "dead", "succeeded")
        assert crud.finish_job(s, cancelling.id, "w3", "cancelled").status == "cancelled"


# --- deleting ------------------------------------------------------------------------------


def test_delete_refuses_an_active_job_and_deletes_the_study_with_the_row(sessions, db_url, spec):
    with sessions() as s:
        job = crud.create_job(s, spec)[0]
        crud.claim_next_job(s, "w1", stale_after_s=60)
        study = optuna.create_study(study_name=job.study_name, storage=db_url, directions=["maximize", "minimize"])
        study.add_trial(optuna.trial.create_trial(values=[0.5, 1.0]))
        other = optuna.create_study(study_name="someone-else", storage=db_url)
        other.add_trial(optuna.trial.create_trial(value=1.0))

        with pytest.raises(InvalidTransitionError, match="its status is 'running'"):
            crud.delete_job(s, job.id, storage_url=db_url)
        assert job.study_name in optuna.get_all_study_names(db_url)

        crud.finish_job(s, job.id, "w1", "succeeded")
        crud.delete_job(s, job.id, storage_url=db_url)
        with pytest.raises(JobNotFoundError):
            crud.get_job(s, job.id)
        assert optuna.get_all_study_names(db_url) == ["someone-else"]
        assert len(optuna.load_study(study_name="someone-else", storage=db_url).trials) == 1
        with pytest.raises(JobNotFoundError):
            crud.delete_job(s, job.id, storage_url=db_url)

        never_ran = crud.create_job(s, spec)[0]  # no study yet: nothing else to delete
        crud.delete_job(s, never_ran.id, storage_url=db_url)
    assert count_rows(sessions) == 0
