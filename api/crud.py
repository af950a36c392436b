"""Every write of the service's database (routes and the worker only call these).

Each function runs and commits its own transaction on the ``Session`` it is given (and
rolls it back on an error), and returns ORM :class:`~api.db.models.Job` objects read
fresh from the database. Status changes are conditional updates (``WHERE status =
<the status seen>``), so two writers racing on one job never both win: the loser sees
the new status and is refused or retried. The lifecycle and who may do what are in
:mod:`api.db.models` (:data:`~api.db.models.TRANSITIONS`, :data:`~api.db.models.ACTIONS`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.db.models import (
    ACTIONS,
    ACTIVE_STATUSES,
    CANCELLED,
    CANCELLING,
    FINISHED_STATUSES,
    JOB_STATUSES,
    QUEUED,
    RUNNING,
    Job,
    utcnow,
)
from api.errors import (
    IdempotencyConflictError,
    InvalidQueryError,
    InvalidTransitionError,
    JobNotFoundError,
    ServiceError,
)
from sparse_nas.spec import SearchJobSpec

logger = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
"""The largest page :func:`list_jobs` returns."""

_CONFLICT_RETRIES = 20
"""Re-reads of a job whose status changed between reading and writing it (each retry
means another writer won a race, so a handful is plenty)."""

_CLAIM_CANDIDATES = 8
"""Jobs a SQLite claim tries per read, when other workers take the first ones."""


@contextmanager
def _transaction(session: Session) -> Iterator[None]:
    """Commit what the block did, or roll it back on any error."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _load(session: Session, job_id: str) -> Job:
    # populate_existing: a Job already in this session is refreshed, not served stale.
    job = session.scalars(select(Job).where(Job.id == job_id).execution_options(populate_existing=True)).one_or_none()
    if job is None:
        raise JobNotFoundError(job_id)
    return job


