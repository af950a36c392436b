"""The service database: the jobs table, its engines and sessions, and its migrations.

Public surface:

* :class:`Job` and the lifecycle data (statuses, :data:`TRANSITIONS`, :data:`ACTIONS`).
* :func:`make_engine` / :func:`make_session_factory`: SQLite (WAL) or PostgreSQL.
* :func:`upgrade`: migrate the service tables to head (Optuna's tables are left alone).

Writes go through :mod:`api.crud`.
"""

from __future__ import annotations

from api.db.migrate import VERSION_TABLE, current_revision, head_revision, upgrade
from api.db.models import (
    ACTIONS,
    ACTIVE_STATUSES,
    CANCELLED,
    CANCELLING,
    FAILED,
    FINISHED_STATUSES,
    JOB_STATUSES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TRANSITIONS,
    Base,
    Job,
)
from api.db.session import make_engine, make_session_factory

__all__ = [
    "ACTIONS",
    "ACTIVE_STATUSES",
    "CANCELLED",
    "CANCELLING",
    "FAILED",
    "FINISHED_STATUSES",
    "JOB_STATUSES",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "TRANSITIONS",
    "VERSION_TABLE",
    "Base",
    "Job",
    "current_revision",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "upgrade",
]
