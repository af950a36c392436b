"""Export a job's trained trial (a zipped bundle per format) and finalize a trial.

``GET /api/jobs/{job_id}/trials/{number}/export?format=F[&weights=W]`` answers a zip:
the format's model files plus ``manifest.json`` (docs/export.md). ``POST
.../finalize[?epochs=E]`` retrains the trial's point on train + validation and stores
the weights; later exports use them. Bundles are written by :mod:`sparse_nas.export`
under ``<artifact_dir>/exports`` at generated paths, and kept for the next request.

Errors: unknown job or trial 404; a format or weights outside the valid values 422
(naming them); a trial without trained weights (infeasible, failed, running, or not
finalized when ``weights=finalized``) 409 saying why; finalize on a job that is not
finished 409 (its driver still writes the study), and while another finalize runs in
this process 409.
"""

from __future__ import annotations

import threading
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status
from fastapi.responses import FileResponse, JSONResponse

from api import crud
from api.db import FINISHED_STATUSES, Job
from api.deps import SessionDep, SettingsDep
from api.errors import InvalidTransitionError
from api.handlers import error_item, error_response
from api.routes.jobs import MAX_SQL_INT, JobId
from api.schemas import ERROR_RESPONSES, FinalizePublic
from api.service import parse_spec
from api.settings import Settings
from sparse_nas.datasets import DatasetError
from sparse_nas.export import (
    EXPORTS_SUBDIR,
    ExportError,
    ExportPathError,
    FinalizeError,
    NoTrainedWeightsError,
    TrialNotFoundError,
    TrialSource,
    UnknownExportFormatError,
    export_trial,
    finalize_trial,
)
from sparse_nas.export.finalize import MAX_FINALIZE_EPOCHS

router = APIRouter(prefix="/jobs", tags=["export"])

ExportFormatName = Literal["pytorch", "onnx", "onnx-int8", "tflite"]
"""The export formats (``sparse_nas.export.format_names()``; a test keeps the two equal)."""
WeightsName = Literal["auto", "search", "finalized"]

TrialNumber = Annotated[int, Path(ge=0, le=MAX_SQL_INT, description="The trial's number in the job")]

_finalizing = threading.Lock()
"""One finalize at a time per process: it trains on the API's CPUs."""


def export_dir(settings: Settings) -> FilePath:
    """Where the service keeps bundles: ``<artifact_dir>/exports``."""
    return settings.resolved_artifact_dir() / EXPORTS_SUBDIR


def _source(job: Job, settings: Settings) -> TrialSource:
    return TrialSource(
        storage_url=settings.resolved_database_url(),
        study_name=job.study_name,
        artifact_dir=settings.resolved_artifact_dir(),
        data_dir=settings.data_dir,
        spec=parse_spec(job.spec),
    )


def _export_error(exc: Exception) -> JSONResponse:
    """The JSON error of an export or finalize failure (see the module docstring for the statuses)."""
    message = str(exc)
    if isinstance(exc, TrialNotFoundError):
        code, loc, kind = status.HTTP_404_NOT_FOUND, ("path", "number"), "trial_not_found"
    elif isinstance(exc, NoTrainedWeightsError):
        code, loc, kind = status.HTTP_409_CONFLICT, ("path", "number"), "no_trained_weights"
    elif isinstance(exc, UnknownExportFormatError):
        code, loc, kind = status.HTTP_422_UNPROCESSABLE_CONTENT, ("query", "format"), "unknown_format"
    elif isinstance(exc, ExportPathError):
        code, loc, kind = status.HTTP_422_UNPROCESSABLE_CONTENT, ("path",), "export_path"
    elif isinstance(exc, FinalizeError):
        code, loc, kind = status.HTTP_409_CONFLICT, ("path", "number"), "finalize_failed"
    elif isinstance(exc, DatasetError):
        message = f"the job's dataset cannot be read by the service: {exc}"
        code, loc, kind = status.HTTP_409_CONFLICT, ("path", "job_id"), "dataset_unavailable"
    else:
        code, loc, kind = status.HTTP_409_CONFLICT, ("path", "job_id"), "export_failed"
    return error_response(code, message, [error_item(loc, message, kind)])


@router.get(
    "/{job_id}/trials/{number}/export",
    summary="Export a trained trial",
    response_class=FileResponse,
    response_model=None,
    responses={
        200: {
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            "description": "A zip: the format's model files and manifest.json",
        },
        **ERROR_RESPONSES,
    },
)
def export_trial_bundle(
    job_id: JobId,
    number: TrialNumber,
    session: SessionDep,
    settings: SettingsDep,
    format_: Annotated[
        ExportFormatName,
        Query(
            alias="format",
            description=(
                "pytorch (state_dict + architecture JSON), onnx (float), onnx-int8 (QDQ, static) "
                "or tflite (int8 flatbuffer + C array for TFLite Micro)"
            ),
        ),
    ],
    weights: Annotated[
        WeightsName,
        Query(description="auto: the finalized weights when the trial has them, else the search's"),
    ] = "auto",
) -> FileResponse | JSONResponse:
    """A zipped bundle of a trained trial: model files plus ``manifest.json`` (dataset, labels,
    input normalisation, per-layer compression, accuracy, predicted costs on the job's device).
    The exported model's test accuracy is checked against the PyTorch model's (``manifest.check``)."""
    job = crud.get_job(session, job_id)
    try:
        result = export_trial(
            _source(job, settings),
            number,
            format_,
            export_dir=export_dir(settings),
            weights=weights,
            job_id=job.id,
        )
    except (ExportError, DatasetError) as exc:
        return _export_error(exc)
    return FileResponse(
        result.path,
        media_type="application/zip",
        filename=f"{job.id}-trial-{number}-{result.manifest['weights']['kind']}-{format_}.zip",
    )


@router.post(
    "/{job_id}/trials/{number}/finalize",
    summary="Finalize a trial",
    response_model=FinalizePublic,
    responses=ERROR_RESPONSES,
)
def finalize_trial_weights(
    job_id: JobId,
    number: TrialNumber,
    session: SessionDep,
    settings: SettingsDep,
    epochs: Annotated[
        int | None,
        Query(ge=1, le=MAX_FINALIZE_EPOCHS, description="Training epochs; default twice the job's"),
    ] = None,
) -> FinalizePublic | JSONResponse:
    """Retrain the trial's point on train + validation for more epochs, measure it on test and
    store the weights (exports then use them). Runs in the request: seconds for small jobs.
    409 unless the job is finished (its search driver must not be writing the study)."""
    job = crud.get_job(session, job_id)
    if job.status not in FINISHED_STATUSES:
        raise InvalidTransitionError(job.id, job.status, "finalize", FINISHED_STATUSES)
    if not _finalizing.acquire(blocking=False):
        message = "another finalize is running in this service; try again when it has finished"
        return error_response(status.HTTP_409_CONFLICT, message, [error_item(("path", "number"), message, "busy")])
    try:
        source = _source(job, settings)
        finalized = finalize_trial(source, number, epochs=epochs)
    except (ExportError, DatasetError) as exc:
        return _export_error(exc)
    finally:
        _finalizing.release()
    return FinalizePublic(
        job_id=job.id,
        number=number,
        artifact_id=finalized.artifact_id,
        test_accuracy=finalized.test_accuracy,
        epochs=finalized.epochs,
        train_samples=finalized.train_samples,
        train_seconds=finalized.train_seconds,
    )
