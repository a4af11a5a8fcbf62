"""The state every request handler needs: the settings, the session factory, the clock and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from fastapi import Request
from sqlalchemy.orm import Session

from monitor.api.metrics import ApiMetrics
from monitor.settings import Settings
from storage.engine import SessionFactory


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ApiContext:
    """State shared by the handlers of one app, kept in `app.state.context`."""

    settings: Settings
    session_factory: SessionFactory
    clock: Callable[[], datetime]
    metrics: ApiMetrics


def get_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


def get_session(request: Request) -> Iterator[Session]:
    """Open one session per request; it is closed, and any open transaction rolled back, when the request ends."""
    with get_context(request).session_factory() as session:
        yield session
