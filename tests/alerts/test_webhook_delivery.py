"""Alert delivery to a webhook receiver on loopback, through the dispatcher and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerts.dispatcher import run_alert_dispatch
from storage.alerts import claim_due_deliveries, ensure_sinks
from storage.engine import transaction
from tests.alerts.factories import (
    T0,
    alert_settings,
    alerts,
    deliveries,
    draft,
    enqueue,
    log_sink,
    sink_row,
    sinks_of,
    webhook_sink,
)
from tests.alerts.receiver import WebhookReceiver

pytestmark = pytest.mark.postgres


def test_webhook_receives_signed_alert(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    enqueue(session_factory, draft("flag:1:opened"), ["webhook"])

    result = run_alert_dispatch(session_factory, alert_settings(), sinks_of(webhook_sink(receiver.url)), now=T0)

    assert result.delivered == 1
    [request] = receiver.all_requests()
    assert request.verified
    assert request.status == 200
    assert request.path == "/hooks/sentinel?token=do-not-log"
    assert request.key == "flag:1:opened"
    body = request.json()
    assert body["dedup_key"] == "flag:1:opened"
    assert body["kind"] == "opened"
    assert body["severity"] == "high"
    assert body["user_id"] == "user-7"
    assert body["summary"] == "user-7 flagged under slip_throughs>=3/24h (flag:1:opened)"
    delivery = deliveries(session_factory)[("flag:1:opened", "webhook")]
    assert delivery.status == "delivered"
    assert delivery.attempts == 1
    assert delivery.delivered_at == T0


def test_webhook_slack_format(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    enqueue(session_factory, draft("flag:2:opened", severity="critical"), ["webhook"])
    sink = webhook_sink(receiver.url, message_format="slack")

    run_alert_dispatch(session_factory, alert_settings(webhook_format="slack"), sinks_of(sink), now=T0)

    [request] = receiver.all_requests()
    assert request.verified
    body = request.json()
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "user-7 flagged under slip_throughs&gt;=3/24h (flag:2:opened)"
    assert [block["type"] for block in body["blocks"]] == ["header", "section", "section", "context"]
    assert request.key == "flag:2:opened"


def test_wrong_secret_is_a_failure(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    enqueue(session_factory, draft("flag:3:opened"), ["webhook"])
    sink = webhook_sink(receiver.url, secret="not-the-receivers-secret")

    result = run_alert_dispatch(session_factory, alert_settings(), sinks_of(sink), now=T0)

    assert result.failed == 1
    [request] = receiver.all_requests()
    assert not request.verified
    delivery = deliveries(session_factory)[("flag:3:opened", "webhook")]
    assert delivery.status == "pending"
    assert delivery.last_error is not None
    assert "returned HTTP 401" in delivery.last_error
    assert "receiver says no" in delivery.last_error
    assert "do-not-log" not in delivery.last_error


def test_same_key_sent_once(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    first = enqueue(session_factory, draft("flag:4:opened"), ["log", "webhook"])
    second = enqueue(session_factory, draft("flag:4:opened", severity="critical"), ["log", "webhook"], T0 + timedelta(1))
    sinks = sinks_of(log_sink(), webhook_sink(receiver.url))

    run_alert_dispatch(session_factory, alert_settings(), sinks, now=T0)
    again = run_alert_dispatch(session_factory, alert_settings(), sinks, now=T0 + timedelta(hours=1))

    assert first is True
    assert second is False
    [stored] = alerts(session_factory)
    assert stored.severity == "high"
    assert sorted(deliveries(session_factory)) == [("flag:4:opened", "log"), ("flag:4:opened", "webhook")]
    assert again.claimed == 0
    assert [request.key for request in receiver.all_requests()] == ["flag:4:opened"]


def test_retry_backoff_then_delivered(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    receiver.queue_statuses(500, 500)
    enqueue(session_factory, draft("flag:5:opened"), ["webhook"])
    settings = alert_settings(retry_initial_s=10.0)
    sinks = sinks_of(webhook_sink(receiver.url))

    first = run_alert_dispatch(session_factory, settings, sinks, now=T0)
    after_first = deliveries(session_factory)[("flag:5:opened", "webhook")]
    too_early = run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(seconds=9))
    second_at = after_first.next_attempt_at
    second = run_alert_dispatch(session_factory, settings, sinks, now=second_at)
    after_second = deliveries(session_factory)[("flag:5:opened", "webhook")]
    third = run_alert_dispatch(session_factory, settings, sinks, now=after_second.next_attempt_at)
    done = deliveries(session_factory)[("flag:5:opened", "webhook")]

    assert (first.failed, second.failed, third.delivered) == (1, 1, 1)
    assert too_early.claimed == 0
    assert after_first.attempts == 1
    assert after_first.next_attempt_at - T0 == timedelta(seconds=10)
    assert after_second.attempts == 2
    assert after_second.next_attempt_at - second_at == timedelta(seconds=20)
    assert "returned HTTP 500" in (after_second.last_error or "")
    assert done.status == "delivered"
    assert done.attempts == 3
    assert done.last_error is None
    assert [request.status for request in receiver.all_requests()] == [500, 500, 200]
    assert {request.key for request in receiver.all_requests()} == {"flag:5:opened"}
    assert sink_row(session_factory, "webhook").consecutive_failures == 0


def test_backoff_capped(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    receiver.default_status = 503
    enqueue(session_factory, draft("flag:6:opened"), ["webhook"])
    settings = alert_settings(retry_initial_s=10.0, retry_max_s=25.0, disable_after_failures=10)
    sinks = sinks_of(webhook_sink(receiver.url))

    now = T0
    gaps = []
    for _ in range(4):
        run_alert_dispatch(session_factory, settings, sinks, now=now)
        next_at = deliveries(session_factory)[("flag:6:opened", "webhook")].next_attempt_at
        gaps.append((next_at - now).total_seconds())
        now = next_at

    assert gaps == [10.0, 20.0, 25.0, 25.0]


def test_expired_claim_sent_again(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    """A replica that claimed a delivery and died leaves it pending; after the lease it is sent, at least once."""
    enqueue(session_factory, draft("flag:7:opened"), ["webhook"])
    settings = alert_settings(claim_lease_s=60.0)
    with transaction(session_factory, "claim as a replica that then dies") as session:
        ensure_sinks(session, ["webhook"], now=T0)
        [claim] = claim_due_deliveries(
            session, sinks=["webhook"], now=T0, lease_until=T0 + timedelta(seconds=60), limit=10
        )
    sinks = sinks_of(webhook_sink(receiver.url))

    during_lease = run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(seconds=59))
    after_lease = run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(seconds=60))

    assert claim.attempts == 1
    assert during_lease.claimed == 0
    assert after_lease.delivered == 1
    delivery = deliveries(session_factory)[("flag:7:opened", "webhook")]
    assert delivery.attempts == 2
    assert [request.key for request in receiver.all_requests()] == ["flag:7:opened"]


def test_log_sink_writes_ids_and_severity(
    session_factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    enqueue(session_factory, draft("flag:8:opened", severity="high"), ["log"])
    enqueue(session_factory, draft("flag:8:renotify", kind="renotify", severity="low"), ["log"])

    with caplog.at_level(logging.INFO, logger="monitor.alerts"):
        run_alert_dispatch(session_factory, alert_settings(), sinks_of(log_sink()), now=T0)

    lines = {record.getMessage(): record.levelno for record in caplog.records if record.name == "monitor.alerts"}
    [opened] = [line for line in lines if "key=flag:8:opened" in line]
    [renotify] = [line for line in lines if "key=flag:8:renotify" in line]
    assert lines[opened] == logging.WARNING
    assert lines[renotify] == logging.INFO
    assert "severity=high" in opened
    assert "user=user-7" in opened
    assert "opened" in opened
