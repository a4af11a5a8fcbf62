"""Liveness, readiness and Prometheus metrics: the endpoints that need no token."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from monitor.api.context import ApiContext, get_context
from monitor.api.schemas import Health, Readiness
from storage.errors import StorageError
from storage.migrate import current_revision, head_revision

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="PostgreSQL is reachable and its schema is at the revision this version ships",
    responses={503: {"model": Readiness, "description": "Not ready; `reason` says why."}},
)
def readyz(context: Annotated[ApiContext, Depends(get_context)]) -> Readiness | JSONResponse:
    head: str | None = None
    try:
        head = head_revision()
        current = current_revision(context.settings.database)
    except StorageError as exc:
        logger.warning("readiness check failed: %s", exc)
        return _unavailable(None, head, str(exc))
    if current != head:
        reason = f"the database schema is at revision {current or 'none'}, expected {head}; run `sentinel-monitor db upgrade`"
        return _unavailable(current, head, reason)
    return Readiness(status="ready", schema_revision=current, head_revision=head, reason=None)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics in the text exposition format",
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(context: Annotated[ApiContext, Depends(get_context)]) -> Response:
    body, content_type = context.metrics.render()
    return Response(content=body, media_type=content_type)


def _unavailable(current: str | None, head: str | None, reason: str) -> JSONResponse:
    body = Readiness(status="unavailable", schema_revision=current, head_revision=head, reason=reason)
    return JSONResponse(status_code=503, content=body.model_dump(mode="json"))
