"""The service's tables, on their own ``MetaData`` beside Optuna's tables in the same database.

A job's lifecycle (every change goes through :mod:`api.crud`)::

    queued ──claim──> running ──finish──> succeeded | failed | cancelled
      │                  │
      │ cancel           │ cancel
      v                  v
    cancelled <──────  cancelling ──finish──> cancelled (or succeeded | failed when
      │                                       the last trials ended first)
      │ resume (also from failed)
      v
    queued

A worker that dies leaves its job ``running`` (or ``cancelling``) with a heartbeat that
goes stale; another worker takes it over, keeping its status.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Float, Integer, MetaData, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JOBS_TABLE = "sparse_nas_jobs"

QUEUED = "queued"
RUNNING = "running"
CANCELLING = "cancelling"
CANCELLED = "cancelled"
SUCCEEDED = "succeeded"
FAILED = "failed"

JOB_STATUSES: tuple[str, ...] = (QUEUED, RUNNING, CANCELLING, CANCELLED, SUCCEEDED, FAILED)
ACTIVE_STATUSES: tuple[str, ...] = (RUNNING, CANCELLING)
"""A worker owns the job (``worker_id``) and stamps its heartbeat."""
FINISHED_STATUSES: tuple[str, ...] = (CANCELLED, SUCCEEDED, FAILED)

TRANSITIONS: Mapping[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED}),
    # running -> queued: its worker shut down cleanly and handed the job back (release).
    RUNNING: frozenset({QUEUED, CANCELLING, SUCCEEDED, FAILED, CANCELLED}),
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED}),
    CANCELLED: frozenset({QUEUED}),
    FAILED: frozenset({QUEUED}),
    SUCCEEDED: frozenset(),
}
"""Status -> the statuses it may change to."""

ACTIONS: Mapping[str, tuple[str, ...]] = {
    "claim": (QUEUED, *ACTIVE_STATUSES),
    "cancel": (QUEUED, RUNNING, CANCELLING),
    "resume": (CANCELLED, FAILED),
    "delete": (QUEUED, *FINISHED_STATUSES),
    "finish": ACTIVE_STATUSES,
    "release": (RUNNING,),
}
"""Action -> the statuses that allow it (``claim`` takes an active job only once its
heartbeat is stale; ``finish`` and ``release`` only by the job's own worker)."""

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names that migrations can refer to on every database."""


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every timestamp column holds)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the UTC wall time
    is stored and UTC is attached again on reading. Naive datetimes are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime ({value.isoformat()}) cannot be stored; use a timezone-aware one")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the service tables; its metadata holds no Optuna table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One submitted search job and the state of its run (its trials live in its Optuna study).

    Attributes:
        id: uuid4 hex.
        name: The spec's name, for people.
        spec: The validated spec (``SearchJobSpec.to_dict()``).
        status: One of :data:`JOB_STATUSES`.
        idempotency_key: The client's key for a retried submission; unique when given.
        study_name: The job's Optuna study, ``"job-" + id``.
        n_trials: The spec's trial budget.
        trials_done: Trials that count toward the budget so far.
        best_accuracy: Best validation accuracy among complete, feasible trials.
        error: Why the job failed (``"<ExceptionType>: <message>"``).
        worker_id: The worker that owns (or last owned) the job.
        heartbeat_at: Last sign of life of the owning worker.
        created_at: Submission time; ``started_at``: first claim; ``finished_at``: end
            of the last run; ``updated_at``: last change of the row (all UTC).
    """

    __tablename__ = JOBS_TABLE

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String, unique=True)
    study_name: Mapped[str] = mapped_column(String(64), unique=True)
    n_trials: Mapped[int] = mapped_column(Integer)
    trials_done: Mapped[int] = mapped_column(Integer, default=0)
    best_accuracy: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r}, trials_done={self.trials_done}/{self.n_trials})"
