"""Alembic environment of the service tables, run by :func:`api.db.migrate.upgrade`.

Optuna keeps its own tables and its own ``alembic_version`` table in the same database.
Ours therefore records its revision in :data:`~api.db.migrate.VERSION_TABLE`, and
autogenerate only looks at the tables of :data:`api.db.models.Base.metadata`, never at
Optuna's (:data:`~api.db.migrate.CONTEXT_OPTIONS`).
"""

from __future__ import annotations

from alembic import context

from api.db.migrate import CONTEXT_OPTIONS


def main() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or connection is None:
        raise RuntimeError("the service migrations run only through api.db.migrate.upgrade(url)")
    context.configure(connection=connection, **CONTEXT_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


main()
