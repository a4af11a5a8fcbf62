"""PostgreSQL fixtures: each test session works in a schema of its own, created by the migrations.

The tests talk to the real server that `scripts/services start postgres`
runs. When it is unreachable they fail with a message naming that command,
unless SENTINEL_SKIP_SERVICES=1 is set, in which case they are skipped. Set
SENTINEL_TEST_DATABASE_URL to use another database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.settings import DatabaseSettings
from storage.engine import create_engine, create_session_factory
from storage.migrate import upgrade

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://sentinel@127.0.0.1:15432/sentinel_test"
TABLES = (
    "job_runs",
    "flags",
    "scores",
    "exchanges",
    "flag_events",
    "alerts",
    "alert_sinks",
    "alert_deliveries",
    "trusted_users",
    "job_watermarks",
    "population_baselines",
)


def database_url_for_tests() -> str:
    return os.environ.get("SENTINEL_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


def require_postgres(url: str) -> None:
    """Fail the test (or skip it under SENTINEL_SKIP_SERVICES=1) when PostgreSQL at `url` is unreachable."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(conninfo, connect_timeout=5):
            return
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {make_url(url).render_as_string(hide_password=True)} is unreachable: {exc}".strip()
        if os.environ.get("SENTINEL_SKIP_SERVICES") == "1":
            pytest.skip(f"{message} (SENTINEL_SKIP_SERVICES=1)")
        pytest.fail(
            f"{message}\nRun `scripts/services start postgres`, or set SENTINEL_SKIP_SERVICES=1 to skip "
            "the tests that need it.",
            pytrace=False,
        )


@contextmanager
def fresh_schema(url: str) -> Iterator[DatabaseSettings]:
    """Create an empty schema, yield settings whose connections use it, and drop it afterwards."""
    require_postgres(url)
    schema = f"test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        schema_url = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield DatabaseSettings(url=schema_url.render_as_string(hide_password=False), pool_size=2)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(scope="session")
def database_settings() -> Iterator[DatabaseSettings]:
    """Settings for a schema of this test session, upgraded to the newest revision."""
    with fresh_schema(database_url_for_tests()) as settings:
        upgrade(settings)
        yield settings


@pytest.fixture(scope="session")
def database_engine(database_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = create_engine(settings=database_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(database_engine: Engine) -> sessionmaker[Session]:
    """A session factory on empty tables: every table is truncated before the test."""
    with database_engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    return create_session_factory(engine=database_engine)
