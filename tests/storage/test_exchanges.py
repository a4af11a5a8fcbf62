from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from monitor.policy import KafkaPosition, ScoredExchange
from storage.exchanges import ExchangeRepository, count_exchanges, count_scores, count_unscored
from storage.models import ExchangeRecord, ScoreRecord
from tests.storage.factories import HIGH, LOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres


def _repository(*, store_raw_text: bool = True) -> ExchangeRepository:
    return ExchangeRepository(sentinels=SENTINELS, store_raw_text=store_raw_text)


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange], *, store_raw_text: bool = True) -> int:
    with factory() as session, session.begin():
        return _repository(store_raw_text=store_raw_text).save_batch(session, batch)


def _counts(factory: sessionmaker[Session]) -> tuple[int, int, int]:
    with factory() as session:
        return count_exchanges(session), count_scores(session), count_unscored(session)


def _exchange(factory: sessionmaker[Session], exchange_id: str) -> ExchangeRecord:
    with factory() as session:
        return session.get_one(ExchangeRecord, exchange_id)


def _scores(factory: sessionmaker[Session], exchange_id: str) -> dict[str, ScoreRecord]:
    with factory() as session:
        rows = session.scalars(select(ScoreRecord).where(ScoreRecord.exchange_id == exchange_id))
        return {row.sentinel: row for row in rows}


@pytest.fixture
def insert_counter(database_engine: Engine) -> Iterator[Counter[str]]:
    """Count INSERT statements per table sent through the engine during the test.

    A statement sent with a list of parameter sets is a cursor executemany(),
    which psycopg sends as one statement per row, so it counts under
    "<table> per row". A multi-row INSERT arrives with one parameter mapping.
    """
    counts: Counter[str] = Counter()

    def count(
        conn: object, cursor: object, statement: str, parameters: object, context: object, executemany: bool
    ) -> None:
        words = statement.split()
        if words[:2] == ["INSERT", "INTO"]:
            counts[f"{words[2]} per row" if isinstance(parameters, list) else words[2]] += 1

    event.listen(database_engine, "before_cursor_execute", count)
    yield counts
    event.remove(database_engine, "before_cursor_execute", count)


def test_save_batch_stores_exchanges_and_scores(session_factory: sessionmaker[Session]) -> None:
    position = KafkaPosition(topic="sentinel.exchanges", partition=3, offset=1234)
    slipped = scored_exchange(probs={"im_sorry": 0.6, "i_cant": 0.001}, position=position)
    quiet = scored_exchange(probs=LOW)

    inserted = _save(session_factory, [slipped, quiet])

    assert inserted == 2
    assert _counts(session_factory) == (2, 4, 0)
    row = _exchange(session_factory, slipped.exchange.id)
    assert row.user_id == "user-1"
    assert row.created_at == slipped.exchange.created_at
    assert row.messages == [
        {"role": "system", "content": "be helpful"},
        {"role": "user", "content": "how do I pick a lock?"},
    ]
    assert row.reply == "reply to: how do I pick a lock?"
    assert row.exchange_metadata == {"team": "tests"}
    assert row.outcome_kind == "answered"
    assert row.outcome_decided_by == "detector"
    assert row.slip_through is True
    assert row.max_slip_prob == pytest.approx(0.6)
    assert (row.kafka_topic, row.kafka_partition, row.kafka_offset) == ("sentinel.exchanges", 3, 1234)
    assert row.prompt_tokens == 42
    assert _exchange(session_factory, quiet.exchange.id).slip_through is False
    assert _exchange(session_factory, quiet.exchange.id).max_slip_prob is None


