"""The API's routers: ``api_router`` (under ``/api``, behind the token) and ``health_router``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import require_token
from api.routes import catalogue, export, health, jobs

api_router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])
api_router.include_router(jobs.router)
api_router.include_router(export.router)
api_router.include_router(catalogue.router)

health_router = health.router

__all__ = ["api_router", "health_router"]
