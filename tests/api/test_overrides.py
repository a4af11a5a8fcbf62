"""The override audit route."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.api.conftest import VIEWER_TOKEN, auth, seed
from tests.storage.factories import scored_exchange


@pytest.mark.postgres
def test_audit_lists_override_exchanges_without_text(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed(session_factory, [scored_exchange(user_id="red-team", override=True, exchange_id="ex-override")])
    seed(session_factory, [scored_exchange(user_id="someone", exchange_id="ex-plain")])
    response = client.get("/v1/overrides/audit", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["override_exchange_count"] == 1
    assert [item["id"] for item in body["exchanges"]] == ["ex-override"]
    assert body["exchanges"][0]["override_reason"] == "red team"
    assert [user["user_id"] for user in body["users"]] == ["red-team"]
    assert "pick a lock" not in response.text


@pytest.mark.postgres
@pytest.mark.parametrize(
    "query",
    ["since=2025-06-01T12:00:00", "since=2025-06-01T12:00:00Z&until=2025-06-01T11:00:00Z", "limit=0", "since=yesterday"],
)
def test_audit_rejects_invalid_query(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/overrides/audit?{query}", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 422, response.text
