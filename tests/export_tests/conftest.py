"""One tiny real service job for every export test: digits, sparse_cnn, run once by a real job worker.

The job (seeded: 4 trained trials, 1 infeasible) trains 2 epochs per trial, so its models
are mediocre (about 60 % test accuracy) and finalizing one has room to improve it.
:func:`finalized` finalizes the most accurate trial once. Tests that write the study
(finalize through the API or the CLI) work on :func:`job_copy`, a private copy.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest

from api import crud
from api.settings import Settings
from api.worker import JobWorker
from sparse_nas.datasets import DatasetSplits, load_dataset
from sparse_nas.export import EXPORTS_SUBDIR, FinalizedWeights, TrialSource, finalize_trial
from sparse_nas.search import TrialRecord, to_records
from sparse_nas.spec import SearchJobSpec

SPEC: dict[str, Any] = {
    "name": "export-tiny",
    "dataset": {"name": "digits"},
    "search_space": {"name": "sparse_cnn"},
    "device": "stm32f446re",
    "budgets": {"max_sram_bytes": 21000},
    "strategy": "random",
    "n_trials": 5,
    "initial_trials": 1,
    "training": {"epochs": 2, "batch_size": 64},
}
FINALIZE_EPOCHS = 8


def service_settings(root: Path) -> Settings:
    return Settings(
        state_dir=root / "state",
        data_dir=root / "data",
        artifact_dir=root / "artifacts",
        database_url=f"sqlite:///{root / 'service.db'}",
        host="127.0.0.1",
        api_token=None,
    )


@dataclass
class ServiceJob:
    """A finished job of a service database, and its trials by role."""

    root: Path
    settings: Settings
    job_id: str
    study_name: str
    records: list[TrialRecord] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.settings.resolved_database_url()

    @property
    def export_dir(self) -> Path:
        return self.settings.resolved_artifact_dir() / EXPORTS_SUBDIR

    def source(self) -> TrialSource:
        return TrialSource(self.url, self.study_name, self.settings.resolved_artifact_dir(), self.settings.data_dir)

    def complete(self) -> list[TrialRecord]:
        """Complete trials, most accurate (validation) first."""
        done = [r for r in self.records if r.status == "complete"]
        return sorted(done, key=lambda r: (-r.measured["val_accuracy"], r.number))

    @property
    def best(self) -> TrialRecord:
        return self.complete()[0]

    @property
    def second(self) -> TrialRecord:
        """A complete trial never finalized on the shared job."""
        return self.complete()[1]

    @property
    def infeasible(self) -> TrialRecord:
        return next(r for r in self.records if r.status == "infeasible")


@pytest.fixture(scope="session")
def service_job(tmp_path_factory: pytest.TempPathFactory) -> ServiceJob:
    root = tmp_path_factory.mktemp("export-job")
    settings = service_settings(root)
    worker = JobWorker(settings, worker_id="export-tests")
    try:
        with worker.sessions() as session:
            job, _ = crud.create_job(session, SearchJobSpec.model_validate(SPEC))
        assert worker.run_once() == job.id
        with worker.sessions() as session:
            assert crud.get_job(session, job.id).status == "succeeded"
    finally:
        worker.close()
    service = ServiceJob(root, settings, job.id, job.study_name)
    service.records = to_records(optuna.load_study(study_name=job.study_name, storage=service.url).trials)
    assert len(service.complete()) >= 3 and any(r.status == "infeasible" for r in service.records)
    return service


@pytest.fixture(scope="session")
def finalized(service_job: ServiceJob) -> FinalizedWeights:
    """The most accurate trial of the shared job, finalized once."""
    return finalize_trial(service_job.source(), service_job.best.number, epochs=FINALIZE_EPOCHS)


@pytest.fixture(scope="session")
def splits(service_job: ServiceJob) -> DatasetSplits:
    """The job's dataset, loaded here independently of the export code."""
    return load_dataset(SearchJobSpec.model_validate(SPEC).dataset_config())


@pytest.fixture
def job_copy(service_job: ServiceJob, tmp_path: Path) -> ServiceJob:
    """A private copy of the shared job (database and artifacts) for tests that write to it."""
    source = sqlite3.connect(service_job.root / "service.db")
    target = sqlite3.connect(tmp_path / "service.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    shutil.copytree(
        service_job.settings.resolved_artifact_dir(),
        tmp_path / "artifacts",
        ignore=shutil.ignore_patterns(EXPORTS_SUBDIR),
    )
    return ServiceJob(
        tmp_path, service_settings(tmp_path), service_job.job_id, service_job.study_name, service_job.records
    )
