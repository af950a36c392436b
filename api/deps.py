"""Typed dependencies of the routes: the app's settings, a database session, the bearer token."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.service import StudyReader
from api.settings import Settings

# The light dependencies are coroutines: FastAPI runs a plain function dependency in the
# thread pool, and a hop there per dependency costs more than the dependency itself.


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (never the environment: tests pass their own)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, closed afterwards; writes commit inside ``api.crud``.

    Opening a session touches no connection (the route's thread does that); closing it
    returns the connection to the pool.
    """
    with request.app.state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def get_study_reader(request: Request) -> StudyReader:
    """The app's read-only view of the Optuna studies (one storage, cached trials)."""
    return request.app.state.study_reader


StudyReaderDep = Annotated[StudyReader, Depends(get_study_reader)]

_bearer = HTTPBearer(auto_error=False, description="The service's API token (setting SPARSE_NAS_API_TOKEN)")


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request (401) unless it carries ``Authorization: Bearer <api_token>``.

    No-op when the settings have no (or an empty) token, allowed only on a loopback host. The
    comparison takes constant time, so response timing does not leak the token.
    """
    expected = settings.api_token
    if not expected:
        return
    given = credentials.credentials if credentials is not None else ""
    if credentials is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token (Authorization: Bearer <SPARSE_NAS_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _no_json_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def read_json_body(request: Request) -> Any:
    """The request body parsed as JSON (422 with ``loc: ["body"]`` when missing or malformed).

    Routes whose body the engine validates (a job spec, a device file) take it raw and
    validate it themselves, off the event loop and with the engine's field-naming errors.
    """
    raw = await request.body()
    if not raw.strip():
        raise RequestValidationError([{"loc": ("body",), "msg": "a JSON body is required", "type": "missing"}])
    try:
        return json.loads(raw, parse_constant=_no_json_constants)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: absurd nesting.
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]
        ) from None


JsonBody = Annotated[Any, Depends(read_json_body)]
