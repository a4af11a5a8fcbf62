"""The `sentinel-monitor alerts` commands against PostgreSQL and a webhook receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.settings import DatabaseSettings
from storage.alerts import ensure_sinks, record_sink_failure
from storage.engine import transaction
from tests.alerts.factories import SECRET, T0
from tests.alerts.receiver import WebhookReceiver
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.postgres


def _run(database: DatabaseSettings, receiver: WebhookReceiver, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update({
        "SENTINEL_DATABASE__URL": database.url,
        "SENTINEL_ALERTS__KAFKA_TOPIC": "",
        "SENTINEL_ALERTS__WEBHOOK_URL": receiver.url,
        "SENTINEL_ALERTS__WEBHOOK_SECRET": SECRET,
    })  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", "--log-level", "ERROR", "alerts", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120, check=False,
    )  # fmt: skip


def test_test_alert_dispatched_and_listed(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session], receiver: WebhookReceiver
) -> None:
    sent = _run(database_settings, receiver, "test", "--severity", "medium", "--dispatch")
    listed = _run(database_settings, receiver, "list", "--json")
    text = _run(database_settings, receiver, "list")

    assert sent.returncode == 0, sent.stderr
    assert "stored for log, webhook" in sent.stdout
    assert "2 delivered, 0 failed" in sent.stdout
    [request] = receiver.all_requests()
    assert request.verified
    assert request.json()["kind"] == "test"
    assert listed.returncode == 0, listed.stderr
    [alert] = json.loads(listed.stdout)
    assert alert["kind"] == "test"
    assert alert["severity"] == "medium"
    assert alert["dedup_key"] == request.key
    assert {(d["sink"], d["status"], d["attempts"]) for d in alert["deliveries"]} == {
        ("log", "delivered", 1),
        ("webhook", "delivered", 1),
    }
    assert "log=delivered webhook=delivered" in text.stdout


def test_disabled_sink_shown_and_enabled(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session], receiver: WebhookReceiver
) -> None:
    with transaction(session_factory, "disable the webhook") as session:
        ensure_sinks(session, ["log", "webhook"], now=T0)
        record_sink_failure(session, "webhook", error="webhook returned HTTP 500", now=T0, disable_after=1)

    before = _run(database_settings, receiver, "sinks", "--json")
    text = _run(database_settings, receiver, "sinks")
    enabled = _run(database_settings, receiver, "enable", "webhook")
    after = _run(database_settings, receiver, "sinks", "--json")
    unknown = _run(database_settings, receiver, "enable", "pager")

    rows = {row["sink"]: row for row in json.loads(before.stdout)}
    assert rows["webhook"]["enabled"] is False
    assert rows["webhook"]["consecutive_failures"] == 1
    assert rows["webhook"]["last_error"] == "webhook returned HTTP 500"
    assert rows["log"]["enabled"] is True
    assert "DISABLED since 2026-12-05 12:00:00Z" in text.stdout
    assert enabled.returncode == 0, enabled.stderr
    assert "alert sink webhook enabled" in enabled.stdout
    assert {row["sink"]: row["enabled"] for row in json.loads(after.stdout)} == {"log": True, "webhook": True}
    assert unknown.returncode == 1
    assert "alert sink 'pager' not found; known sinks: log, webhook" in unknown.stderr


def test_dispatch_reports_failure(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session], receiver: WebhookReceiver
) -> None:
    receiver.default_status = 502
    stored = _run(database_settings, receiver, "test")
    dispatched = _run(database_settings, receiver, "dispatch", "--json")

    assert stored.returncode == 0, stored.stderr
    assert dispatched.returncode == 1
    assert json.loads(dispatched.stdout) == {
        "claimed": 2, "delivered": 1, "failed": 1, "released": 0, "disabled_sinks": []
    }  # fmt: skip
