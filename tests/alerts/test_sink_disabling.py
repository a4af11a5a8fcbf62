"""A sink that keeps failing is disabled, the other sinks get a sink_disabled alert, and enabling it delivers the backlog."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerts.dispatcher import run_alert_dispatch
from storage.alerts import enable_sink, list_sink_health
from storage.engine import transaction
from tests.alerts.factories import (
    T0,
    alert_settings,
    alerts,
    consume,
    deliveries,
    draft,
    enqueue,
    kafka_sink,
    log_sink,
    record_json,
    sink_row,
    sinks_of,
    unique_topic,
    webhook_sink,
)
from tests.alerts.receiver import WebhookReceiver

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


@pytest.mark.usefixtures("kafka_available")
def test_failing_sink_disabled_then_enabled(
    session_factory: sessionmaker[Session], receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.default_status = 500
    topic = unique_topic()
    settings = alert_settings(disable_after_failures=3, retry_initial_s=10.0, kafka_topic=topic)
    names = ["log", "kafka", "webhook"]
    for index in range(2):
        enqueue(session_factory, draft(f"flag:2{index}:opened"), names)
    kafka = kafka_sink(topic)
    sinks = sinks_of(log_sink(), kafka, webhook_sink(receiver.url))

    # Three failures in a row, each after the sink's backoff (10 s, then 20 s), disable the webhook.
    try:
        with caplog.at_level(logging.INFO):
            runs = [
                run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(seconds=offset))
                for offset in (0, 10, 30)
            ]
            # The sink_disabled alert is due at once, for the two sinks still enabled.
            after = run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(seconds=30))
            much_later = run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(days=1))
    finally:
        kafka.close()

    assert [run.failed for run in runs] == [1, 1, 1]
    assert runs[2].disabled_sinks == ["webhook"]
    webhook = sink_row(session_factory, "webhook")
    assert webhook.enabled is False
    assert webhook.consecutive_failures == 3
    assert webhook.disabled_at == T0 + timedelta(seconds=30)
    assert "returned HTTP 500" in (webhook.last_error or "")
    assert after.delivered == 2
    assert much_later.claimed == 0
    assert len(receiver.all_requests()) == 3

    disabled_alert = [alert for alert in alerts(session_factory) if alert.kind == "sink_disabled"]
    assert len(disabled_alert) == 1
    assert disabled_alert[0].dedup_key == f"sink_disabled:webhook:{(T0 + timedelta(seconds=30)).isoformat()}"
    assert disabled_alert[0].payload["sink"] == "webhook"
    states = deliveries(session_factory)
    key = disabled_alert[0].dedup_key
    assert sorted(sink for (dedup_key, sink) in states if dedup_key == key) == ["kafka", "log"]
    assert states[(key, "kafka")].status == "delivered"
    assert states[(key, "log")].status == "delivered"
    assert states[("flag:20:opened", "webhook")].status == "pending"
    assert states[("flag:21:opened", "webhook")].status == "pending"

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "monitor.alerts.dispatcher"]
    assert len(errors) == 1
    assert "alert sink webhook is disabled after 3 consecutive failures" in errors[0]
    records = consume(topic, expected=3)
    kinds = sorted(record_json(record)["kind"] for record in records)
    assert kinds == ["opened", "opened", "sink_disabled"]

    # An operator fixes the receiver and enables the sink: the backlog goes out, each alert once.
    receiver.default_status = 200
    enabled_at = T0 + timedelta(days=1)
    with transaction(session_factory, "enable the webhook") as session:
        assert enable_sink(session, "webhook", now=enabled_at)
        assert not enable_sink(session, "pager", now=enabled_at)
    resumed = run_alert_dispatch(session_factory, settings, sinks_of(webhook_sink(receiver.url)), now=enabled_at)

    assert resumed.delivered == 2
    assert sorted(request.key for request in receiver.accepted()) == ["flag:20:opened", "flag:21:opened"]
    states = deliveries(session_factory)
    assert states[("flag:20:opened", "webhook")].status == "delivered"
    assert states[("flag:21:opened", "webhook")].status == "delivered"
    webhook = sink_row(session_factory, "webhook")
    assert webhook.enabled is True
    assert webhook.consecutive_failures == 0
    assert webhook.disabled_at is None


def test_failure_streak_reset_by_success(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    # Run 3 delivers one alert and then fails the next: without the reset, that would be failure 3 of 3.
    receiver.queue_statuses(500, 500, 200, 500)
    settings = alert_settings(disable_after_failures=3, retry_initial_s=10.0)
    for index in range(3):
        enqueue(session_factory, draft(f"flag:3{index}:opened"), ["webhook"])
    sinks = sinks_of(webhook_sink(receiver.url))

    runs = [
        run_alert_dispatch(session_factory, settings, sinks, now=T0 + timedelta(seconds=100 * index))
        for index in range(3)
    ]

    assert [(run.delivered, run.failed) for run in runs] == [(0, 1), (0, 1), (1, 1)]
    assert [request.status for request in receiver.all_requests()] == [500, 500, 200, 500]
    webhook = sink_row(session_factory, "webhook")
    assert webhook.enabled is True
    assert webhook.consecutive_failures == 1


def test_sink_health_lists_pending(session_factory: sessionmaker[Session], receiver: WebhookReceiver) -> None:
    receiver.default_status = 500
    enqueue(session_factory, draft("flag:40:opened"), ["log", "webhook"])
    enqueue(session_factory, draft("flag:41:opened"), ["log", "webhook"], T0 + timedelta(seconds=1))
    run_alert_dispatch(
        session_factory, alert_settings(), sinks_of(log_sink(), webhook_sink(receiver.url)), now=T0 + timedelta(seconds=1)
    )

    with session_factory() as session:
        health = {item.name: item for item in list_sink_health(session)}

    assert health["log"].pending == 0
    assert health["webhook"].pending == 2
    assert health["webhook"].oldest_pending_at == T0
    webhook_state = health["webhook"].state
    assert webhook_state is not None
    assert webhook_state.consecutive_failures == 1
