"""The probability sums behind the risk score, against PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.policy import ScoredExchange
from storage.activity import ExchangeCounts, TimeWindow, count_user_exchanges
from storage.exchanges import ExchangeRepository
from storage.risk import (
    count_user_exchanges_by_window,
    population_sums,
    top_contributions,
    top_contributions_by_window,
    user_sums,
    user_sums_by_window,
)
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


def test_user_sums_by_window_match_one_window_queries(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _exchanges())
    windows = [
        DAY,
        TimeWindow.ending(NOW, timedelta(minutes=1)),  # before any exchange: empty
        TimeWindow.ending(NOW - timedelta(hours=24), timedelta(hours=48)),  # contains the 2-day-old exchange
        TimeWindow.ending(NOW, timedelta(days=3)),
    ]

    with session_factory() as session:
        by_window = user_sums_by_window(session, "alice", windows)
        one_by_one = [user_sums(session, ["alice"], window).get("alice", {}) for window in windows]

    assert len(by_window) == len(windows)
    assert by_window[1] == {}
    assert by_window[2]["im_sorry"].sums.count == 1
    for index, (combined, single) in enumerate(zip(by_window, one_by_one)):
        assert combined.keys() == single.keys(), index
        for sentinel, entry in single.items():
            assert combined[sentinel].sums.count == entry.sums.count, (index, sentinel)
            assert combined[sentinel].sums.total == pytest.approx(entry.sums.total), (index, sentinel)
            assert combined[sentinel].sums.total_squares == pytest.approx(entry.sums.total_squares), (index, sentinel)
            assert combined[sentinel].slip_throughs == entry.slip_throughs, (index, sentinel)
            assert combined[sentinel].max_prob == pytest.approx(entry.max_prob), (index, sentinel)


def test_user_sums_by_window_without_windows(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        assert user_sums_by_window(session, "alice", []) == []


def test_counts_by_window_match_one_window_queries(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _exchanges())
    windows = [DAY, TimeWindow.ending(NOW, timedelta(minutes=1)), TimeWindow.ending(NOW, timedelta(days=3))]

    with session_factory() as session:
        by_window = count_user_exchanges_by_window(session, "alice", windows)
        one_by_one = [count_user_exchanges(session, ["alice"], window).get("alice") for window in windows]

    assert by_window[0] == one_by_one[0]
    assert by_window[1] == ExchangeCounts(exchanges=0, slip_throughs=0, overrides=0, injection_attempts=0)
    assert one_by_one[1] is None
    assert by_window[2] == one_by_one[2]
    assert by_window[2].exchanges == 5
    assert by_window[2].overrides == 1


def test_top_contributions_by_window_match_one_window_queries(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _exchanges())
    windows = [DAY, TimeWindow.ending(NOW, timedelta(minutes=1)), TimeWindow.ending(NOW, timedelta(days=3))]

    with session_factory() as session:
        by_window = top_contributions_by_window(session, "alice", windows, limit=3)
        one_by_one = [top_contributions(session, "alice", window, limit=3) for window in windows]

    assert by_window == one_by_one
    assert by_window[1] == []
    assert by_window[2][0][2] == pytest.approx(0.9)  # the 2-day-old exchange
