"""Tests of sparse_nas.sqlite: switching a shared SQLite file to WAL while another connection holds its lock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from sparse_nas.sqlite import enable_wal


def _locked_database(path: Path) -> sqlite3.Connection:
    """A connection holding the fresh database's exclusive lock (as a concurrent migration does)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("CREATE TABLE t (x INTEGER)")
    return holder


def _open_and_write(path: Path, errors: list[Exception]) -> None:
    """What each process does at start: connect, switch to WAL, then write in a transaction."""
    connection = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        enable_wal(connection, timeout_s=10.0, synchronous_normal=True)
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        connection.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        errors.append(exc)
    finally:
        connection.close()


def _race(tmp_path: Path, rounds: int = 50) -> list[Exception]:
    """Four connections open each of ``rounds`` fresh databases at once."""
    errors: list[Exception] = []
    for k in range(rounds):
        path, barrier = tmp_path / f"fresh{k}.db", threading.Barrier(4)
        threads = [
            threading.Thread(target=lambda p=path, b=barrier: (b.wait(), _open_and_write(p, errors)))
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return errors


def test_connections_racing_on_a_fresh_database_all_switch_to_wal(tmp_path: Path) -> None:
    # The plain pragma (busy timeout set) loses this race now and then with "database is
    # locked": measured 5 of 200 connections here, 27 of 600 concurrent migrations.
    errors = _race(tmp_path)

    assert errors == []
    connection = sqlite3.connect(tmp_path / "fresh0.db")
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_wal_switch_gives_up_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    holder = _locked_database(path)
    connection = sqlite3.connect(path, timeout=0.0)
    started = time.monotonic()

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enable_wal(connection, timeout_s=0.3)

    assert time.monotonic() - started < 5.0
    holder.rollback()
    holder.close()
    connection.close()
