"""Alembic environment for Sentinel Monitor.

`storage.migrate` passes an open connection in `config.attributes["connection"]`
and a lock timeout in `config.attributes["lock_timeout_ms"]`. When Alembic runs
from its own command line instead, the URL comes from `-x url=...`.

Every run sets `lock_timeout` for its transaction, so a migration that waits for
a lock held by the running service fails after that time instead of queueing
every other query behind its own lock request.
"""

from __future__ import annotations

import sqlalchemy
from alembic import context
from sqlalchemy.engine import Connection

from storage.models import Base

DEFAULT_LOCK_TIMEOUT_MS = 5_000

config = context.config


def _lock_timeout_sql() -> str:
    lock_timeout_ms = int(config.attributes.get("lock_timeout_ms", DEFAULT_LOCK_TIMEOUT_MS))
    return f"SET LOCAL lock_timeout = {lock_timeout_ms}"


def _url_argument() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit(
            "no database URL: run `sentinel-monitor db upgrade`, or pass -x url=postgresql+psycopg://... to alembic"
        )
    return url


def _configure(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
    with context.begin_transaction():
        connection.exec_driver_sql(_lock_timeout_sql())
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=_url_argument(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.execute(_lock_timeout_sql())
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = sqlalchemy.create_engine(_url_argument(), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as own_connection:
            _configure(own_connection)
            own_connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
