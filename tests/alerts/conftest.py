"""Fixtures for the alert tests: the test database, the local Kafka, and a webhook receiver on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.alerts.factories import SECRET
from tests.alerts.receiver import WebhookReceiver
from tests.conftest_db import database_engine, database_settings, session_factory
from tests.consumers.harness import require_kafka

__all__ = ["database_engine", "database_settings", "session_factory"]


@pytest.fixture(scope="session")
def kafka_available() -> None:
    require_kafka()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook receiver on 127.0.0.1 that verifies signatures with SECRET and returns 200 unless a test sets another status."""
    server = WebhookReceiver(SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()