def _canonical(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


# --- submitting and reading ----------------------------------------------------------------


def create_job(session: Session, spec: SearchJobSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Queue a job for ``spec``, or return the job already submitted under ``idempotency_key``.

    Safe under concurrent submissions of one key: the key is unique in the table, so
    exactly one insert wins and every other submission reads that job back.

    Returns:
        The job, and whether it was created by this call.

    Raises:
        IdempotencyConflictError: The key names a job with a different spec.
    """
    spec_dict = spec.to_dict()
    if idempotency_key is not None:
        with _transaction(session):
            existing = _by_key(session, idempotency_key)
        if existing is not None:
            return _same_spec(existing, spec_dict, idempotency_key), False
    job_id = uuid.uuid4().hex
    now = utcnow()
    job = Job(
        id=job_id,
        name=spec.name,
        spec=spec_dict,
        status=QUEUED,
        idempotency_key=idempotency_key,
        study_name=f"job-{job_id}",
        n_trials=spec.n_trials,
        trials_done=0,
        created_at=now,
        updated_at=now,
    )
    try:
        with _transaction(session):
            session.add(job)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with _transaction(session):
            existing = _by_key(session, idempotency_key)
        if existing is None:
            raise
        return _same_spec(existing, spec_dict, idempotency_key), False
    return job, True


def _by_key(session: Session, idempotency_key: str) -> Job | None:
    query = select(Job).where(Job.idempotency_key == idempotency_key).execution_options(populate_existing=True)
    return session.scalars(query).one_or_none()


def _same_spec(job: Job, spec: Mapping[str, Any], idempotency_key: str) -> Job:
    if _canonical(job.spec) != _canonical(spec):
        raise IdempotencyConflictError(idempotency_key, job.id)
    return job


def get_job(session: Session, job_id: str) -> Job:
    """The job ``job_id``.

    Raises:
        JobNotFoundError: No job has that id.
    """
    with _transaction(session):
        return _load(session, job_id)


def list_jobs(
    session: Session, *, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Job], int]:
    """One page of jobs, newest first, and how many jobs match in all.

    Args:
        status: Only jobs with this status (one of ``JOB_STATUSES``); None: all.
        limit: Page size, 1 to :data:`MAX_LIST_LIMIT`.
        offset: Jobs to skip (>= 0).

    Raises:
        InvalidQueryError: Unknown status, or a limit or offset out of range.
    """
    if status is not None and status not in JOB_STATUSES:
        raise InvalidQueryError(f"status: unknown job status {status!r}; valid: {', '.join(JOB_STATUSES)}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidQueryError(f"limit: must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    if offset < 0:
        raise InvalidQueryError(f"offset: must be 0 or more, got {offset}")
    where = [Job.status == status] if status is not None else []
    with _transaction(session):
        total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        page = (
            select(Job)
            .where(*where)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(limit)
            .offset(offset)
            .execution_options(populate_existing=True)
        )
        jobs = list(session.scalars(page))
    return jobs, total


# --- the worker's side -------------------------------------------------------------------


def _claimable(stale_before: datetime) -> ColumnElement[bool]:
    """Queued, or active with a heartbeat older than ``stale_before`` (its worker died)."""
    return or_(
        Job.status == QUEUED,
        and_(
            Job.status.in_(ACTIVE_STATUSES),
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
        ),
    )


def claim_next_job(session: Session, worker_id: str, *, stale_after_s: float) -> Job | None:
    """Take the oldest job to run: a queued one, or an active one whose worker went silent.

    A queued job becomes ``running``. A ``running`` or ``cancelling`` job whose
    heartbeat is older than ``stale_after_s`` is taken over with its status kept (the
    new worker resumes its study, or finishes a ``cancelling`` one as cancelled). Two
    workers never take the same job: PostgreSQL locks the row (``FOR UPDATE SKIP
    LOCKED``, so workers skip each other's candidates); SQLite, which has no row locks,
    updates the row only if it still is as it was read, and moves on when it is not.

    Returns:
        The claimed job (owned by ``worker_id``, heartbeat now), or None.
    """
    if stale_after_s <= 0:
        raise ValueError(f"stale_after_s: must be positive, got {stale_after_s}")
    now = utcnow()
    claimable = _claimable(now - timedelta(seconds=stale_after_s))
    oldest_first = (Job.created_at, Job.id)
    with _transaction(session):
        if session.get_bind().dialect.name == "postgresql":
            query = (
                select(Job)
                .where(claimable)
                .order_by(*oldest_first)
                .limit(1)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)
            )
            job = session.scalars(query).one_or_none()
            if job is None:
                return None
            job.status = RUNNING if job.status == QUEUED else job.status
            job.worker_id = worker_id
            job.heartbeat_at = now
            job.started_at = job.started_at or now
            job.updated_at = now
            return job
        seen_query = (
            select(Job.id, Job.status, Job.worker_id, Job.heartbeat_at)
            .where(claimable)
            .order_by(*oldest_first)
            .limit(_CLAIM_CANDIDATES)
        )
        while candidates := session.execute(seen_query).all():
            for seen in candidates:
                taken = session.execute(
                    update(Job)
                    .where(
                        Job.id == seen.id,
                        Job.status == seen.status,
                        Job.worker_id.is_not_distinct_from(seen.worker_id),
                        claimable,
                    )
                    .values(
                        status=RUNNING if seen.status == QUEUED else seen.status,
                        worker_id=worker_id,
                        heartbeat_at=now,
                        started_at=func.coalesce(Job.started_at, now),
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount == 1:
                    return _load(session, seen.id)
        return None


def heartbeat(session: Session, job_id: str, worker_id: str) -> str | None:
    """Stamp the heartbeat of a job ``worker_id`` owns.

    Returns:
        The job's status (``running``, or ``cancelling`` once a cancel was asked for),
        or None when the worker no longer owns the job (taken over, or gone).
    """
    owned = and_(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE_STATUSES))
    with _transaction(session):
        stamped = session.execute(
            update(Job).where(owned).values(heartbeat_at=utcnow()).execution_options(synchronize_session=False)
        )
        if stamped.rowcount != 1:
            return None
        return session.scalar(select(Job.status).where(Job.id == job_id))


def update_progress(
    session: Session, job_id: str, worker_id: str, *, trials_done: int, best_accuracy: float | None
) -> None:
    """Record the job's progress; a no-op when ``worker_id`` no longer owns the job."""
    owned = and_(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE_STATUSES))
    with _transaction(session):
        session.execute(
            update(Job)
            .where(owned)
            .values(trials_done=trials_done, best_accuracy=best_accuracy, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def finish_job(session: Session, job_id: str, worker_id: str, status: str, error: str | None = None) -> Job:
    """End the run of a job ``worker_id`` owns: ``succeeded``, ``failed`` or ``cancelled``.

    Raises:
        ValueError: ``status`` is not a finished status.
        JobNotFoundError: No job has that id.
        InvalidTransitionError: The job is not active, or another worker owns it.
    """
    if status not in FINISHED_STATUSES:
        raise ValueError(f"status: a job finishes as one of {', '.join(FINISHED_STATUSES)}, got {status!r}")
    now = utcnow()
    with _transaction(session):
        finished = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE_STATUSES))
            .values(status=status, error=error, finished_at=now, heartbeat_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        job = _load(session, job_id)
        if finished.rowcount != 1:
            owner = ""
            if job.status in ACTIVE_STATUSES:
                owner = f", and only by the worker that owns it ({job.worker_id!r}, not {worker_id!r})"
            raise InvalidTransitionError(job_id, job.status, "finish", ACTIONS["finish"], owner)
        return job


def release_job(session: Session, job_id: str, worker_id: str) -> bool:
    """Hand a running job back to the queue: its worker is shutting down mid-job.

    The job becomes ``queued`` with no owner, so the next worker to look claims it at
    once (instead of after ``stale_after_s``) and resumes its study. A job being
    cancelled is not released: its worker finishes it as cancelled.

    Returns:
        Whether the job was released (False: ``worker_id`` does not own it running).
    """
    owned = and_(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIONS["release"]))
    with _transaction(session):
        released = session.execute(
            update(Job)
            .where(owned)
            .values(status=QUEUED, worker_id=None, heartbeat_at=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return released.rowcount == 1


# --- the user's side ---------------------------------------------------------------------


def _transition(session: Session, job_id: str, action: str, moves: Mapping[str, Mapping[str, Any] | None]) -> Job:
    """Apply the move of the job's current status (None: leave it as it is), or refuse.

    The update is conditional on the status just read; when another writer changed it
    in between, the job is read again and the move of its new status applies.
    """
    for _ in range(_CONFLICT_RETRIES):
        with _transaction(session):
            job = _load(session, job_id)
            seen = job.status
            if seen not in moves:
                raise InvalidTransitionError(job_id, seen, action, ACTIONS[action])
            values = moves[seen]
            if values is None:
                return job
            moved = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == seen)
                .values(**values, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount == 1:
                return _load(session, job_id)
    raise ServiceError(f"job {job_id!r} changed status {_CONFLICT_RETRIES} times while trying to {action} it")


def request_cancel(session: Session, job_id: str) -> Job:
    """Cancel a job: a queued one at once; a running one by its worker, after the trials in flight.

    ``queued`` -> ``cancelled``; ``running`` -> ``cancelling`` (the worker finishes it
    as ``cancelled``); ``cancelling`` stays as it is.

    Raises:
        JobNotFoundError: No job has that id.
        InvalidTransitionError: The job already finished.
    """
    return _transition(
        session,
        job_id,
        "cancel",
        {QUEUED: {"status": CANCELLED, "finished_at": utcnow()}, RUNNING: {"status": CANCELLING}, CANCELLING: None},
    )


def request_resume(session: Session, job_id: str) -> Job:
    """Queue a cancelled or failed job again; its worker resumes its study, keeping its trials.

    Raises:
        JobNotFoundError: No job has that id.
        InvalidTransitionError: The job is queued, active or succeeded.
    """
    requeue = {"status": QUEUED, "error": None, "worker_id": None, "heartbeat_at": None, "finished_at": None}
    return _transition(session, job_id, "resume", dict.fromkeys(ACTIONS["resume"], requeue))


def delete_job(session: Session, job_id: str, *, storage_url: str) -> None:
    """Delete a job that is not active, and its Optuna study (the trials' records).

    Trained weights in the artifact directory are not deleted.

    Args:
        storage_url: The database URL of the job's Optuna study.

    Raises:
        JobNotFoundError: No job has that id.
        InvalidTransitionError: The job is running or cancelling.
    """
    for _ in range(_CONFLICT_RETRIES):
        with _transaction(session):
            job = _load(session, job_id)
            seen, study_name = job.status, job.study_name
            if seen not in ACTIONS["delete"]:
                raise InvalidTransitionError(job_id, seen, "delete", ACTIONS["delete"])
            deleted = session.execute(
                delete(Job).where(Job.id == job_id, Job.status == seen).execution_options(synchronize_session=False)
            )
            if deleted.rowcount == 1:
                session.expunge(job)
                break
    else:
        raise ServiceError(f"job {job_id!r} changed status {_CONFLICT_RETRIES} times while trying to delete it")
    # The row is gone first: no worker can claim the job while its study is deleted.
    _delete_study(study_name, storage_url)


def _delete_study(study_name: str, storage_url: str) -> None:
    import optuna

    from sparse_nas.search.storage import open_storage

    storage = open_storage(storage_url)
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:
        logger.debug("job study %s did not exist (the job never ran)", study_name)
    finally:
        storage.engine.dispose()
