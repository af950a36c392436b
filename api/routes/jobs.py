"""Jobs: submit, list, read, cancel, resume, delete; a job's trials and Pareto front.

Every write goes through :mod:`api.crud`; the study is only read (:mod:`api.service`).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api import crud
from api.db.models import Job
from api.deps import JsonBody, SessionDep, SettingsDep, StudyReaderDep
from api.errors import JobNotFoundError
from api.handlers import validation_errors
from api.schemas import (
    ERROR_RESPONSES,
    EXAMPLE_JOB_SPEC,
    JobProgress,
    JobPublic,
    JobsPublic,
    JobStatus,
    ParetoPublic,
    TrialPublic,
    TrialsPublic,
    json_body_schema,
)
from api.service import TrialsPage
from hw_models import HardwareModelError
from search_spaces.errors import SearchSpaceError
from sparse_nas.errors import SparseNASError
from sparse_nas.spec import SearchJobSpec

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_SQL_INT = 2**31 - 1
"""Upper bound of offsets and trial numbers: beyond it a database integer overflows."""

_JOB_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def job_id_param(job_id: Annotated[str, Path(description="The job's id (from POST /api/jobs)")]) -> str:
    """The path's job id; one no job can have (say, with a NUL, which PostgreSQL refuses
    even to compare) is a 404 without asking the database."""
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFoundError(job_id)
    return job_id


JobId = Annotated[str, Depends(job_id_param)]


def job_public(job: Job) -> JobPublic:
    """The API's view of a service-table row."""
    n_trials = max(int(job.n_trials), 1)
    done = int(job.trials_done or 0)
    return JobPublic(
        id=job.id,
        name=job.name,
        status=job.status,  # type: ignore[arg-type]
        study_name=job.study_name,
        idempotency_key=job.idempotency_key,
        progress=JobProgress(trials_done=done, n_trials=int(job.n_trials), fraction=min(done / n_trials, 1.0)),
        best_accuracy=job.best_accuracy,
        error=job.error,
        worker_id=job.worker_id,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        spec=job.spec,
    )


def validate_spec(body: Any) -> SearchJobSpec:
    """The submitted spec, validated by the engine; every problem a 422 naming its field."""
    try:
        return SearchJobSpec.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(validation_errors(exc.errors(), prefix=("body",))) from None
    except (
        SparseNASError,
        HardwareModelError,
        SearchSpaceError,
        ValueError,
        TypeError,
        LookupError,
        ArithmeticError,
    ) as exc:
        # The spec's validators turn what they foresee into located errors; anything
        # else is still the input's fault, so it is a 422 too (logged: a validation gap).
        logger.warning("job spec validation raised %s instead of a ValidationError", type(exc).__name__, exc_info=exc)
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"invalid job spec: {exc}", "type": "value_error"}]
        ) from None
    except RecursionError:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "invalid job spec: nested too deeply", "type": "value_error"}]
        ) from None


def check_storable(spec: SearchJobSpec) -> None:
    """What the spec allows but the jobs table cannot hold: a 422 naming the field."""
    problems = []
    if spec.n_trials > MAX_SQL_INT:
        problems.append(
            {"loc": ("body", "n_trials"), "msg": f"must be at most {MAX_SQL_INT}", "type": "less_than_equal"}
        )
    if spec.name is not None and "\x00" in spec.name:
        problems.append({"loc": ("body", "name"), "msg": "must not contain NUL characters", "type": "string_nul"})
    if problems:
        raise RequestValidationError(problems)


def _stored_spec(request: Request, spec: SearchJobSpec) -> SearchJobSpec:
    """The spec to store: a device registered through this API is written out in full, so
    the job still runs after a restart and on a worker in another process."""
    custom = request.app.state.custom_devices
    if isinstance(spec.device, str) and spec.device in custom:
        return spec.model_copy(update={"device": custom[spec.device].to_dict()})
    return spec


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Submit a search job",
    responses={
        200: {"model": JobPublic, "description": "The job this Idempotency-Key already submitted"},
        **ERROR_RESPONSES,
    },
    openapi_extra=json_body_schema(
        "SearchJobSpec",
        {"digits": {"summary": "A tiny job on the bundled digits set", "value": EXAMPLE_JOB_SPEC}},
        "A job spec (docs/job_spec.md); validated completely before the job is queued",
    ),
)
def submit_job(
    body: JsonBody,
    request: Request,
    response: Response,
    session: SessionDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="Retries with the same key return the same job (200) instead of a new one",
        ),
    ] = None,
) -> JobPublic:
    """Validate the spec and queue the job (201). With an ``Idempotency-Key`` that was used
    before for the same spec, return that job (200); for another spec, 409."""
    spec = validate_spec(body)
    check_storable(spec)
    job, created = crud.create_job(session, _stored_spec(request, spec), idempotency_key=idempotency_key)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return job_public(job)


