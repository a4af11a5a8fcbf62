"""Apply and inspect schema migrations through Alembic's Python API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import migrations
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from monitor.settings import DatabaseSettings
from storage.engine import create_engine
from storage.errors import MigrationError, translate_errors

MIGRATIONS_DIR = Path(migrations.__file__).parent
DEFAULT_LOCK_TIMEOUT_MS = 5_000

_Step = Callable[[Config], None]


def upgrade(
    settings: DatabaseSettings, revision: str = "head", *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
) -> None:
    """Upgrade the schema to `revision` in one transaction.

    A statement that waits longer than `lock_timeout_ms` for a lock fails the
    whole upgrade, which then leaves the schema as it was.
    """
    _run(
        settings,
        f"upgrade the schema to {revision}",
        lock_timeout_ms,
        lambda config: command.upgrade(config, revision),
    )


def downgrade(settings: DatabaseSettings, revision: str, *, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> None:
    """Downgrade the schema to `revision` (`base` drops every table) in one transaction."""
    _run(
        settings,
        f"downgrade the schema to {revision}",
        lock_timeout_ms,
        lambda config: command.downgrade(config, revision),
    )


def current_revision(settings: DatabaseSettings) -> str | None:
    """Return the revision the database is at, or None when no migration was applied."""
    engine = create_engine(settings=settings)
    try:
        with translate_errors("read the schema revision"), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """Return the newest revision that this version of the package ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise MigrationError(
            f"no migration revisions found in {MIGRATIONS_DIR / 'versions'}. "
            "The installed package is incomplete, so reinstall it."
        )
    return head


def _run(settings: DatabaseSettings, action: str, lock_timeout_ms: int, step: _Step) -> None:
    engine = create_engine(settings=settings)
    try:
        with translate_errors(action), engine.begin() as connection:
            step(_config(connection, lock_timeout_ms))
    except CommandError as exc:
        raise MigrationError(f"failed to {action}: {exc}") from exc
    finally:
        engine.dispose()


def _config(connection: Connection | None = None, lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["lock_timeout_ms"] = lock_timeout_ms
    return config
