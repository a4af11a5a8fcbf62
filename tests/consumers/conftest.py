"""Fixtures for the pipeline tests: the test database and the local Kafka."""

from __future__ import annotations

import pytest

from tests.conftest_db import database_engine, database_settings, session_factory
from tests.consumers.harness import require_kafka

__all__ = ["database_engine", "database_settings", "session_factory"]


@pytest.fixture(scope="session")
def kafka_available() -> None:
    require_kafka()
