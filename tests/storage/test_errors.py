from __future__ import annotations

import socket

import psycopg
import pytest
from psycopg import errors as pg_errors
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from monitor.settings import DatabaseSettings
from storage.engine import create_engine, create_session_factory, transaction
from storage.errors import DatabaseUnavailableError, StorageError, is_transient
from storage.exchanges import count_exchanges
from tests.conftest_db import database_url_for_tests, fresh_schema


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (pg_errors.AdminShutdown("terminating connection"), True),
        (pg_errors.CannotConnectNow("starting up"), True),
        (pg_errors.TooManyConnections("too many clients"), True),
        (pg_errors.SerializationFailure("could not serialize"), True),
        (pg_errors.DeadlockDetected("deadlock"), True),
        (pg_errors.LockNotAvailable("lock timeout"), True),
        (pg_errors.QueryCanceled("statement timeout"), True),
        (psycopg.OperationalError("connection refused"), True),
        (pg_errors.UniqueViolation("duplicate key"), False),
        (pg_errors.UndefinedTable("no such table"), False),
        (pg_errors.InvalidTextRepresentation("bad input"), False),
    ],
)
def test_is_transient_by_sqlstate(error: psycopg.Error, transient: bool) -> None:
    assert is_transient(error) is transient


def test_closed_port_raises_database_unavailable() -> None:
    port = _closed_port()
    settings = DatabaseSettings(url=f"postgresql+psycopg://sentinel@127.0.0.1:{port}/sentinel", connect_timeout_s=2)
    engine = create_engine(settings=settings)
    try:
        with pytest.raises(DatabaseUnavailableError) as raised:
            with create_session_factory(engine=engine)() as session:
                count_exchanges(session)
    finally:
        engine.dispose()

    assert f"127.0.0.1:{port}/sentinel" in str(raised.value)
    assert isinstance(raised.value.__cause__, Exception)
    assert not isinstance(raised.value, psycopg.Error)


def test_transaction_translates_connect_errors() -> None:
    port = _closed_port()
    settings = DatabaseSettings(url=f"postgresql+psycopg://sentinel@127.0.0.1:{port}/sentinel", connect_timeout_s=2)
    engine = create_engine(settings=settings)
    try:
        with pytest.raises(DatabaseUnavailableError, match="failed to read something"):
            with transaction(create_session_factory(engine=engine), "read something") as session:
                session.execute(text("SELECT 1"))
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_missing_schema_is_a_permanent_error() -> None:
    with fresh_schema(database_url_for_tests()) as settings:
        engine = create_engine(settings=settings)
        try:
            with pytest.raises(StorageError, match="sentinel-monitor db upgrade") as raised:
                with create_session_factory(engine=engine)() as session:
                    count_exchanges(session)
        finally:
            engine.dispose()

    assert not isinstance(raised.value, DatabaseUnavailableError)


@pytest.mark.postgres
def test_statement_timeout_comes_from_settings(database_settings: DatabaseSettings) -> None:
    settings = DatabaseSettings(url=database_settings.url, statement_timeout_ms=300)
    engine = create_engine(settings=settings)
    factory: sessionmaker[Session] = create_session_factory(engine=engine)
    try:
        with factory() as session:
            assert session.execute(text("SHOW statement_timeout")).scalar_one() == "300ms"
            assert session.execute(text("SELECT current_schema()")).scalar_one().startswith("test_")

        with pytest.raises(DatabaseUnavailableError, match="statement timeout"):
            with transaction(factory, "sleep") as session:
                session.execute(text("SELECT pg_sleep(5)"))
    finally:
        engine.dispose()
