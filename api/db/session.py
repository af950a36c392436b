"""Engines and sessions of the service database (SQLite file or PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from sparse_nas.sqlite import enable_wal

SQLITE_BUSY_TIMEOUT_S = 60.0
"""How long a SQLite writer waits for the lock (the worker, the API and Optuna share the file)."""


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite shared across threads in WAL mode, PostgreSQL pre-pinged.

    SQLite: connections may move between threads (the API's thread pool), writers wait
    up to :data:`SQLITE_BUSY_TIMEOUT_S` for the lock, and the file is switched to WAL so
    that readers (the API, a dashboard) never block the worker's writes. PostgreSQL:
    pooled connections are tested before use, so a restarted server costs no request.

    Args:
        url: A SQLAlchemy URL (``sqlite:///path.db``, ``postgresql+psycopg://...``).
        **kwargs: More ``create_engine`` arguments.
    """
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        connect_args |= kwargs.pop("connect_args", {})
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    enable_wal(dbapi_connection, SQLITE_BUSY_TIMEOUT_S)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on ``engine``; objects stay readable after commit (the API serialises them then)."""
    return sessionmaker(engine, expire_on_commit=False)
