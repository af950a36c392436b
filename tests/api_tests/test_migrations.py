"""Service migrations beside Optuna's tables in one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from typing import Any

import optuna
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text

from api.db import Base, Job, make_engine, make_session_factory
from api.db.migrate import CONTEXT_OPTIONS, VERSION_TABLE, current_revision, downgrade, head_revision, upgrade

OPTUNA_TABLES = {"studies", "trials", "alembic_version", "version_info", "trial_values", "trial_params"}

DATABASES = [
    "sqlite",
    pytest.param("postgres", marks=[pytest.mark.postgres, pytest.mark.xdist_group("postgres")]),
]


@pytest.fixture(params=DATABASES)
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty database: a SQLite file that does not exist yet, or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("postgres_url")


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def optuna_state(url: str) -> tuple[str, list[Any]]:
    """Optuna's own schema version and the trials of its study ``s`` (what must survive)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
    study = optuna.load_study(study_name="s", storage=url)
    return version, [(t.number, t.values, t.params) for t in study.trials]


def add_optuna_study(url: str) -> None:
    study = optuna.create_study(study_name="s", storage=url, directions=["maximize", "minimize"])
    study.add_trial(
        optuna.trial.create_trial(
            values=[0.9, 1024.0], params={"x": 1.0}, distributions={"x": optuna.distributions.FloatDistribution(0, 2)}
        )
    )


def add_job(url: str) -> str:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            job = Job(id="a" * 32, spec={"n_trials": 1}, status="queued", study_name="job-a", n_trials=1)
            session.add(job)
            session.commit()
            return job.id
    finally:
        engine.dispose()


def job_ids(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return list(session.scalars(select(Job.id)))
    finally:
        engine.dispose()


def test_upgrade_creates_the_jobs_table_and_twice_is_a_no_op(url):
    assert current_revision(url) is None
    upgrade(url)
    assert {"sparse_nas_jobs", VERSION_TABLE} <= tables(url)
    assert not tables(url) & OPTUNA_TABLES
    assert current_revision(url) == head_revision() == "0001"
    job_id = add_job(url)
    upgrade(url)
    assert current_revision(url) == "0001" and job_ids(url) == [job_id]


def test_upgrade_leaves_existing_optuna_tables_intact(url):
    add_optuna_study(url)
    before = optuna_state(url)
    upgrade(url)
    assert optuna_state(url) == before
    assert current_revision(url) == head_revision()


def test_optuna_storage_created_after_the_service_tables_leaves_them_intact(url):
    upgrade(url)
    job_id = add_job(url)
    add_optuna_study(url)
    before = optuna_state(url)
    upgrade(url)
    assert job_ids(url) == [job_id] and optuna_state(url) == before


def test_models_match_the_migrations_and_optuna_tables_are_ignored(url):
    add_optuna_study(url)
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            ours = MigrationContext.configure(connection, opts=CONTEXT_OPTIONS)
            assert compare_metadata(ours, Base.metadata) == []
            # The filters are what keeps Optuna's tables out: without them, every one
            # of them would be a table to drop.
            unfiltered = MigrationContext.configure(connection, opts={"target_metadata": Base.metadata})
            dropped = {
                diff[1].name for diff in compare_metadata(unfiltered, Base.metadata) if diff[0] == "remove_table"
            }
            assert {"studies", "trials", VERSION_TABLE} <= dropped
    finally:
        engine.dispose()


def test_concurrent_upgrades_of_an_empty_database_all_succeed(url):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            upgrade(url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert current_revision(url) == head_revision()


def test_downgrade_to_base_drops_only_the_service_tables(url):
    add_optuna_study(url)
    upgrade(url)
    before = optuna_state(url)
    downgrade(url, "base")
    assert "sparse_nas_jobs" not in tables(url) and current_revision(url) is None
    assert optuna_state(url) == before


def test_sqlite_engines_use_wal_and_wait_for_the_write_lock(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'service.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 10_000
    finally:
        engine.dispose()