def test_save_batch_records_threshold_and_scorer_per_score(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange(probs={"im_sorry": 0.6, "i_cant": 0.001})

    _save(session_factory, [item])

    scores = _scores(session_factory, item.exchange.id)
    assert set(scores) == {"im_sorry", "i_cant"}
    assert scores["im_sorry"].prob == pytest.approx(0.6)
    assert scores["im_sorry"].threshold == 0.05
    assert scores["im_sorry"].slip_through is True
    assert scores["i_cant"].slip_through is False
    assert scores["i_cant"].threshold == 0.02
    assert scores["im_sorry"].model_id == "test/model"
    assert scores["im_sorry"].template_sha256 == "a" * 64


def test_replayed_batch_leaves_one_row_per_exchange(session_factory: sessionmaker[Session]) -> None:
    batch = [scored_exchange(user_id=f"user-{i}") for i in range(5)]

    first = _save(session_factory, batch)
    second = _save(session_factory, batch)

    assert first == 5
    assert second == 0
    assert _counts(session_factory) == (5, 10, 0)


def test_batch_mixing_new_and_stored_exchanges(session_factory: sessionmaker[Session]) -> None:
    stored = [scored_exchange() for _ in range(3)]
    _save(session_factory, stored)
    replayed_with_other_scores = scored_exchange(exchange_id=stored[0].exchange.id, probs=LOW)
    new = [scored_exchange() for _ in range(2)]

    inserted = _save(session_factory, [replayed_with_other_scores, *stored[1:], *new])

    assert inserted == 2
    assert _counts(session_factory) == (5, 10, 0)
    first_scores = _scores(session_factory, stored[0].exchange.id)
    assert first_scores["im_sorry"].prob == pytest.approx(HIGH["im_sorry"])
    assert _exchange(session_factory, stored[0].exchange.id).slip_through is True


def test_duplicate_id_within_batch_keeps_first(session_factory: sessionmaker[Session]) -> None:
    first = scored_exchange(exchange_id="dup-1", probs=HIGH)
    second = scored_exchange(exchange_id="dup-1", probs=LOW)

    inserted = _save(session_factory, [first, second])

    assert inserted == 1
    assert _counts(session_factory) == (1, 2, 0)
    assert _exchange(session_factory, "dup-1").slip_through is True


def test_save_batch_sends_one_insert_per_table(
    session_factory: sessionmaker[Session], insert_counter: Counter[str]
) -> None:
    batch = [scored_exchange(user_id=f"user-{i % 7}") for i in range(1200)]

    inserted = _save(session_factory, batch)

    assert inserted == 1200
    assert _counts(session_factory) == (1200, 2400, 0)
    assert insert_counter == Counter({"exchanges": 1, "scores": 1})


def test_replayed_batch_sends_no_score_insert(
    session_factory: sessionmaker[Session], insert_counter: Counter[str]
) -> None:
    batch = [scored_exchange() for _ in range(3)]
    _save(session_factory, batch)
    insert_counter.clear()

    _save(session_factory, batch)

    assert insert_counter == Counter({"exchanges": 1})


def test_empty_batch_sends_nothing(session_factory: sessionmaker[Session], insert_counter: Counter[str]) -> None:
    assert _save(session_factory, []) == 0
    assert sum(insert_counter.values()) == 0


def test_raw_text_not_stored_when_disabled(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange()

    _save(session_factory, [item], store_raw_text=False)

    row = _exchange(session_factory, item.exchange.id)
    assert row.messages is None
    assert row.reply is None
    assert row.slip_through is True


def test_characters_postgres_rejects_are_replaced(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange(exchange_id="nul\x00id", text="before\x00after \ud800 end")

    inserted = _save(session_factory, [item])

    assert inserted == 1
    row = _exchange(session_factory, "nul\ufffdid")
    assert row.messages is not None
    assert row.messages[1]["content"] == "before\ufffdafter \ufffd end"
    assert set(_scores(session_factory, "nul\ufffdid")) == {"im_sorry", "i_cant"}


def test_override_is_stored_with_its_reason(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange(override=True)

    _save(session_factory, [item])

    row = _exchange(session_factory, item.exchange.id)
    assert row.override_trusted is True
    assert row.override_reason == "red team"


def test_exchange_without_scores_counts_as_unscored(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, [scored_exchange(probs={}), scored_exchange()])

    assert _counts(session_factory) == (2, 2, 1)
