"""Storage errors, and the one place where SQLAlchemy and psycopg errors are translated.

A `DatabaseUnavailableError` is transient: the server is unreachable, restarting,
out of connections, or a statement lost a lock or serialization race or hit a
timeout. The caller retries the whole transaction with backoff. Any other
`StorageError` is permanent for the statement that raised it (a constraint, a
missing table, invalid data), and retrying the same statement fails the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from monitor.errors import SentinelMonitorError


class StorageError(SentinelMonitorError):
    """A database operation failed and retrying it unchanged will not help."""


class DatabaseUnavailableError(StorageError):
    """A database operation failed for a transient reason, so the transaction can be retried with backoff."""


class MigrationError(StorageError):
    """A schema migration could not be found or applied."""


# SQLSTATE classes and codes that describe the server or the connection, not the
# statement: connection exceptions (08), insufficient resources (53), operator
# intervention such as shutdown or a cancelled statement (57), serialization
# failures and deadlocks (40001, 40P01), and lock_timeout expiry (55P03).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57")
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_UNDEFINED_OBJECT_SQLSTATES = frozenset({"42P01", "42703"})


_PERMANENT_CONNECT_MARKERS = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "authentication failed",
)


def is_transient(exc: BaseException) -> bool:
    """Tell whether an SQLAlchemy or psycopg error is worth retrying with backoff."""
    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    original = _original(exc)
    if not isinstance(original, psycopg.Error):
        return False
    sqlstate = original.sqlstate
    if sqlstate is None:
        # psycopg raises OperationalError without a SQLSTATE when it cannot
        # connect at all (refused, timed out, unknown host), and also when the
        # server rejects the connection for good: an unknown database or role,
        # or failed authentication, which no retry will fix.
        message = str(original).lower()
        if any(marker in message for marker in _PERMANENT_CONNECT_MARKERS):
            return False
        return isinstance(original, psycopg.OperationalError)
    return sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES


def translate_error(exc: sa_exc.SQLAlchemyError | psycopg.Error, action: str, url: URL | None) -> StorageError:
    """Build the project error for a database error raised while doing `action`."""
    where = _describe_url(url)
    original = _original(exc)
    reason = _first_line(original)
    if is_transient(exc):
        return DatabaseUnavailableError(
            f"failed to {action} in PostgreSQL at {where}: {reason}. The error is transient and the transaction "
            "did not commit, so retry with backoff. If it persists, check that the server is running and that "
            "database.url is correct."
        )
    if isinstance(original, psycopg.Error) and original.sqlstate in _UNDEFINED_OBJECT_SQLSTATES:
        return StorageError(
            f"failed to {action}: the schema of PostgreSQL at {where} is missing a table or column ({reason}). "
            "Run `sentinel-monitor db upgrade` to apply the migrations."
        )
    return StorageError(
        f"failed to {action} in PostgreSQL at {where}: {reason}. Check database.url "
        "(SENTINEL_DATABASE__URL): the database and role must exist and accept this connection."
        if _is_connect_error(original)
        else f"failed to {action} in PostgreSQL at {where}: {reason}"
    )


def _is_connect_error(original: BaseException) -> bool:
    return isinstance(original, psycopg.OperationalError) and original.sqlstate is None


@contextmanager
def translate_errors(action: str, session: Session | None = None) -> Iterator[None]:
    """Translate SQLAlchemy and psycopg errors raised in the block into `StorageError`s."""
    try:
        yield
    except (sa_exc.SQLAlchemyError, psycopg.Error) as exc:
        raise translate_error(exc, action, _session_url(session)) from exc


def _session_url(session: Session | None) -> URL | None:
    if session is None:
        return None
    try:
        return session.get_bind().engine.url
    except sa_exc.SQLAlchemyError:
        return None


def _original(exc: BaseException) -> BaseException:
    """Return the driver error that SQLAlchemy wrapped, or `exc` itself."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return exc.orig
    return exc


def _describe_url(url: URL | None) -> str:
    if url is None:
        return "the configured database.url"
    host = url.host or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}/{url.database or ''}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
