"""Helpers shared by the search benchmarks (``search_quality.py``, ``overhead.py``).

A search job here is one :class:`~sparse_nas.search.SearchEngine` run into its own
SQLite study; :func:`run_job` times it and :func:`trial_timings` reads back each
trial's stored timings (``suggest_seconds``, ``driver_seconds``, ``train_seconds``,
``worker_seconds``, see :mod:`sparse_nas.search.records`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from sparse_nas.search import BaseExecutor, SearchEngine, SearchResults, open_storage, sqlite_url
from sparse_nas.spec import SearchJobSpec

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
STUDY_NAME = "bench"

TIMING_ATTRS = ("suggest_seconds", "driver_seconds", "train_seconds", "worker_seconds")
SOURCE_PACKAGES = ("sparse_nas", "search_spaces", "hw_models")


def source_digest() -> str:
    """A short hash of the product's Python sources, to tell which code a result was measured on."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def quiet() -> None:
    """Keep Optuna's per-study INFO lines and the engine's failed-trial warnings off the summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sparse_nas").setLevel(logging.ERROR)


@dataclass(frozen=True)
class JobRun:
    """One timed search job.

    Attributes:
        results: What the job found (read back from its study).
        run_seconds: Wall time of ``SearchEngine.run`` (opening the study, loading the
            dataset, the trial loop, reading the results back).
        loop_seconds: Wall time of the trial loop alone: from the first trial's start
            (``datetime_start``, set when the driver asks for it) to the last trial's
            completion (``datetime_complete``, set when it is told).
        cpu_seconds: CPU time of the calling process during ``SearchEngine.run``
            (user + system; Ray workers are other processes and are not in it).
    """

    results: SearchResults
    run_seconds: float
    loop_seconds: float
    cpu_seconds: float


def create_study(spec: SearchJobSpec, storage_url: str, enqueue: Sequence[Mapping[str, Any]] = ()) -> None:
    """Create the job's study with ``enqueue`` as waiting trials, which the engine then runs first, in order."""
    study = optuna.create_study(storage=open_storage(storage_url), study_name=STUDY_NAME, directions=spec.directions())
    for params in enqueue:
        study.enqueue_trial(dict(params), skip_if_exists=False)


def run_job(
    spec: SearchJobSpec,
    directory: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None,
    executor: BaseExecutor | None = None,
    enqueue: Sequence[Mapping[str, Any]] = (),
) -> JobRun:
    """Run ``spec`` into a new SQLite study in ``directory`` (which must not hold one yet).

    Args:
        spec: The job.
        directory: Holds the database and the trials' weights.
        data_dir: Dataset directory (None for ``digits``).
        executor: Passed to ``SearchEngine.run`` (the caller closes it); None: the
            engine makes and closes the one the spec asks for.
        enqueue: Points the job trains first, in this order (``n_trials`` still counts them).
    """
    directory = Path(directory)
    url = sqlite_url(directory / "study.db")
    if enqueue:
        create_study(spec, url, enqueue)
    engine = SearchEngine(
        spec, storage_url=url, study_name=STUDY_NAME, artifact_dir=directory / "artifacts", data_dir=data_dir
    )
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    results = engine.run(executor)
    run_seconds = time.perf_counter() - wall_start
    cpu_seconds = time.process_time() - cpu_start
    return JobRun(results, run_seconds, loop_seconds(url), cpu_seconds)


def loop_seconds(storage_url: str) -> float:
    """From the first trial's start to the last trial's completion, seconds (0.0 without finished trials)."""
    trials = optuna.load_study(storage=open_storage(storage_url), study_name=STUDY_NAME).get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not starts or not ends:
        return 0.0
    return (max(ends) - min(starts)).total_seconds()


def trial_timings(results: SearchResults) -> list[dict[str, Any]]:
    """Per trial: number, status, duration and every stored timing (None where not measured)."""
    rows = []
    for record in results.records:
        row: dict[str, Any] = {"number": record.number, "status": record.status, "duration_s": record.duration_s}
        for key in TIMING_ATTRS:
            row[key] = record.measured.get(key)
        worker_pid = record.measured.get("worker_pid")
        row["worker_pid"] = int(worker_pid) if worker_pid is not None else None
        row["worker_started_at"] = record.measured.get("worker_started_at")
        if record.reason is not None and record.status == "failed":
            row["reason"] = record.reason
        rows.append(row)
    return rows


def results_summary(results: SearchResults, *front_fields: str) -> dict[str, Any]:
    """A job's results as a benchmark records them: hypervolume and its history, reference
    point, counts per status, trial timings, and the front (number, values and the
    record attributes named in ``front_fields``, e.g. ``params`` or ``source``)."""
    return {
        "hypervolume": results.hypervolume,
        "hypervolume_history": [dict(entry) for entry in results.hypervolume_history],
        "reference_point": results.reference_point,
        "counts": results.counts,
        "pareto_front": [
            {"number": r.number, "values": list(r.values or ()), **{f: getattr(r, f) for f in front_fields}}
            for r in results.pareto_front
        ],
        "trials": trial_timings(results),
    }


def total(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    """Sum of ``key`` over the rows that have it."""
    return float(sum(row[key] for row in rows if row.get(key) is not None))


def median(values: Sequence[float]) -> float | None:
    """The median, or None for no values."""
    return float(statistics.median(values)) if values else None


def rounded(value: float | None, digits: int = 4) -> float | None:
    """``round`` that passes None and non-finite values through."""
    if value is None or not math.isfinite(value):
        return value
    return round(value, digits)
