"""Engine and session factories, and the transaction helper that translates commit errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import ConfigError
from monitor.settings import DatabaseSettings
from storage.errors import translate_errors

APPLICATION_NAME = "sentinel-monitor"
INSERT_PAGE_ROWS = 10_000

SessionFactory = Callable[[], Session]


def create_engine(*, settings: DatabaseSettings) -> Engine:
    """Build the engine for `settings.url`. Nothing connects until the first query.

    Every connection gets `connect_timeout` and `statement_timeout` from the
    settings, and the pool tests a connection before lending it, so a restarted
    server costs one failed ping instead of one failed transaction.
    """
    url = _parse_url(settings.url)
    return sqlalchemy.create_engine(
        url.difference_update_query(["options"]),
        pool_size=settings.pool_size,
        pool_pre_ping=True,
        # Multi-row INSERTs are then limited by SQLAlchemy's parameter cap
        # (32,700) instead of its default page of 1,000 rows.
        insertmanyvalues_page_size=INSERT_PAGE_ROWS,
        connect_args={
            "connect_timeout": settings.connect_timeout_s,
            "application_name": APPLICATION_NAME,
            "options": _connection_options(url, settings.statement_timeout_ms),
        },
    )


def _parse_url(text: str) -> URL:
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise ConfigError(
            f"setting database.url={text!r} is not a database URL; expected the form "
            "postgresql+psycopg://USER@HOST:PORT/DATABASE"
        ) from exc
    if not url.drivername.startswith("postgresql"):
        raise ConfigError(f"setting database.url uses {url.drivername!r}; Sentinel Monitor needs PostgreSQL (postgresql+psycopg)")
    return url


def create_session_factory(*, engine: Engine) -> sessionmaker[Session]:
    """Build the session factory, whose objects stay readable after their transaction commits."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def transaction(session_factory: SessionFactory, action: str) -> Iterator[Session]:
    """Open a session and a transaction that commits when the block ends without an error.

    Database errors raised in the block or by the commit come out as
    `StorageError`, or `DatabaseUnavailableError` when transient. `action`
    names the work in their message.
    """
    with session_factory() as session, translate_errors(action, session), session.begin():
        yield session


def _connection_options(url: URL, statement_timeout_ms: int) -> str:
    # Keep libpq options that the URL already sets (for example a search_path),
    # and add the statement timeout after them.
    existing = url.query.get("options", "")
    if isinstance(existing, tuple):
        existing = " ".join(existing)
    timeout = f"-c statement_timeout={int(statement_timeout_ms)}"
    return f"{existing} {timeout}".strip()
