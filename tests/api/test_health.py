"""Liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

from datetime import timedelta
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from monitor.api.app import create_app
from monitor.settings import DatabaseSettings, Settings
from storage.engine import create_engine, create_session_factory, transaction
from storage.flags import FlagFinding, upsert_flags
from storage.job_runs import record_job_run
from tests.api.conftest import VIEWER_TOKEN, auth, seed
from tests.conftest_db import database_url_for_tests, fresh_schema
from tests.storage.factories import NOW, scored_exchange

# Nothing listens on port 1 of the loopback address, so connections are refused at once.
UNREACHABLE_URL = "postgresql+psycopg://sentinel@127.0.0.1:1/sentinel"


@pytest.fixture
def unreachable_client(api_settings: Settings) -> Iterator[TestClient]:
    database = DatabaseSettings(url=UNREACHABLE_URL, connect_timeout_s=2, pool_size=1)
    settings = Settings(database=database, scoring=api_settings.scoring, api=api_settings.api)
    engine = create_engine(settings=database)
    with TestClient(create_app(settings, create_session_factory(engine=engine), clock=lambda: NOW)) as client:
        yield client
    engine.dispose()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the exposition text into {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.postgres
def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.postgres
def test_ready_at_head(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["schema_revision"] == body["head_revision"]


@pytest.mark.postgres
def test_not_ready_when_database_unreachable(unreachable_client: TestClient) -> None:
    response = unreachable_client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "Connection refused" in body["reason"]
    assert unreachable_client.get("/healthz").status_code == 200


@pytest.mark.postgres
def test_data_route_is_503_when_database_unreachable(unreachable_client: TestClient) -> None:
    response = unreachable_client.get("/v1/flags", headers=auth(VIEWER_TOKEN))
    assert response.status_code == 503
    assert "the database is unavailable" in response.json()["detail"]


@pytest.mark.postgres
def test_not_ready_before_migrations(api_settings: Settings, session_factory: sessionmaker[Session]) -> None:
    with fresh_schema(database_url_for_tests()) as empty:
        settings = Settings(database=empty, scoring=api_settings.scoring, api=api_settings.api)
        with TestClient(create_app(settings, session_factory)) as client:
            response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["schema_revision"] is None
    assert "run `sentinel-monitor db upgrade`" in body["reason"]


@pytest.mark.postgres
def test_metrics_count_data_requests_and_jobs(client: TestClient, session_factory: sessionmaker[Session]) -> None:
    seed(session_factory, [scored_exchange(user_id="u") for _ in range(3)])
    finding = FlagFinding(user_id="u", slip_through_count=3, max_prob=0.6, evidence={"exchange_ids": []})
    with transaction(session_factory, "seed") as session:
        upsert_flags(session, [finding], rule="slips", window_s=3600, now=NOW)
        for status in ("ok", "ok", "skipped"):
            record_job_run(session, job="flag_users", started_at=NOW, finished_at=NOW, status=status, detail={})
    assert client.get("/v1/users/u/risk", headers=auth(VIEWER_TOKEN)).status_code == 200
    assert client.get("/v1/users/someone-else/risk", headers=auth(VIEWER_TOKEN)).status_code == 404
    assert client.get("/v1/flags").status_code == 401

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    assert values[("sentinel_metrics_database_up", ())] == 1
    assert values[("sentinel_exchanges_stored", ())] == 3
    assert values[("sentinel_flags", (("status", "open"),))] == 1
    assert values[("sentinel_flags", (("status", "resolved"),))] == 0
    assert values[("sentinel_job_runs", (("job", "flag_users"), ("status", "ok")))] == 2
    assert values[("sentinel_job_runs", (("job", "flag_users"), ("status", "skipped")))] == 1
    risk_route = (("method", "GET"), ("route", "/v1/users/{user_id:path}/risk"), ("status", "200"))
    assert values[("sentinel_api_requests_total", risk_route)] == 1
    assert values[("sentinel_api_requests_total", risk_route[:2] + (("status", "404"),))] == 1
    assert values[("sentinel_api_requests_total", (("method", "GET"), ("route", "/v1/flags"), ("status", "401")))] == 1
    assert values[("sentinel_risk_query_seconds_count", (("query", "user_risk"),))] == 2
    assert not any("someone-else" in str(key) for key in values)


@pytest.mark.postgres
def test_metrics_without_database(unreachable_client: TestClient) -> None:
    response = unreachable_client.get("/metrics")
    assert response.status_code == 200
    values = samples(response.text)
    assert values[("sentinel_metrics_database_up", ())] == 0
    assert ("sentinel_exchanges_stored", ()) not in values


@pytest.mark.postgres
def test_two_apps_have_separate_registries(api_settings: Settings, session_factory: sessionmaker[Session]) -> None:
    first = TestClient(create_app(api_settings, session_factory))
    second = TestClient(create_app(api_settings, session_factory))
    first.get("/healthz")
    healthz = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert samples(first.get("/metrics").text)[("sentinel_api_requests_total", healthz)] == 1
    assert ("sentinel_api_requests_total", healthz) not in samples(second.get("/metrics").text)
