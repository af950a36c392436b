"""The FastAPI application: :func:`create_app`.

``create_app(settings)`` builds the app from explicit settings (tests pass their own;
``None`` reads the environment once). At start-up (the lifespan) it migrates the
service tables, opens the database and the study reader; at shutdown it closes them.
It refuses to build an app that would listen beyond loopback without a token.

Run it with ``sparse-nas serve`` (API plus one in-process job worker) or, API only,
``uvicorn --factory api.app:create_app``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.db.migrate import upgrade
from api.db.session import make_engine, make_session_factory
from api.errors import ServiceError
from api.handlers import error_item, error_response, install_exception_handlers
from api.routes import api_router, dashboard_pages, health_router
from api.routes.catalogue import unregister_devices
from api.routes.dashboard import STATIC_DIR
from api.schemas import DeviceCreate
from api.service import StudyReader
from api.settings import Settings, get_settings
from sparse_nas.spec import SearchJobSpec

BODY_MODELS: dict[str, type[BaseModel]] = {"SearchJobSpec": SearchJobSpec, "DeviceCreate": DeviceCreate}
"""Bodies the routes read raw and validate with the engine; their schemas are added to OpenAPI."""

DESCRIPTION = """\
Hardware-aware neural architecture search for microcontrollers.

Submit a search job (`POST /api/jobs`), follow its trials (`GET /api/jobs/{id}/trials?after=N`)
and read its Pareto front (`GET /api/jobs/{id}/pareto`). Errors are JSON
`{"detail": ..., "errors": [{"loc": [...], "msg": ..., "type": ...}]}`, each entry naming its field.
When the service has a token (setting `SPARSE_NAS_API_TOKEN`), every `/api` route needs
`Authorization: Bearer <token>`; `/healthz` and `/readyz` are open.
"""


class InsecureBindError(ServiceError, ValueError):
    """The settings would expose the API beyond loopback without a token."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse a host beyond loopback without a token.

    Raises:
        InsecureBindError: ``host`` is not loopback and ``api_token`` is unset or empty.
    """
    if not settings.api_token and not is_loopback(settings.host):
        raise InsecureBindError(
            f"refusing to serve the API on host {settings.host!r} without a token: any address but loopback "
            "(127.0.0.0/8, ::1, localhost) needs SPARSE_NAS_API_TOKEN (clients send 'Authorization: Bearer <token>')"
        )


class BodySizeLimitMiddleware:
    """413 for a request body over ``max_body_bytes``, by its Content-Length or as it streams.

    The body is read here in full (it is small by then) and replayed to the app, so a
    client that sends more than it announced, or no length at all, is stopped too.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        msg = f"the request body is larger than {self.max_body_bytes} bytes (setting max_body_bytes)"
        response = error_response(413, msg, [error_item(("body",), msg, "body_too_large")])
        await response(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = app.state.database_url
    await run_in_threadpool(upgrade, url)
    engine = make_engine(url)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.study_reader = StudyReader(url)
    await run_in_threadpool(app.state.study_reader.open)
    try:
        yield
    finally:
        app.state.study_reader.close()
        engine.dispose()
        unregister_devices(app.state.custom_devices)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the engine-validated body models."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = FastAPI.openapi(app)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in BODY_MODELS.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in body.pop("$defs", {}).items():
            components.setdefault(def_name, definition)
        components[name] = body
    app.openapi_schema = schema
    return schema


def _package_version() -> str:
    try:
        return version("sparse-nas")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The REST API for ``settings`` (``None``: the environment's, read once).

    Raises:
        InsecureBindError: The host is not loopback and no token is set.
    """
    settings = settings if settings is not None else get_settings()
    check_bind(settings)
    app = FastAPI(
        title="sparse-nas",
        version=_package_version(),
        description=DESCRIPTION,
        lifespan=_lifespan,
        openapi_tags=[
            {"name": "jobs", "description": "Search jobs, their trials and Pareto fronts"},
            {"name": "catalogue", "description": "Devices, search spaces and datasets a job refers to"},
            {"name": "health", "description": "Probes (no token needed)"},
        ],
    )
    app.state.settings = settings
    app.state.database_url = settings.resolved_database_url()
    app.state.custom_devices = {}
    install_exception_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.include_router(health_router)
    app.include_router(api_router)

    # The dashboard: its page at "/", its files under /static; no token (they hold no data).
    app.include_router(dashboard_pages)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
