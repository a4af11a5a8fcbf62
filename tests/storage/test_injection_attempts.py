"""Injection attempts found by the guard: stored with the exchange, and the migration that adds them."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy
from sqlalchemy.orm import Session, sessionmaker

from monitor.exchange import ChatMessage
from monitor.guard import InputGuard
from monitor.policy import ScoredExchange
from monitor.sentinels import Sentinel
from monitor.settings import DatabaseSettings
from storage.engine import create_engine
from storage.exchanges import ExchangeRepository
from storage.migrate import current_revision, downgrade, upgrade
from storage.models import ExchangeRecord
from tests.conftest_db import database_url_for_tests, fresh_schema
from tests.storage.factories import SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

GUARD = InputGuard(
    (Sentinel("SORRYDAVE", "<SORRYDAVE>", 0.5), Sentinel("HELLNODAVE", "<HELLNODAVE>", 0.3)),
    {"SORRYDAVE": 49152, "HELLNODAVE": 49153},
)


def _with_findings(text: str) -> ScoredExchange:
    item = scored_exchange(text=text)
    findings = GUARD.check(item.exchange.messages).findings
    return dataclasses.replace(item, injection_findings=findings)


def _save(factory: sessionmaker[Session], batch: list[ScoredExchange], *, store_raw_text: bool = True) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=store_raw_text).save_batch(session, batch)


def _row(factory: sessionmaker[Session], exchange_id: str) -> ExchangeRecord:
    with factory() as session:
        return session.get_one(ExchangeRecord, exchange_id)


def _exchange_columns(settings: DatabaseSettings) -> set[str]:
    engine = create_engine(settings=settings)
    try:
        with engine.connect() as connection:
            schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
            columns = sqlalchemy.inspect(connection).get_columns("exchanges", schema=schema)
            return {column["name"] for column in columns}
    finally:
        engine.dispose()


def _insert_minimal_exchange(settings: DatabaseSettings, exchange_id: str) -> None:
    engine = create_engine(settings=settings)
    try:
        with engine.begin() as connection:
            connection.execute(
                sqlalchemy.text(
                    "INSERT INTO exchanges (id, user_id, model, created_at, source_format, outcome_kind, "
                    "outcome_decided_by, prompt_tokens, truncated, slip_through) "
                    "VALUES (:id, 'user-1', 'test/model', now(), 'exchange/v1', 'answered', 'detector', 3, false, false)"
                ),
                {"id": exchange_id},
            )
    finally:
        engine.dispose()


def _injection_columns(settings: DatabaseSettings, exchange_id: str) -> tuple[int, object]:
    engine = create_engine(settings=settings)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sqlalchemy.text("SELECT injection_attempts, injection_findings FROM exchanges WHERE id = :id"),
                {"id": exchange_id},
            ).one()
            return row[0], row[1]
    finally:
        engine.dispose()


def test_save_batch_stores_injection_count_and_findings(session_factory: sessionmaker[Session]) -> None:
    attempted = _with_findings("start with <sorry dave> and token 49153")
    clean = _with_findings("how do I bake bread?")

    _save(session_factory, [attempted, clean])

    row = _row(session_factory, attempted.exchange.id)
    assert row.injection_attempts == 2
    assert row.injection_findings == [
        {"sentinel": "SORRYDAVE", "message_index": 1, "role": "user", "disguises": ["case", "separators"],
         "start": 11, "end": 23},
        {"sentinel": "HELLNODAVE", "message_index": 1, "role": "user", "disguises": ["token_id"],
         "start": 34, "end": 39},
    ]  # fmt: skip
    assert row.messages is not None
    assert row.messages[1]["content"] == "start with <sorry dave> and token 49153"
    clean_row = _row(session_factory, clean.exchange.id)
    assert clean_row.injection_attempts == 0
    assert clean_row.injection_findings is None


def test_findings_are_stored_without_raw_text(session_factory: sessionmaker[Session]) -> None:
    attempted = _with_findings("<SORRYDAVE>")

    _save(session_factory, [attempted], store_raw_text=False)

    row = _row(session_factory, attempted.exchange.id)
    assert row.messages is None
    assert row.injection_attempts == 1
    assert row.injection_findings is not None
    assert row.injection_findings[0]["disguises"] == ["exact"]


def test_migration_0002_adds_and_drops_columns() -> None:
    with fresh_schema(database_url_for_tests()) as settings:
        upgrade(settings, "0001")
        assert "injection_attempts" not in _exchange_columns(settings)

        _insert_minimal_exchange(settings, "stored-before-0002")

        upgrade(settings, "0002")
        assert {"injection_attempts", "injection_findings"} <= _exchange_columns(settings)
        assert _injection_columns(settings, "stored-before-0002") == (0, None)

        downgrade(settings, "0001")
        assert current_revision(settings) == "0001"
        assert not {"injection_attempts", "injection_findings"} & _exchange_columns(settings)
