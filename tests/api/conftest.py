"""Fixtures of the API tests: settings with one viewer and one reviewer token, an app pinned to NOW, and clients."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from monitor.api.app import create_app
from monitor.api.auth import token_digest
from monitor.policy import ScoredExchange
from monitor.settings import ApiSettings, ApiToken, DatabaseSettings, Settings, load_settings
from storage.engine import transaction
from storage.exchanges import ExchangeRepository
from tests.conftest_db import database_engine, database_settings, session_factory
from tests.storage.factories import NOW, SENTINELS

__all__ = ["database_engine", "database_settings", "session_factory"]

VIEWER_TOKEN = "viewer-token-for-tests"
REVIEWER_TOKEN = "reviewer-token-for-tests"
TOKENS = (
    ApiToken(name="vera", role="viewer", sha256=token_digest(VIEWER_TOKEN)),
    ApiToken(name="rita", role="reviewer", sha256=token_digest(REVIEWER_TOKEN)),
)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def settings_environment(database: DatabaseSettings) -> dict[str, str]:
    """The environment that gives the CLI and the app the same settings."""
    return {
        "SENTINEL_DATABASE__URL": database.url,
        "SENTINEL_DATABASE__POOL_SIZE": "2",
        "SENTINEL_SCORING__SENTINELS": json.dumps(
            [{"name": s.name, "text": s.text, "threshold": s.threshold} for s in SENTINELS]
        ),
        "SENTINEL_API__TOKENS": json.dumps([{"name": t.name, "role": t.role, "sha256": t.sha256} for t in TOKENS]),
    }


@pytest.fixture
def api_settings(database_settings: DatabaseSettings) -> Settings:
    settings = load_settings(environ=settings_environment(database_settings))
    assert settings.api == ApiSettings(tokens=TOKENS)
    return settings


@pytest.fixture
def app(api_settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    return create_app(api_settings, session_factory, clock=lambda: NOW)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def seed(session_factory: sessionmaker[Session], items: Sequence[ScoredExchange], *, store_raw_text: bool = True) -> None:
    repository = ExchangeRepository(sentinels=SENTINELS, store_raw_text=store_raw_text)
    with transaction(session_factory, "seed exchanges") as session:
        repository.save_batch(session, items)


def api_routes(app: FastAPI) -> list[APIRoute]:
    """Return every APIRoute of the app, descending into included routers.

    FastAPI 0.165 keeps an included router as one entry whose `original_router`
    contains the routes; older versions copy the routes into `app.routes`.
    """
    found: list[APIRoute] = []
    pending: list[Any] = list(app.routes)
    while pending:
        route = pending.pop(0)
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            pending.extend(route.original_router.routes)
    return found
