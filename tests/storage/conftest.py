"""PostgreSQL fixtures shared with the other database tests (see tests/conftest_db.py)."""

from tests.conftest_db import database_engine, database_settings, session_factory

__all__ = ["database_engine", "database_settings", "session_factory"]
