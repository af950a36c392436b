"""Exception handlers: every error leaves the API as JSON ``{"detail": ..., "errors": [...]}``.

``errors`` has one entry per problem, ``{"loc": [...], "msg": ..., "type": ...}``, its
``loc`` starting with where the problem is (``body``, ``query``, ``path``, ``header``).
Service errors map to statuses here and nowhere else: unknown job 404, disallowed
transition or reused idempotency key 409, bad input 422. Anything unexpected is logged
with its traceback and answered with a JSON 500 that reveals nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import (
    IdempotencyConflictError,
    InvalidQueryError,
    InvalidTransitionError,
    JobNotFoundError,
    ServiceError,
)

logger = logging.getLogger(__name__)


def error_item(loc: Sequence[str | int], msg: str, type_: str) -> dict[str, Any]:
    """One entry of ``errors``."""
    return {"loc": [part if isinstance(part, int) else str(part) for part in loc], "msg": msg, "type": type_}


def error_response(
    status_code: int,
    detail: str,
    errors: Iterable[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body every failing request gets."""
    return JSONResponse(
        status_code=status_code,
        content={"detail": detail, "errors": [dict(e) for e in errors]},
        headers=dict(headers) if headers else None,
    )


def validation_errors(errors: Iterable[Mapping[str, Any]], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Pydantic error dicts reduced to ``loc``/``msg``/``type`` (their ``input`` and ``ctx``
    may hold anything, including values JSON cannot carry), ``loc`` prefixed."""
    return [
        error_item((*prefix, *error.get("loc", ())), str(error.get("msg", "")), str(error.get("type", "value_error")))
        for error in errors
    ]


async def _request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
    items = validation_errors(exc.errors())
    summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in items[:3])
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid request: {summary}", items)


async def _http_exception(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


async def _job_not_found(_request: Request, exc: JobNotFoundError) -> JSONResponse:
    return error_response(
        status.HTTP_404_NOT_FOUND, str(exc), [error_item(("path", "job_id"), str(exc), "job_not_found")]
    )


async def _invalid_transition(_request: Request, exc: InvalidTransitionError) -> JSONResponse:
    return error_response(
        status.HTTP_409_CONFLICT, str(exc), [error_item(("path", "job_id"), str(exc), "invalid_transition")]
    )


async def _idempotency_conflict(_request: Request, exc: IdempotencyConflictError) -> JSONResponse:
    return error_response(
        status.HTTP_409_CONFLICT,
        str(exc),
        [error_item(("header", "Idempotency-Key"), str(exc), "idempotency_conflict")],
    )


async def _invalid_query(_request: Request, exc: InvalidQueryError) -> JSONResponse:
    return error_response(
        status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc), [error_item(("query",), str(exc), "invalid_query")]
    )


async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(status.HTTP_400_BAD_REQUEST, str(exc))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error; the service log has the details"
    )


def install_exception_handlers(app: FastAPI) -> None:
    """Register every handler of this module on ``app``."""
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(JobNotFoundError, _job_not_found)
    app.add_exception_handler(InvalidTransitionError, _invalid_transition)
    app.add_exception_handler(IdempotencyConflictError, _idempotency_conflict)
    app.add_exception_handler(InvalidQueryError, _invalid_query)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(Exception, _unexpected)
