"""The probability sums behind the risk score, against PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.policy import ScoredExchange
from storage.activity import TimeWindow
from storage.exchanges import ExchangeRepository
from storage.risk import population_sums, top_contributions, user_sums
from tests.storage.factories import NOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

DAY = TimeWindow.ending(NOW, timedelta(hours=24))


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange]) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, batch)


def _exchanges() -> list[ScoredExchange]:
    return [
        scored_exchange(user_id="alice", probs={"im_sorry": 0.5, "i_cant": 0.01}, exchange_id="a1"),
        scored_exchange(user_id="alice", probs={"im_sorry": 0.3, "i_cant": 0.02}, exchange_id="a2"),
        # Not counted: refused, override, outside the window.
        scored_exchange(user_id="alice", probs={"im_sorry": 0.9, "i_cant": 0.9}, outcome="refused"),
        scored_exchange(user_id="alice", probs={"im_sorry": 0.9, "i_cant": 0.9}, override=True),
        scored_exchange(user_id="alice", probs={"im_sorry": 0.9, "i_cant": 0.9}, age=timedelta(days=2)),
        scored_exchange(user_id="bob", probs={"im_sorry": 0.1, "i_cant": 0.001}, exchange_id="b1"),
    ]


def test_user_sums_count_answered_only(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _exchanges())

    with session_factory() as session:
        sums = user_sums(session, ["alice", "bob", "nobody"], DAY)

    assert set(sums) == {"alice", "bob"}
    alice = sums["alice"]["im_sorry"]
    assert alice.sums.count == 2
    assert alice.sums.total == pytest.approx(0.8)
    assert alice.sums.total_squares == pytest.approx(0.25 + 0.09)
    assert alice.slip_throughs == 2  # im_sorry threshold 0.05
    assert alice.max_prob == pytest.approx(0.5)
    assert sums["alice"]["i_cant"].slip_throughs == 1  # 0.02 is at the i_cant threshold, 0.01 below it
    assert sums["bob"]["im_sorry"].sums.count == 1


def test_population_sums_cover_all_users(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _exchanges())

    with session_factory() as session:
        population = population_sums(session, DAY)

    assert population["im_sorry"].count == 3
    assert population["im_sorry"].total == pytest.approx(0.9)
    assert population["i_cant"].total == pytest.approx(0.031)


def test_top_contributions_largest_first(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _exchanges())

    with session_factory() as session:
        evidence = top_contributions(session, "alice", DAY, limit=3)

    assert evidence == [("a1", "im_sorry", pytest.approx(0.5)), ("a2", "im_sorry", pytest.approx(0.3)), ("a2", "i_cant", pytest.approx(0.02))]
