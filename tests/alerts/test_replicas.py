"""Several dispatchers against one database: each alert reaches the receiver once, and no send outlives its claim."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerts.dispatcher import DispatchResult, run_alert_dispatch
from monitor.settings import AlertSettings
from storage.alerts import StoredAlert
from storage.models import AlertDeliveryRecord
from tests.alerts.factories import alert_settings, deliveries, draft, enqueue, sinks_of, webhook_sink
from tests.alerts.receiver import WebhookReceiver

pytestmark = pytest.mark.postgres

ALERTS = 30
DISPATCHERS = 3


def _pending(factory: sessionmaker[Session]) -> int:
    query = select(func.count()).select_from(AlertDeliveryRecord).where(AlertDeliveryRecord.status == "pending")
    with factory() as session:
        return int(session.scalar(query) or 0)


def _dispatch_until_done(
    factory: sessionmaker[Session], settings: AlertSettings, url: str, results: list[DispatchResult], deadline: float
) -> None:
    sinks = sinks_of(webhook_sink(url))
    while time.monotonic() < deadline:
        result = run_alert_dispatch(factory, settings, sinks)
        results.append(result)
        if result.claimed == 0:
            if _pending(factory) == 0:
                return
            time.sleep(0.01)  # another dispatcher has claimed the rest, so poll again


def test_three_dispatchers_deliver_each_alert_once(session_factory: sessionmaker[Session]) -> None:
    receiver = WebhookReceiver("test-secret-0123456789abcdef", delay_s=0.02)
    receiver.start()
    now = datetime.now(timezone.utc)
    for index in range(ALERTS):
        enqueue(session_factory, draft(f"flag:{index}:opened"), ["webhook"], now)
    settings = alert_settings(batch_size=4)
    results: list[list[DispatchResult]] = [[] for _ in range(DISPATCHERS)]
    deadline = time.monotonic() + 120
    threads = [
        threading.Thread(target=_dispatch_until_done, args=(session_factory, settings, receiver.url, results[i], deadline))
        for i in range(DISPATCHERS)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=150)
    finally:
        receiver.stop()

    keys = [request.key for request in receiver.all_requests()]
    assert len(keys) == ALERTS
    assert sorted(set(keys)) == sorted(f"flag:{index}:opened" for index in range(ALERTS))
    assert all(request.verified for request in receiver.all_requests())
    states = deliveries(session_factory)
    assert all(state.status == "delivered" for state in states.values())
    assert all(state.attempts == 1 for state in states.values())
    delivered_per_dispatcher = [sum(result.delivered for result in runs) for runs in results]
    assert sum(delivered_per_dispatcher) == ALERTS
    assert sum(1 for count in delivered_per_dispatcher if count) >= 2, delivered_per_dispatcher


class _SlowSink:
    """A sink that takes 0.3 s per alert and declares a 0.5 s timeout."""

    name = "slow"
    timeout_s = 0.5

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, alert: StoredAlert) -> None:
        time.sleep(0.3)
        self.sent.append(alert.dedup_key)

    def close(self) -> None:
        return None


def test_unsent_claims_released_before_lease_ends(session_factory: sessionmaker[Session]) -> None:
    now = datetime.now(timezone.utc)
    for index in range(5):
        enqueue(session_factory, draft(f"flag:5{index}:opened"), ["slow"], now)
    settings = alert_settings(claim_lease_s=1.0, kafka_timeout_s=0.5, webhook_timeout_s=0.5)
    sink = _SlowSink()

    result = run_alert_dispatch(session_factory, settings, {"slow": sink})

    assert result.claimed == 5
    assert result.delivered == len(sink.sent)
    assert 1 <= result.delivered <= 2
    assert result.released == 5 - result.delivered
    states = deliveries(session_factory)
    left = [state for state in states.values() if state.status == "pending"]
    assert len(left) == result.released
    assert all(state.attempts == 0 for state in left)
    assert all(state.next_attempt_at <= datetime.now(timezone.utc) for state in left)