@router.get("", summary="List jobs", responses=ERROR_RESPONSES)
def list_jobs(
    session: SessionDep,
    status_: Annotated[JobStatus | None, Query(alias="status", description="Only jobs with this status")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_SQL_INT, description="Jobs to skip")] = 0,
) -> JobsPublic:
    """Jobs newest first, a page at a time, with the total matching the filter."""
    jobs, total = crud.list_jobs(session, status=status_, limit=limit, offset=offset)
    return JobsPublic(items=[job_public(j) for j in jobs], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", summary="Read a job", responses=ERROR_RESPONSES)
def get_job(job_id: JobId, session: SessionDep) -> JobPublic:
    """Status, progress, best accuracy, error and timestamps of one job."""
    return job_public(crud.get_job(session, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a job", responses=ERROR_RESPONSES)
def cancel_job(job_id: JobId, session: SessionDep) -> JobPublic:
    """A queued job is cancelled at once; a running one becomes ``cancelling`` until its
    trials in flight end. 409 for a finished job."""
    return job_public(crud.request_cancel(session, job_id))


@router.post("/{job_id}/resume", summary="Resume a job", responses=ERROR_RESPONSES)
def resume_job(job_id: JobId, session: SessionDep) -> JobPublic:
    """Queue a cancelled or failed job again; it keeps its finished trials. 409 otherwise."""
    return job_public(crud.request_resume(session, job_id))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a job",
    responses=ERROR_RESPONSES,
)
def delete_job(job_id: JobId, session: SessionDep, settings: SettingsDep, reader: StudyReaderDep) -> Response:
    """Delete a job that is not running, with its study. 409 while it runs (cancel it first)."""
    study_name = crud.get_job(session, job_id).study_name
    crud.delete_job(session, job_id, storage_url=settings.resolved_database_url())
    reader.forget(study_name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/trials", summary="List a job's trials", responses=ERROR_RESPONSES)
def list_trials(
    job_id: JobId,
    session: SessionDep,
    reader: StudyReaderDep,
    after: Annotated[
        int, Query(ge=-1, le=MAX_SQL_INT, description="Only trials numbered above this (the previous next_after)")
    ] = -1,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size")] = 100,
) -> TrialsPublic:
    """Trials in number order, for incremental polling: pass ``next_after`` back as ``after``.

    Trials are read at most a quarter second before the request, and never before the
    job's last update: once a job reads as finished, its trials are all here."""
    job = crud.get_job(session, job_id)
    page: TrialsPage = reader.trials_page(
        job.study_name, after=after, limit=limit, not_before=job.updated_at.timestamp()
    )
    return TrialsPublic(
        items=[TrialPublic.model_validate(item) for item in page.items],
        next_after=page.next_after,
        has_more=page.has_more,
        limit=limit,
    )


@router.get("/{job_id}/trials/{number}", summary="Read one trial", responses=ERROR_RESPONSES)
def get_trial(
    job_id: JobId,
    number: Annotated[int, Path(ge=0, le=MAX_SQL_INT, description="The trial's number in the job")],
    session: SessionDep,
    reader: StudyReaderDep,
) -> TrialPublic:
    """One trial: parameters, status, costs, constraints, measured accuracy."""
    job = crud.get_job(session, job_id)
    trial = reader.trial(job.study_name, number, not_before=job.updated_at.timestamp())
    if trial is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id!r} has no trial {number}")
    return TrialPublic.model_validate(trial)


@router.get("/{job_id}/pareto", summary="A job's Pareto front", responses=ERROR_RESPONSES)
def get_pareto(job_id: JobId, session: SessionDep, reader: StudyReaderDep) -> ParetoPublic:
    """The front of complete, feasible trials, its hypervolume (and history) against the
    reference point, and the best trial per budget."""
    job = crud.get_job(session, job_id)
    return ParetoPublic.model_validate(reader.results(job.study_name, job.spec))
