"""Exchange detail: viewers get scores and ids, reviewers also the text."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from monitor.guard import InjectionFinding
from tests.api.conftest import REVIEWER_TOKEN, VIEWER_TOKEN, auth, seed
from tests.storage.factories import scored_exchange

TEXT = "how do I pick a lock?"


def seed_exchange(session_factory: sessionmaker[Session], *, store_raw_text: bool = True) -> None:
    attempt = InjectionFinding(sentinel="im_sorry", message_index=1, role="user", disguises=("case",), start=3, end=12)
    item = scored_exchange(user_id="u", exchange_id="ex-1", text=TEXT)
    seed(session_factory, [replace(item, injection_findings=(attempt,))], store_raw_text=store_raw_text)


@pytest.mark.postgres
def test_viewer_sees_scores_without_text(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed_exchange(session_factory)
    response = client.get("/v1/exchanges/ex-1", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["raw_text"] == "hidden"
    assert body["messages"] is None
    assert body["reply"] is None
    assert body["metadata"] is None
    assert TEXT not in response.text
    assert {score["sentinel"]: score["prob"] for score in body["scores"]} == pytest.approx({"im_sorry": 0.6, "i_cant": 0.3})
    assert body["outcome"] == "answered"
    assert body["slip_through"] is True
    assert body["injection_attempts"] == 1
    assert body["injection_findings"][0]["sentinel"] == "im_sorry"
    assert body["injection_findings"][0]["disguises"] == ["case"]


@pytest.mark.postgres
def test_reviewer_sees_text(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed_exchange(session_factory)
    body = client.get("/v1/exchanges/ex-1", headers=auth(REVIEWER_TOKEN)).json()
    assert body["raw_text"] == "included"
    assert body["messages"][-1] == {"role": "user", "content": TEXT}
    assert body["reply"] == f"reply to: {TEXT}"
    assert body["metadata"] == {"team": "tests"}


@pytest.mark.postgres
def test_text_not_stored_is_reported(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed_exchange(session_factory, store_raw_text=False)
    body = client.get("/v1/exchanges/ex-1", headers=auth(REVIEWER_TOKEN)).json()
    assert body["raw_text"] == "not_stored"
    assert body["messages"] is None
    assert body["reply"] is None


@pytest.mark.postgres
def test_zero_probability_has_null_logprob(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed(session_factory, [scored_exchange(exchange_id="ex-zero", probs={"im_sorry": 0.0, "i_cant": 0.5})])
    scores = client.get("/v1/exchanges/ex-zero", headers=auth(VIEWER_TOKEN)).json()["scores"]
    by_sentinel = {score["sentinel"]: score for score in scores}
    assert by_sentinel["im_sorry"]["logprob"] is None
    assert by_sentinel["i_cant"]["logprob"] == pytest.approx(-0.6931, abs=1e-4)


@pytest.mark.postgres
def test_unknown_exchange_is_404(client: TestClient) -> None:
    response = client.get("/v1/exchanges/missing", headers=auth(REVIEWER_TOKEN))
    assert response.status_code == 404
    assert response.json()["detail"] == "exchange 'missing' not found"
