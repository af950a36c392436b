"""Test-wide settings: one torch thread per test worker (2 cores are shared by xdist)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _pin_torch_threads() -> None:
    # Only when torch is already in use: hw_models tests must not pay for importing it.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def pytest_runtest_setup(item: pytest.Item) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


# --- PostgreSQL --------------------------------------------------------------------------
# CI starts with nothing running: the first test that needs PostgreSQL starts the
# Debian cluster (pg_ctlcluster, about 2 s) and every test gets its own database, owned
# by a password role reachable over TCP on 127.0.0.1 (what a deployment uses).

PG_VERSION, PG_CLUSTER = "15", "main"
PG_ROLE, PG_PASSWORD = "sparse_nas_test", "sparse_nas_test"


def _as_postgres(sql: str) -> str:
    import subprocess

    done = subprocess.run(
        ["su", "postgres", "-c", f"psql -v ON_ERROR_STOP=1 -tAc {_shell_quote(sql)}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql {sql!r} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A running PostgreSQL 15 with the test role; returns its host:port."""
    import shutil
    import subprocess

    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("PostgreSQL 15 is not installed here (pg_ctlcluster not found)")
    status = subprocess.run(["pg_ctlcluster", PG_VERSION, PG_CLUSTER, "status"], capture_output=True)
    if status.returncode != 0:
        subprocess.run(["pg_ctlcluster", PG_VERSION, PG_CLUSTER, "start"], check=True, timeout=60)
    exists = _as_postgres(f"SELECT 1 FROM pg_roles WHERE rolname = '{PG_ROLE}'")
    if not exists:
        _as_postgres(f"CREATE ROLE {PG_ROLE} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'")
    return "127.0.0.1:5432"


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards), as a SQLAlchemy URL."""
    import uuid

    name = f"sparse_nas_test_{uuid.uuid4().hex[:12]}"
    _as_postgres(f"CREATE DATABASE {name} OWNER {PG_ROLE}")
    yield f"postgresql+psycopg://{PG_ROLE}:{PG_PASSWORD}@{postgres_server}/{name}"
    _as_postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
