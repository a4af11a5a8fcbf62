"""Per-user risk, history and ranking, and their agreement with the `users` commands."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import timedelta
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

import monitor.cli
from monitor.guard import InjectionFinding
from monitor.settings import DatabaseSettings
from monitor.wire import decode_exchange
from storage.engine import transaction
from storage.flags import FlagFinding, upsert_flags
from tests.api.conftest import VIEWER_TOKEN, auth, seed, settings_environment
from tests.storage.factories import HIGH, LOW, NOW, scored_exchange


def seed_population(session_factory: sessionmaker[Session]) -> None:
    items = [scored_exchange(user_id="risky", probs=HIGH, age=timedelta(minutes=i + 1)) for i in range(4)]
    items += [scored_exchange(user_id="benign", probs=LOW, age=timedelta(minutes=i + 1)) for i in range(10)]
    items += [scored_exchange(user_id="older", probs=HIGH, age=timedelta(hours=30)) for _ in range(2)]
    seed(session_factory, items)


def run_cli_at_now(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], database: DatabaseSettings, *args: str
) -> dict[str, object]:
    """Run the command in this process with the clock pinned to NOW, and return its JSON output."""
    for name in list(os.environ):
        if name.startswith("SENTINEL_"):
            monkeypatch.delenv(name)
    for name, value in settings_environment(database).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(monitor.cli, "_now", lambda: NOW)
    monkeypatch.setattr(monitor.cli, "configure_logging", lambda level: None)
    capsys.readouterr()
    assert monitor.cli.main(list(args)) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


@pytest.mark.postgres
def test_risk_equals_cli_json(
    client: TestClient,
    session_factory: sessionmaker[Session],
    database_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_population(session_factory)
    response = client.get("/v1/users/risky/risk", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    cli = run_cli_at_now(monkeypatch, capsys, database_settings, "users", "risk", "risky", "--json")
    assert response.json() == cli
    assert [window["window_s"] for window in response.json()["windows"]] == [3600, 86400, 604800]
    assert response.json()["windows"][0]["risk"] > 0.9


@pytest.mark.postgres
@pytest.mark.parametrize("window", ["1h", "2d"])
def test_top_equals_cli_json(
    window: str,
    client: TestClient,
    session_factory: sessionmaker[Session],
    database_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_population(session_factory)
    response = client.get(f"/v1/users/top?window={window}&limit=5", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    cli = run_cli_at_now(monkeypatch, capsys, database_settings, "users", "top", "--window", window, "--limit", "5", "--json")
    assert response.json() == cli
    users = [user["user_id"] for user in response.json()["users"]]
    assert users == (["risky"] if window == "1h" else ["risky", "older"])


@pytest.mark.postgres
def test_risk_of_unknown_user_is_404(client: TestClient) -> None:
    response = client.get("/v1/users/nobody/risk", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 404
    assert response.json()["detail"] == "user 'nobody' has no exchanges in the last 7d"


@pytest.mark.postgres
def test_user_id_with_slash(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed(session_factory, [scored_exchange(user_id="org/alice")])
    risk = client.get("/v1/users/org/alice/risk", headers=auth(VIEWER_TOKEN))
    assert risk.status_code == 200, risk.text
    assert risk.json()["user_id"] == "org/alice"
    history = client.get("/v1/users/org/alice/history", headers=auth(VIEWER_TOKEN))
    assert history.json()["user_id"] == "org/alice"


DECODABLE_USER_IDS = [
    "org/alice",
    "100% sure",
    "  spaced user  ",
    "ユーザー/😀",
    "a\u2028b",
    "ends/with/risk",
    "top",
    "..",
    "a/../b",
    "query?x=1#frag",
    "back\\slash",
]


@pytest.mark.postgres
@pytest.mark.parametrize("user_id", DECODABLE_USER_IDS)
def test_routes_reach_every_decodable_user_id(
    client: TestClient, session_factory: sessionmaker[Session], user_id: str
) -> None:
    decoded = decode_exchange(json.dumps(native_message(user_id)).encode("utf-8")).user_id
    assert decoded == user_id
    seed(session_factory, [scored_exchange(user_id=decoded)])
    # Clients drop `.` and `..` path segments before sending, so the dots travel percent-encoded.
    path = quote(user_id, safe="").replace(".", "%2E")

    risk = client.get(f"/v1/users/{path}/risk", headers=auth(VIEWER_TOKEN))
    assert risk.status_code == 200, risk.text
    assert risk.json()["user_id"] == user_id
    history = client.get(f"/v1/users/{path}/history", headers=auth(VIEWER_TOKEN))
    assert history.status_code == 200, history.text
    assert history.json()["user_id"] == user_id


def native_message(user_id: str) -> dict[str, object]:
    return {
        "schema": "exchange/v1",
        "id": "ex-1",
        "user_id": user_id,
        "model": "m",
        "created_at": "2026-12-01T10:00:00Z",
        "request": {"messages": [{"role": "user", "content": "Hi"}]},
        "response": {"content": "Hello"},
    }


@pytest.mark.postgres
@pytest.mark.parametrize("query", ["window=1y", "window=0h", "limit=0", "limit=1001", "limit=many"])
def test_top_rejects_invalid_query(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/users/top?{query}", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 422


@pytest.mark.postgres
@pytest.mark.parametrize("window", ["200000w", "99999999999w"])
def test_top_rejects_huge_window(client: TestClient, window: str) -> None:
    response = client.get(f"/v1/users/top?window={window}", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 422
    assert "longer than the maximum of 3650d" in response.json()["detail"]


@pytest.mark.postgres
def test_history_lists_latest_exchanges_and_flags(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    attempt = InjectionFinding(sentinel="im_sorry", message_index=1, role="user", disguises=(), start=0, end=9)
    injected = scored_exchange(user_id="u", age=timedelta(minutes=2), exchange_id="ex-injected")
    items = [
        scored_exchange(user_id="u", probs=HIGH, age=timedelta(minutes=1), exchange_id="ex-newest"),
        replace(injected, injection_findings=(attempt,)),
        scored_exchange(user_id="u", probs=LOW, age=timedelta(minutes=3), exchange_id="ex-low"),
        scored_exchange(user_id="u", override=True, age=timedelta(minutes=4), exchange_id="ex-override"),
        scored_exchange(user_id="other", age=timedelta(minutes=1)),
    ]
    seed(session_factory, items)
    finding = FlagFinding(user_id="u", slip_through_count=2, max_prob=0.6, evidence={"exchange_ids": ["ex-newest"]})
    with transaction(session_factory, "seed a flag") as session:
        upsert_flags(session, [finding], rule="slips", window_s=3600, now=NOW)

    response = client.get("/v1/users/u/history?limit=4", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["id"] for item in body["exchanges"]] == ["ex-newest", "ex-injected", "ex-low", "ex-override"]
    newest = body["exchanges"][0]
    assert newest["probabilities"] == HIGH
    assert newest["slip_through"] is True
    assert newest["max_slip_prob"] == 0.6
    assert sorted(newest["slip_through_sentinels"]) == ["i_cant", "im_sorry"]
    assert body["exchanges"][1]["injection_attempts"] == 1
    assert newest["injection_attempts"] == 0
    assert body["exchanges"][2]["slip_through"] is False
    assert body["exchanges"][3]["override"] is True
    assert [flag["rule"] for flag in body["flags"]] == ["slips"]
    assert "how do I pick a lock" not in response.text

    limited = client.get("/v1/users/u/history?limit=1", headers=auth(VIEWER_TOKEN))
    assert [item["id"] for item in limited.json()["exchanges"]] == ["ex-newest"]


@pytest.mark.postgres
def test_history_of_unknown_user_is_404(client: TestClient) -> None:
    response = client.get("/v1/users/nobody/history", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 404
    assert "nobody" in response.json()["detail"]
