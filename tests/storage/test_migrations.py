from __future__ import annotations

import time

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from monitor.settings import DatabaseSettings
from storage.engine import create_engine
from storage.errors import DatabaseUnavailableError
from storage.migrate import current_revision, downgrade, head_revision, upgrade
from storage.models import Base
from tests.conftest_db import database_url_for_tests, fresh_schema

pytestmark = pytest.mark.postgres

TABLES = {
    "exchanges",
    "scores",
    "flags",
    "job_runs",
    "flag_events",
    "alerts",
    "alert_sinks",
    "alert_deliveries",
    "trusted_users",
    "job_watermarks",
    "population_baselines",
}


def _tables(settings: DatabaseSettings) -> set[str]:
    engine = create_engine(settings=settings)
    try:
        with engine.connect() as connection:
            schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
            return set(sqlalchemy.inspect(connection).get_table_names(schema=schema))
    finally:
        engine.dispose()


def test_upgrade_from_empty_schema() -> None:
    with fresh_schema(database_url_for_tests()) as settings:
        assert current_revision(settings) is None

        upgrade(settings)

        assert current_revision(settings) == head_revision()
        assert TABLES <= _tables(settings)


def test_downgrade_to_base_then_upgrade_again() -> None:
    with fresh_schema(database_url_for_tests()) as settings:
        upgrade(settings)

        downgrade(settings, "base")
        assert current_revision(settings) is None
        assert not TABLES & _tables(settings)

        upgrade(settings)
        assert current_revision(settings) == head_revision()
        assert TABLES <= _tables(settings)


def test_upgrade_twice_is_a_no_op(database_settings: DatabaseSettings) -> None:
    upgrade(database_settings)

    assert current_revision(database_settings) == head_revision()


def test_models_match_migrated_schema(database_settings: DatabaseSettings) -> None:
    engine = create_engine(settings=database_settings)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()

    assert differences == []


def test_migration_gives_up_after_lock_timeout() -> None:
    with fresh_schema(database_url_for_tests()) as settings:
        upgrade(settings)
        holder = create_engine(settings=settings)
        try:
            with holder.connect() as connection:
                connection.exec_driver_sql("LOCK TABLE job_runs IN ACCESS SHARE MODE")

                started = time.monotonic()
                with pytest.raises(DatabaseUnavailableError, match="lock timeout"):
                    downgrade(settings, "base", lock_timeout_ms=200)
                elapsed = time.monotonic() - started

                connection.rollback()
        finally:
            holder.dispose()

        assert elapsed < 10
        assert current_revision(settings) == head_revision()
