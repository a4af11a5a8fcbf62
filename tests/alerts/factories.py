"""Builders for the alert tests: drafts, settings, sinks, and reads of the delivery tables."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kafka import KafkaConsumer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerts.sinks import KafkaSink, LogSink, Sink, WebhookSink
from monitor.settings import AlertSettings, KafkaSettings
from storage.alerts import AlertDraft, enqueue_alert
from storage.engine import transaction
from storage.models import AlertDeliveryRecord, AlertRecord, AlertSinkRecord
from tests.consumers.harness import BOOTSTRAP

SECRET = "test-secret-0123456789abcdef"
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
KAFKA = KafkaSettings(bootstrap_servers=BOOTSTRAP)


def draft(key: str = "flag:1:opened", **overrides: Any) -> AlertDraft:
    base = AlertDraft(
        dedup_key=key,
        kind="opened",
        severity="high",
        flag_id=None,
        user_id="user-7",
        rule="slip_throughs>=3/24h",
        payload={"summary": f"user-7 flagged under slip_throughs>=3/24h ({key})", "slip_throughs": 4},
    )
    return replace(base, **overrides)


def alert_settings(**overrides: Any) -> AlertSettings:
    """Settings with a short, predictable backoff: 10 s doubling up to 1000 s."""
    base = AlertSettings(
        retry_initial_s=10.0,
        retry_max_s=1000.0,
        disable_after_failures=5,
        claim_lease_s=60.0,
        kafka_timeout_s=10.0,
        webhook_timeout_s=5.0,
        webhook_secret=SECRET,
    )
    settings = replace(base, **overrides)
    settings.validate()
    return settings


def unique_topic() -> str:
    return f"test.alerts.{secrets.token_hex(4)}"


def webhook_sink(url: str, *, secret: str = SECRET, message_format: str = "json", **options: Any) -> WebhookSink:
    return WebhookSink(url, secret, message_format=message_format, timeout_s=5.0, **options)  # type: ignore[arg-type]


def kafka_sink(topic: str) -> KafkaSink:
    return KafkaSink(topic, KAFKA, timeout_s=10.0)


def sinks_of(*sinks: Sink) -> dict[str, Sink]:
    return {sink.name: sink for sink in sinks}


def log_sink() -> LogSink:
    return LogSink()


def enqueue(factory: sessionmaker[Session], item: AlertDraft, sinks: list[str], now: datetime = T0) -> bool:
    with transaction(factory, "enqueue a test alert") as session:
        return enqueue_alert(session, item, sinks=sinks, now=now)


def deliveries(factory: sessionmaker[Session]) -> dict[tuple[str, str], AlertDeliveryRecord]:
    """Every delivery by (dedup key, sink)."""
    query = select(AlertRecord.dedup_key, AlertDeliveryRecord).join(AlertRecord, AlertRecord.id == AlertDeliveryRecord.alert_id)
    with factory() as session:
        return {(key, record.sink): record for key, record in session.execute(query)}


def alerts(factory: sessionmaker[Session]) -> list[AlertRecord]:
    with factory() as session:
        return list(session.scalars(select(AlertRecord).order_by(AlertRecord.id)))


def sink_row(factory: sessionmaker[Session], name: str) -> AlertSinkRecord:
    with factory() as session:
        record = session.get(AlertSinkRecord, name)
        assert record is not None, f"no alert_sinks row for {name}"
        return record


def consume(topic: str, *, expected: int, settle_s: float = 2.0, timeout_s: float = 30.0) -> list[Any]:
    """Read the topic from the start until `expected` records arrived, then `settle_s` more to catch extra ones."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=f"test-alerts-{secrets.token_hex(4)}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        settle_until = time.monotonic() + settle_s
        while time.monotonic() < settle_until:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def record_json(record: Any) -> Any:
    return json.loads(record.value)
