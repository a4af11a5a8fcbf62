"""The FastAPI application: versioned data routes behind bearer tokens, and the open health and metrics routes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from monitor import __version__
from monitor.api.context import ApiContext, utc_now
from monitor.api.metrics import ApiMetrics, RequestMetricsMiddleware
from monitor.api.routes import exchanges, flags, health, overrides, users
from monitor.api.validation import validation_error_response
from monitor.settings import Settings
from storage.engine import SessionFactory
from storage.errors import DatabaseUnavailableError, StorageError

logger = logging.getLogger(__name__)

# Routes that respond without a token; every other route must require one (a test checks).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"})

DESCRIPTION = """\
Per-user refusal risk, flags and their review, exchange detail and the override audit
of Sentinel Monitor. Every `/v1` route needs `Authorization: Bearer TOKEN`; viewers
read scores and ids, reviewers also read raw text and review flags. docs/api.md has
examples.
"""


def create_app(
    settings: Settings, session_factory: SessionFactory, *, clock: Callable[[], datetime] | None = None
) -> FastAPI:
    """Build the app. `clock` returns the current time (UTC) and lets tests pin it."""
    metrics = ApiMetrics(session_factory)
    app = FastAPI(
        title="Sentinel Monitor API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.context = ApiContext(
        settings=settings, session_factory=session_factory, clock=clock or utc_now, metrics=metrics
    )

    # Each data router requires a token on every route (monitor.api.auth.data_router).
    for module in (health, users, flags, exchanges, overrides):
        app.include_router(module.router)

    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DatabaseUnavailableError):
        logger.warning("API request %s %s failed, the database is unavailable: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=503, content={"detail": f"the database is unavailable, retry later: {exc}"})
    logger.error("API request %s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return JSONResponse(status_code=500, content={"detail": "a database operation failed; the server log has the error"})
