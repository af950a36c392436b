"""Read helpers over the jobs' Optuna studies: trials, one trial, the Pareto front.

The API only reads studies; the job's driver (``api.worker``) is their only writer.
One RDBStorage (one connection pool) serves every read, with two layers of caching,
because many clients poll ``?after=`` at once while a job runs:

* Each study is read through its own Optuna ``_CachedStorage`` wrapper, which keeps
  finished trials (immutable once told) and re-reads only the unfinished and new ones.
* The trial list read that way is reused for :attr:`StudyReader.max_age_s`; the read
  itself is single-flight (one per study at a time), so fifty clients polling in the
  same instant cost one database read. Trials are thus at most that old, and never
  older than the job row the caller read (``not_before``): the worker stamps the row
  after each trial it tells and when the job ends, so a client that sees a job
  finished and then reads its trials gets all of them.

Caches are keyed by study *name*, which is unique per job, because a database may
reuse the numeric id of a deleted study.

Everything returned is JSON-ready: NaN and infinities (a diverged trial's values)
become ``None``, since JSON has no such numbers.
"""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sparse_nas.search import SearchResults, StorageError, open_storage, to_records
from sparse_nas.spec import SearchJobSpec

_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)
MAX_CACHED_STUDIES = 64
"""Studies whose trials are kept in memory (least recently read dropped first)."""
DEFAULT_MAX_AGE_S = 0.25
"""How long a study's trial list is served from memory before it is read again."""


@dataclass(frozen=True)
class TrialsPage:
    """Trials with ``number > after``, in number order, and the cursor of the next poll."""

    items: list[dict[str, Any]]
    next_after: int
    has_more: bool


@dataclass
class _StudyCache:
    """One study's Optuna trial cache, its id once known, and its last trial list."""

    storage: BaseStorage
    study_id: int | None = None
    trials: list[FrozenTrial] = field(default_factory=list)
    read_at: float = -math.inf
    """``time.monotonic()`` when ``trials`` were read."""
    read_wall: float = -math.inf
    """``time.time()`` when that read began."""
    lock: threading.Lock = field(default_factory=threading.Lock)


class StudyReader:
    """Read-only access to the studies in the service database.

    Thread-safe: routes run in a thread pool.

    Args:
        storage_url: SQLAlchemy URL of the database holding the Optuna tables.
        max_age_s: How long a study's trial list is reused before it is read again
            (0: every call reads).
    """

    def __init__(self, storage_url: str, max_age_s: float = DEFAULT_MAX_AGE_S):
        self._url = storage_url
        self.max_age_s = max_age_s
        self._backend: optuna.storages.RDBStorage | None = None
        self._studies: OrderedDict[str, _StudyCache] = OrderedDict()
        self._lock = threading.Lock()

    def open(self) -> None:
        """Connect, creating Optuna's tables when missing (a fresh database reads as empty).

        The app calls this at start-up, so that a worker starting later finds the tables
        made: Optuna's ``create_all`` is not safe against another process doing it at
        the same moment. Losing that race is survived here by opening once more.
        """
        with self._lock:
            self._open()

    def _open(self) -> optuna.storages.RDBStorage:
        if self._backend is None:
            try:
                self._backend = open_storage(self._url)
            except StorageError:
                self._backend = open_storage(self._url)
        return self._backend

    def _cache(self, study_name: str) -> _StudyCache:
        with self._lock:
            backend = self._open()
            cache = self._studies.get(study_name)
            if cache is None:
                # get_storage wraps an RDBStorage in Optuna's trial cache (_CachedStorage).
                cache = self._studies[study_name] = _StudyCache(optuna.storages.get_storage(backend))
                while len(self._studies) > MAX_CACHED_STUDIES:
                    self._studies.popitem(last=False)
            else:
                self._studies.move_to_end(study_name)
            return cache

    def forget(self, study_name: str) -> None:
        """Drop a study's cached trials (its job was deleted)."""
        with self._lock:
            self._studies.pop(study_name, None)

    def close(self) -> None:
        """Release the database connections."""
        with self._lock:
            self._studies.clear()
            if self._backend is not None:
                self._backend.engine.dispose()
                self._backend = None

    def _frozen_trials(self, study_name: str | None, not_before: float | None) -> list[FrozenTrial]:
        """Every trial of the study in number order, at most ``max_age_s`` old and read
        after ``not_before`` (a POSIX time); none when the study does not exist (yet)."""
        if not study_name:
            return []
        cache = self._cache(study_name)
        with cache.lock:
            now = time.monotonic()
            fresh_enough = not_before is None or cache.read_wall >= not_before
            if now - cache.read_at < self.max_age_s and fresh_enough:
                return cache.trials
            cache.read_wall = time.time()
            try:
                # A study keeps its id for life; remembering it saves a query per read.
                if cache.study_id is None:
                    cache.study_id = cache.storage.get_study_id_from_name(study_name)
                cache.trials = cache.storage.get_all_trials(cache.study_id, deepcopy=False)
            except KeyError:
                cache.trials = []
            cache.read_at = now
            return cache.trials

    def trials_page(
        self, study_name: str | None, *, after: int, limit: int, not_before: float | None = None
    ) -> TrialsPage:
        """Up to ``limit`` trials numbered above ``after``, read after ``not_before``.

        ``next_after`` is the number of the last returned trial, but never moves past a
        running or waiting one: polling with it returns that trial again, finished.
        """
        later = [t for t in self._frozen_trials(study_name, not_before) if t.number > after]
        page = to_records(later[:limit])
        next_after = after
        for trial in later[:limit]:
            if trial.state in _UNFINISHED:
                break
            next_after = trial.number
        return TrialsPage(
            items=[json_ready(r.to_dict()) for r in page], next_after=next_after, has_more=len(later) > limit
        )

    def trial(self, study_name: str | None, number: int, not_before: float | None = None) -> dict[str, Any] | None:
        """Trial ``number`` of the study (read after ``not_before``), or None when there is none."""
        for trial in self._frozen_trials(study_name, not_before):
            if trial.number == number:
                return json_ready(to_records([trial])[0].to_dict())
        return None

    def results(self, study_name: str | None, spec: dict[str, Any]) -> dict[str, Any]:
        """``SearchResults.to_dict()`` of the job, less the full trial list (``/trials`` pages it).

        A job without a study yet gets an empty front measured against its reference point.
        """
        job_spec = parse_spec(spec)
        study: optuna.Study | None = None
        if study_name:
            storage = self._cache(study_name).storage
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
            except KeyError:
                study = None
        if study is None:
            study = optuna.create_study(directions=job_spec.directions())
        results = SearchResults.from_study(study, job_spec).to_dict()
        results.pop("trials", None)
        return json_ready(results)


def parse_spec(spec: dict[str, Any]) -> SearchJobSpec:
    """A stored job spec, validated (memoised: validation builds the search space)."""
    return _parse_spec_json(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=128)
def _parse_spec_json(spec_json: str) -> SearchJobSpec:
    return SearchJobSpec.model_validate_json(spec_json)


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value
