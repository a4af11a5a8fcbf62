"""Bearer-token authentication and roles, checked on every route the app has."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from monitor.api.app import PUBLIC_PATHS, create_app
from monitor.api.auth import find_principal, token_digest
from monitor.settings import ApiSettings, ApiToken, Settings
from storage.flags import FlagFinding, list_flag_events, list_flags, upsert_flags
from storage.engine import transaction
from tests.api.conftest import REVIEWER_TOKEN, TOKENS, VIEWER_TOKEN, api_routes, auth
from tests.storage.factories import NOW

PATH_VALUES = {"user_id": "user-1", "flag_id": "1", "exchange_id": "ex-1"}


def data_requests(app: FastAPI) -> list[tuple[str, str]]:
    """Return (method, concrete path) for every route that is not public, so a new route is covered."""
    requests = []
    for route in api_routes(app):
        if route.path in PUBLIC_PATHS:
            continue
        path = re.sub(r"\{(\w+)(?::\w+)?\}", lambda match: PATH_VALUES[match.group(1)], route.path)
        requests += [(method, path) for method in sorted(route.methods)]
    return requests


def open_flag(session_factory: sessionmaker[Session]) -> int:
    finding = FlagFinding(user_id="user-1", slip_through_count=3, max_prob=0.6, evidence={"exchange_ids": ["ex-1"]})
    with transaction(session_factory, "seed a flag") as session:
        upsert_flags(session, [finding], rule="slips", window_s=3600, now=NOW)
        return list_flags(session)[0].id


@pytest.mark.postgres
def test_data_routes_cover_every_resource(app: FastAPI) -> None:
    paths = {path for _, path in data_requests(app)}
    assert "/v1/users/user-1/risk" in paths
    assert "/v1/flags/1/review" in paths
    assert "/v1/overrides/audit" in paths
    assert len(paths) >= 8


@pytest.mark.postgres
def test_every_data_route_rejects_missing_token(app: FastAPI, client: TestClient) -> None:
    for method, path in data_requests(app):
        response = client.request(method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
        assert "Authorization: Bearer" in response.json()["detail"], (method, path)


@pytest.mark.postgres
def test_every_data_route_rejects_unknown_token(app: FastAPI, client: TestClient) -> None:
    for method, path in data_requests(app):
        response = client.request(method, path, headers=auth("not-a-configured-token"))
        assert response.status_code == 401, (method, path, response.text)
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], (method, path)


@pytest.mark.postgres
def test_non_bearer_scheme_is_rejected(client: TestClient) -> None:
    response = client.get("/v1/flags", headers={"Authorization": f"Basic {VIEWER_TOKEN}"})
    assert response.status_code == 401


@pytest.mark.postgres
def test_without_tokens_data_routes_explain_how_to_add_one(
    api_settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    settings = Settings(database=api_settings.database, scoring=api_settings.scoring, api=ApiSettings())
    app = create_app(settings, session_factory, clock=lambda: NOW)
    with TestClient(app) as client:
        for method, path in data_requests(app):
            response = client.request(method, path, headers=auth(VIEWER_TOKEN))
            assert response.status_code == 401, (method, path)
            assert "sentinel-monitor api token" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200


@pytest.mark.postgres
def test_viewer_cannot_review_a_flag(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    flag_id = open_flag(session_factory)
    with session_factory() as session:
        events_before = len(list_flag_events(session, flag_id))
    response = client.post(f"/v1/flags/{flag_id}/review", json={"status": "resolved"}, headers=auth(VIEWER_TOKEN))
    assert response.status_code == 403
    assert "reviewer" in response.json()["detail"]
    with session_factory() as session:
        assert list_flags(session)[0].status == "open"
        assert len(list_flag_events(session, flag_id)) == events_before


@pytest.mark.postgres
def test_reviewer_can_read_every_viewer_route(client: TestClient) -> None:
    response = client.get("/v1/flags", headers=auth(REVIEWER_TOKEN))
    assert response.status_code == 200


def test_find_principal_matches_digest() -> None:
    principal = find_principal(TOKENS, REVIEWER_TOKEN)
    assert principal is not None
    assert principal.name == "rita"
    assert principal.is_reviewer


def test_find_principal_accepts_uppercase_digest() -> None:
    tokens = [ApiToken(name="ops", role="viewer", sha256=token_digest("secret").upper())]
    principal = find_principal(tokens, "secret")
    assert principal is not None
    assert principal.role == "viewer"


def test_find_principal_rejects_unknown_token() -> None:
    assert find_principal(TOKENS, "guess") is None
    assert find_principal(TOKENS, "") is None
