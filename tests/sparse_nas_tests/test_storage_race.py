"""Several processes opening the study storage of a fresh database at the same moment.

docker-compose starts the API and a worker together on an empty PostgreSQL; both create
Optuna's tables. Every process must come up, and the tables must be usable after.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 8
"""Without a retry, 8 processes racing on a fresh PostgreSQL database failed 14 of 24
times here (a unique violation while creating Optuna's tables)."""

OPEN_TOGETHER = """
import sys, time
from pathlib import Path
from sparse_nas.search.storage import open_storage
url, barrier, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(barrier / str(__import__("os").getpid())).touch()
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < n and time.monotonic() < deadline:
    time.sleep(0.005)
open_storage(url).engine.dispose()
print("opened")
"""


def open_together(url: str, barrier: Path) -> list[subprocess.CompletedProcess[str]]:
    # Imports take seconds: each process waits at a barrier (a file per process) so
    # all of them open the storage at about the same instant.
    barrier.mkdir()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_TOGETHER, url, str(barrier), str(PROCESSES)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def check(url: str, barrier: Path) -> None:
    results = open_together(url, barrier)
    for result in results:
        assert result.returncode == 0 and result.stdout.strip() == "opened", result.stderr[-2000:]
    study = optuna.create_study(storage=url, study_name="after-the-race")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    check(f"sqlite:///{tmp_path / 'fresh.db'}", tmp_path / "barrier")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("postgres")
def test_processes_opening_a_fresh_postgresql_database_together_all_succeed(postgres_url: str, tmp_path: Path) -> None:
    check(postgres_url, tmp_path / "barrier")
