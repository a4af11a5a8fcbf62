"""Flag routes: filters, one flag with its events, and the review action."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from storage.engine import transaction
from storage.flags import FlagFinding, list_flag_events, upsert_flags
from storage.models import FlagRecord
from tests.api.conftest import REVIEWER_TOKEN, VIEWER_TOKEN, auth
from tests.storage.factories import NOW


def seed_flags(session_factory: sessionmaker[Session]) -> dict[str, int]:
    """Create flags for users a, b (rule slips) and c (rule risk), then vary their status, severity and firing."""
    findings = [
        FlagFinding(user_id=user, slip_through_count=3, max_prob=0.5, evidence={"exchange_ids": [f"ex-{user}"]})
        for user in ("a", "b")
    ]
    risk_finding = FlagFinding(user_id="c", slip_through_count=5, max_prob=0.9, evidence={"exchange_ids": ["ex-c"]})
    with transaction(session_factory, "seed flags") as session:
        upsert_flags(session, findings, rule="slips", window_s=3600, now=NOW - timedelta(minutes=2))
        upsert_flags(session, [risk_finding], rule="risk", window_s=86400, now=NOW - timedelta(minutes=1))
        session.execute(update(FlagRecord).where(FlagRecord.user_id == "b").values(status="acknowledged", firing=False))
        session.execute(update(FlagRecord).where(FlagRecord.user_id == "c").values(severity="critical"))
    with session_factory() as session:
        return {flag.user_id: flag.id for flag in session.query(FlagRecord)}


def listed(client: TestClient, query: str) -> list[str]:
    response = client.get(f"/v1/flags?{query}", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    return [flag["user_id"] for flag in response.json()["flags"]]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("query", "users"),
    [
        ("", ["c", "b", "a"]),
        ("status=acknowledged", ["b"]),
        ("status=open", ["c", "a"]),
        ("rule=slips", ["b", "a"]),
        ("user_id=a", ["a"]),
        ("severity=critical", ["c"]),
        ("firing=false", ["b"]),
        ("firing=true&rule=slips", ["a"]),
        ("limit=1", ["c"]),
        ("status=resolved", []),
    ],
)
def test_flag_filters(client: TestClient, session_factory: sessionmaker[Session], query: str, users: list[str]) -> None:
    seed_flags(session_factory)
    assert sorted(listed(client, query)) == sorted(users)
    if query in ("", "limit=1"):
        assert listed(client, query) == users


@pytest.mark.postgres
@pytest.mark.parametrize("query", ["status=closed", "severity=urgent", "firing=maybe", "limit=0"])
def test_flag_filters_reject_invalid_values(client: TestClient, query: str) -> None:
    assert client.get(f"/v1/flags?{query}", headers=auth(VIEWER_TOKEN)).status_code == 422


@pytest.mark.postgres
def test_flag_detail_has_events(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    ids = seed_flags(session_factory)
    response = client.get(f"/v1/flags/{ids['a']}", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "a"
    assert body["evidence"]["exchange_ids"] == ["ex-a"]
    assert isinstance(body["events"], list)


@pytest.mark.postgres
def test_unknown_flag_is_404(client: TestClient) -> None:
    assert client.get("/v1/flags/999", headers=auth(VIEWER_TOKEN)).status_code == 404
    review = client.post("/v1/flags/999/review", json={"status": "resolved"}, headers=auth(REVIEWER_TOKEN))
    assert review.status_code == 404
    assert review.json()["detail"] == "flag 999 not found"


@pytest.mark.postgres
def test_non_numeric_flag_id_is_422(client: TestClient) -> None:
    assert client.get("/v1/flags/abc", headers=auth(VIEWER_TOKEN)).status_code == 422


@pytest.mark.postgres
def test_review_sets_status_and_records_event(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    ids = seed_flags(session_factory)
    response = client.post(
        f"/v1/flags/{ids['a']}/review",
        json={"status": "false_positive", "note": "benign security research"},
        headers=auth(REVIEWER_TOKEN),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "false_positive"
    assert body["reviewed_by"] == "rita"
    assert body["review_note"] == "benign security research"
    assert body["reviewed_at"] == "2025-06-01T12:00:00Z"
    last = body["events"][-1]
    assert (last["kind"], last["actor"], last["note"]) == ("false_positive", "rita", "benign security research")

    with session_factory() as session:
        stored = list_flag_events(session, ids["a"])
        assert stored[-1].actor == "rita"
        assert session.get(FlagRecord, ids["a"]).status == "false_positive"  # type: ignore[union-attr]
    assert listed(client, "status=false_positive") == ["a"]


@pytest.mark.postgres
@pytest.mark.parametrize("body", [{"status": "closed"}, {}, {"status": "resolved", "note": "x" * 4001}])
def test_review_rejects_invalid_body(client: TestClient, session_factory: sessionmaker[Session], body: dict[str, str]) -> None:
    ids = seed_flags(session_factory)
    response = client.post(f"/v1/flags/{ids['a']}/review", json=body, headers=auth(REVIEWER_TOKEN))
    assert response.status_code == 422
    with session_factory() as session:
        assert session.get(FlagRecord, ids["a"]).status == "open"  # type: ignore[union-attr]
