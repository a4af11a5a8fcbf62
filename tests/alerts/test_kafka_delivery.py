"""Alert delivery to the real local Kafka: one record per alert, keyed by its dedup key."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerts.dispatcher import run_alert_dispatch
from monitor.alerts.sinks import KafkaSink
from monitor.settings import KafkaSettings
from tests.alerts.factories import (
    T0,
    alert_settings,
    consume,
    deliveries,
    draft,
    enqueue,
    kafka_sink,
    record_json,
    sinks_of,
    unique_topic,
)

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]


@pytest.mark.usefixtures("kafka_available")
def test_topic_receives_alert_once(session_factory: sessionmaker[Session]) -> None:
    topic = unique_topic()
    enqueue(session_factory, draft("flag:11:opened"), ["kafka"])
    enqueue(session_factory, draft("flag:11:opened"), ["kafka"])
    sink = kafka_sink(topic)
    try:
        first = run_alert_dispatch(session_factory, alert_settings(kafka_topic=topic), sinks_of(sink), now=T0)
        second = run_alert_dispatch(
            session_factory, alert_settings(kafka_topic=topic), sinks_of(sink), now=T0 + timedelta(hours=1)
        )
    finally:
        sink.close()

    records = consume(topic, expected=1)
    assert first.delivered == 1
    assert second.claimed == 0
    assert len(records) == 1
    [record] = records
    assert record.key == b"flag:11:opened"
    assert dict(record.headers)["sentinel-alert-kind"] == b"opened"
    value = record_json(record)
    assert value["dedup_key"] == "flag:11:opened"
    assert value["severity"] == "high"
    assert value["summary"] == "user-7 flagged under slip_throughs>=3/24h (flag:11:opened)"
    assert deliveries(session_factory)[("flag:11:opened", "kafka")].status == "delivered"


def test_unreachable_broker_is_a_failure(session_factory: sessionmaker[Session]) -> None:
    # Nothing listens on port 1 of the loopback address, so the producer never gets metadata.
    sink = KafkaSink(unique_topic(), KafkaSettings(bootstrap_servers="127.0.0.1:1"), timeout_s=1.0)
    enqueue(session_factory, draft("flag:12:opened"), ["kafka"])
    try:
        result = run_alert_dispatch(session_factory, alert_settings(), sinks_of(sink), now=T0)
    finally:
        sink.close()

    assert result.failed == 1
    delivery = deliveries(session_factory)[("flag:12:opened", "kafka")]
    assert delivery.status == "pending"
    assert "Kafka did not acknowledge alert" in (delivery.last_error or "")
    assert "127.0.0.1:1" in (delivery.last_error or "")
