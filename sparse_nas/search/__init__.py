"""The search engine: a job's trials asked, costed, trained and told into one Optuna study.

Public surface:

* :class:`SearchEngine` / :func:`run_search` run or resume a :class:`~sparse_nas.spec.SearchJobSpec`.
* :class:`SearchResults` reads a study back: Pareto front, hypervolume history, best
  trial per budget (Python and JSON).
* :class:`TrialRecord` is one stored trial (:mod:`sparse_nas.search.records` documents
  the storage schema); :func:`load_weights` reads a trial's trained weights.
* Executors (:class:`InProcessExecutor`, :class:`RayExecutor`) run trials.
"""

from __future__ import annotations

from sparse_nas.search.engine import JobMismatchError, SearchEngine, run_search, spec_digest
from sparse_nas.search.executors import BaseExecutor, ExecutorError, InProcessExecutor, RayExecutor
from sparse_nas.search.records import TrialRecord, to_record, to_records
from sparse_nas.search.results import SearchResults, reference_point
from sparse_nas.search.storage import StorageError, artifact_store, load_weights, open_storage, sqlite_url

__all__ = [
    "BaseExecutor",
    "ExecutorError",
    "InProcessExecutor",
    "JobMismatchError",
    "RayExecutor",
    "SearchEngine",
    "SearchResults",
    "StorageError",
    "TrialRecord",
    "artifact_store",
    "load_weights",
    "open_storage",
    "reference_point",
    "run_search",
    "spec_digest",
    "sqlite_url",
    "to_record",
    "to_records",
]
