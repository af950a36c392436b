"""Migrations of the service tables to the newest revision, without an ``alembic.ini``.

Optuna's ``RDBStorage`` keeps its own tables and ``alembic_version`` table in the same
database; the service records its revision in :data:`VERSION_TABLE` instead, and the
two never touch each other's tables. Each process that uses the database (the API, a
worker) calls :func:`upgrade` at start; several may do so at once: the database is
locked for the duration (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``),
so the later ones find it at head and do nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from api.db.models import Base
from api.db.session import make_engine

VERSION_TABLE = "sparse_nas_alembic_version"
"""Our Alembic version table (``alembic_version`` is Optuna's)."""

ADVISORY_LOCK_KEY = 0x5A_4E_41_53_0001
"""PostgreSQL advisory lock taken while migrating (any fixed 64-bit number of ours)."""

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Reflect only the service's own tables (Optuna's ``studies``, ``trials``, ... are not ours)."""
    if type_ == "table":
        return name in Base.metadata.tables
    return True


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Compare only the service's own tables and what belongs to them."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    return table is None or table.name in Base.metadata.tables


CONTEXT_OPTIONS: dict[str, Any] = {
    "target_metadata": Base.metadata,
    "version_table": VERSION_TABLE,
    "include_name": include_name,
    "include_object": include_object,
    "compare_type": True,
    # SQLite alters a table by copying it; batch mode does that in later revisions.
    "render_as_batch": True,
}
"""How the migration context is configured (``env.py``; tests compare models with it)."""


def alembic_config() -> Config:
    """The Alembic configuration of the service migrations (no file needed)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    return config


def head_revision() -> str:
    """The newest revision of the service migrations."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found in {SCRIPT_LOCATION}")
    return head


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at; None before the first migration."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the service tables at ``url`` to ``revision`` (a no-op when already there)."""
    _migrate(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the service tables at ``url`` down to ``revision`` (``"base"``: drop them)."""
    _migrate(url, command.downgrade, revision)


def _migrate(url: str, step: Callable[[Config, str], None], revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            _lock(connection)
            config = alembic_config()
            # env.py runs inside this transaction; it commits here, lock released with it.
            config.attributes["connection"] = connection
            step(config, revision)
            connection.commit()
    finally:
        engine.dispose()


def _lock(connection: Connection) -> None:
    """Begin the migration transaction holding the database's migration lock."""
    if connection.dialect.name == "sqlite":
        # The driver's own transaction handling would begin a deferred transaction only
        # at the first write, and let DDL commit on its own; take the write lock now and
        # keep DDL and the version stamp in one transaction (SQLite's DDL is transactional).
        connection.connection.driver_connection.isolation_level = None
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
