"""Liveness and readiness probes; open even when the API needs a token."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.handlers import error_response
from api.schemas import ErrorPublic, HealthPublic

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> HealthPublic:
    """The process is up and answering."""
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    response_model=HealthPublic,
    summary="Readiness",
    responses={503: {"model": ErrorPublic, "description": "The database cannot be reached"}},
)
def readyz(request: Request) -> HealthPublic | JSONResponse:
    """The database answers a query (503 when it does not)."""
    try:
        with request.app.state.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready", whatever its kind
        logger.warning("readiness check failed: %s: %s", type(exc).__name__, exc)
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, f"database unreachable: {type(exc).__name__}")
    return HealthPublic(status="ready")
