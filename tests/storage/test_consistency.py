from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.exchange import ChatMessage
from monitor.policy import ScoredExchange
from storage.activity import TimeWindow
from storage.consistency import RecentRequests, load_recent_requests
from storage.exchanges import ExchangeRepository
from tests.storage.factories import HIGH, LOW, NOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

WINDOW = TimeWindow.ending(NOW, timedelta(hours=1))


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange], *, store_raw_text: bool = True) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=store_raw_text).save_batch(session, batch)


def _load(factory: sessionmaker[Session], *, limit: int = 100, model: str | None = None) -> RecentRequests:
    with factory() as session:
        return load_recent_requests(session, WINDOW, limit=limit, model=model)


def _minutes(count: int) -> timedelta:
    return timedelta(minutes=count)


def test_requests_oldest_first_with_probabilities(session_factory: sessionmaker[Session]) -> None:
    newer = scored_exchange(exchange_id="newer", age=_minutes(5), probs=LOW, text="bake bread")
    older = scored_exchange(exchange_id="older", age=_minutes(50), probs=HIGH, text="pick a lock")
    _save(session_factory, [newer, older])

    recent = _load(session_factory)

    assert [request.id for request in recent.requests] == ["older", "newer"]
    assert recent.requests[0].text == "pick a lock"
    assert recent.requests[0].probabilities == pytest.approx(HIGH)
    assert recent.requests[1].probabilities == pytest.approx(LOW)
    assert (recent.exchanges_read, recent.without_text, recent.unscored, recent.truncated) == (2, 0, 0, False)


def test_text_is_the_last_user_turn(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange(exchange_id="multi")
    conversation = (
        ChatMessage(role="system", content="be helpful"),
        ChatMessage(role="user", content="first question"),
        ChatMessage(role="assistant", content="first answer"),
        ChatMessage(role="user", content="second question"),
        ChatMessage(role="tool", content="tool output"),
    )
    _save(session_factory, [replace(item, exchange=replace(item.exchange, messages=conversation))])

    recent = _load(session_factory)

    assert [request.text for request in recent.requests] == ["second question"]


def test_window_is_half_open(session_factory: sessionmaker[Session]) -> None:
    at_end = scored_exchange(exchange_id="at-end", age=timedelta(0))
    at_start = scored_exchange(exchange_id="at-start", age=timedelta(hours=1))
    inside = scored_exchange(exchange_id="inside", age=_minutes(59))
    _save(session_factory, [at_end, at_start, inside])

    recent = _load(session_factory)

    assert [request.id for request in recent.requests] == ["inside", "at-end"]


def test_limit_keeps_newest_exchanges(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, [scored_exchange(exchange_id=f"ex-{age}", age=_minutes(age)) for age in range(1, 6)])

    truncated = _load(session_factory, limit=3)
    complete = _load(session_factory, limit=5)

    assert [request.id for request in truncated.requests] == ["ex-3", "ex-2", "ex-1"]
    assert truncated.truncated is True
    assert truncated.exchanges_read == 3
    assert complete.truncated is False
    assert complete.exchanges_read == 5


def test_model_filter(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange(exchange_id="other-model")
    other = replace(item, exchange=replace(item.exchange, model="other/model"))
    _save(session_factory, [other, scored_exchange(exchange_id="test-model")])

    recent = _load(session_factory, model="other/model")

    assert [request.id for request in recent.requests] == ["other-model"]
    assert recent.exchanges_read == 1


def test_exchanges_without_text_skipped(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, [scored_exchange(exchange_id="no-text")], store_raw_text=False)
    _save(session_factory, [scored_exchange(exchange_id="with-text")])

    recent = _load(session_factory)

    assert [request.id for request in recent.requests] == ["with-text"]
    assert recent.exchanges_read == 2
    assert recent.without_text == 1


def test_unscored_exchanges_skipped(session_factory: sessionmaker[Session]) -> None:
    item = scored_exchange(exchange_id="unscored")
    unscored = replace(item, score=replace(item.score, sentinels={}), slip_throughs=())
    _save(session_factory, [unscored, scored_exchange(exchange_id="scored")])

    recent = _load(session_factory)

    assert [request.id for request in recent.requests] == ["scored"]
    assert recent.unscored == 1
    assert recent.without_text == 0


def test_empty_window(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, [scored_exchange(age=timedelta(hours=2))])

    recent = _load(session_factory)

    assert recent.requests == ()
    assert (recent.exchanges_read, recent.without_text, recent.unscored, recent.truncated) == (0, 0, 0, False)


def test_non_positive_limit_is_rejected(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="limit 0"):
        _load(session_factory, limit=0)
