"""SQLite connections in WAL mode, for every process that shares a database file.

``PRAGMA journal_mode=WAL`` needs the file's exclusive lock for a moment. When several
connections open a fresh database at once (an API and a worker starting together, or
concurrent migrations), SQLite answers the losers with "database is locked" straight
away, without waiting on the busy timeout. The switch is therefore retried here until
the busy timeout runs out; once the file is in WAL mode (a persistent setting) the
pragma takes no lock.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

WAL_RETRY_PAUSE_S = 0.01
"""First pause between tries of the journal-mode switch; it doubles up to 0.2 s."""


def enable_wal(dbapi_connection: Any, timeout_s: float, *, synchronous_normal: bool = False) -> None:
    """Put a new SQLite connection's database in WAL mode, retrying while another connection holds the lock.

    Args:
        dbapi_connection: The ``sqlite3`` connection (a SQLAlchemy ``connect`` event's argument).
        timeout_s: How long to keep trying before the last "database is locked" is raised.
        synchronous_normal: Also ``PRAGMA synchronous=NORMAL`` (commits do not wait for
            fsync; a killed process loses nothing committed, a power cut may lose the last
            commits).
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        deadline, pause = time.monotonic() + timeout_s, WAL_RETRY_PAUSE_S
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(2 * pause, 0.2)
        if synchronous_normal:
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
