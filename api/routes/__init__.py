"""The API's routers: ``api_router`` (under ``/api``, behind the token), ``health_router``
and ``dashboard_pages`` (the dashboard's page and Plotly, no token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import require_token
from api.routes import catalogue, dashboard, export, health, jobs

api_router = APIRouter(prefix="/api", dependencies=[Depends(require_token)])
api_router.include_router(jobs.router)
api_router.include_router(export.router)
api_router.include_router(catalogue.router)
api_router.include_router(dashboard.router)

health_router = health.router
dashboard_pages = dashboard.pages

__all__ = ["api_router", "dashboard_pages", "health_router"]
