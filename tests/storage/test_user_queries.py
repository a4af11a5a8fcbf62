"""Tests of monitor.users, the per-user risk queries, against PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.flag_users import run_flag_job
from monitor.policy import ScoredExchange
from monitor.settings import FlagSettings
from monitor.users import show_user, top_users
from storage.exchanges import ExchangeRepository
from storage.flags import list_user_flags, set_flag_status
from tests.storage.factories import LOW, NOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

DAY = timedelta(hours=24)


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange]) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, batch)


def _population() -> list[ScoredExchange]:
    return [
        # alice: 3 slip-throughs, highest im_sorry 0.7, plus one quiet exchange.
        scored_exchange(user_id="alice", probs={"im_sorry": 0.2, "i_cant": 0.001}),
        scored_exchange(user_id="alice", probs={"im_sorry": 0.7, "i_cant": 0.001}),
        scored_exchange(user_id="alice", probs={"im_sorry": 0.001, "i_cant": 0.5}),
        scored_exchange(user_id="alice", probs=LOW),
        # bob: 3 slip-throughs too, but a lower maximum.
        scored_exchange(user_id="bob", probs={"im_sorry": 0.3, "i_cant": 0.001}),
        scored_exchange(user_id="bob", probs={"im_sorry": 0.3, "i_cant": 0.001}),
        scored_exchange(user_id="bob", probs={"im_sorry": 0.3, "i_cant": 0.001}),
        # carol: 1 slip-through, 1 refused, 1 override, 1 outside the window.
        scored_exchange(user_id="carol", probs={"im_sorry": 0.9, "i_cant": 0.9}),
        scored_exchange(user_id="carol", outcome="refused"),
        scored_exchange(user_id="carol", override=True),
        scored_exchange(user_id="carol", age=timedelta(days=3)),
        # dave: only quiet exchanges.
        scored_exchange(user_id="dave", probs=LOW),
    ]


def test_top_users_ranking_order(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())

    with session_factory() as session:
        users = top_users(session, window=DAY, now=NOW, limit=10)

    assert [user.user_id for user in users] == ["alice", "bob", "carol"]


def test_top_users_counts_and_maxima(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())

    with session_factory() as session:
        users = {user.user_id: user for user in top_users(session, window=DAY, now=NOW, limit=10)}

    alice = users["alice"]
    assert (alice.exchanges, alice.slip_throughs, alice.overrides) == (4, 3, 0)
    assert alice.max_prob == pytest.approx(0.7)
    assert alice.max_prob_by_sentinel == pytest.approx({"im_sorry": 0.7, "i_cant": 0.5})
    assert alice.flag_status is None
    carol = users["carol"]
    assert (carol.exchanges, carol.slip_throughs, carol.overrides) == (3, 1, 1)
    assert carol.max_prob_by_sentinel == pytest.approx({"im_sorry": 0.9, "i_cant": 0.9})


def test_top_users_respects_limit(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())

    with session_factory() as session:
        users = top_users(session, window=DAY, now=NOW, limit=1)

    assert [user.user_id for user in users] == ["alice"]


def test_top_users_shows_flag_status(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())
    run_flag_job(session_factory, FlagSettings(min_slip_throughs=3, window_s=86_400, min_risk=0.0), now=NOW)

    with session_factory() as session:
        users = {user.user_id: user for user in top_users(session, window=DAY, now=NOW, limit=10)}

    assert users["alice"].flag_status == "open"
    assert users["bob"].flag_status == "open"
    assert users["carol"].flag_status is None


def test_top_users_empty_window(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())

    with session_factory() as session:
        assert top_users(session, window=DAY, now=NOW - timedelta(days=30), limit=10) == []


def test_show_user_counts_flags_and_evidence(session_factory: sessionmaker[Session]) -> None:
    population = _population()
    _save(session_factory, population)
    run_flag_job(session_factory, FlagSettings(min_slip_throughs=3, window_s=86_400, min_risk=0.0), now=NOW)
    alice_slip_ids = sorted(
        item.exchange.id for item in population if item.exchange.user_id == "alice" and item.slip_throughs
    )

    with session_factory() as session:
        detail = show_user(session, "alice", window=DAY, now=NOW)

    assert detail is not None
    assert (detail.exchanges, detail.slip_throughs, detail.overrides) == (4, 3, 0)
    assert len(detail.flags) == 1
    assert detail.flags[0].rule == "slip_throughs>=3/24h"
    assert detail.flags[0].status == "open"
    assert sorted(detail.flags[0].exchange_ids) == alice_slip_ids
    assert sorted(exchange.id for exchange in detail.evidence) == alice_slip_ids
    strongest = max(detail.evidence, key=lambda exchange: exchange.probabilities["im_sorry"])
    assert strongest.probabilities == pytest.approx({"im_sorry": 0.7, "i_cant": 0.001})
    assert strongest.slip_through_sentinels == ("im_sorry",)
    assert strongest.outcome == "answered"


def test_show_user_json_has_no_raw_text(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())
    run_flag_job(session_factory, FlagSettings(min_slip_throughs=3, window_s=86_400, min_risk=0.0), now=NOW)

    with session_factory() as session:
        detail = show_user(session, "alice", window=DAY, now=NOW)

    assert detail is not None
    document = json.dumps(detail.as_json())
    assert "pick a lock" not in document
    assert "be helpful" not in document
    assert json.loads(document)["flags"][0]["status"] == "open"


def test_show_user_keeps_flag_evidence_outside_window(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())
    run_flag_job(session_factory, FlagSettings(min_slip_throughs=3, window_s=86_400, min_risk=0.0), now=NOW)

    with session_factory() as session:
        detail = show_user(session, "bob", window=DAY, now=NOW + timedelta(days=10))

    assert detail is not None
    assert detail.exchanges == 0
    assert len(detail.flags) == 1
    assert len(detail.evidence) == 3


def test_show_user_reflects_review_status(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())
    run_flag_job(session_factory, FlagSettings(min_slip_throughs=3, window_s=86_400, min_risk=0.0), now=NOW)
    with session_factory() as session, session.begin():
        flag_id = list_user_flags(session, "bob")[0].id
        assert set_flag_status(session, flag_id, "acknowledged", now=NOW) is True

    with session_factory() as session:
        detail = show_user(session, "bob", window=DAY, now=NOW)

    assert detail is not None
    assert detail.flags[0].status == "acknowledged"


def test_show_user_quiet_user(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())

    with session_factory() as session:
        detail = show_user(session, "dave", window=DAY, now=NOW)

    assert detail is not None
    assert (detail.exchanges, detail.slip_throughs) == (1, 0)
    assert detail.flags == ()
    assert detail.evidence == ()


def test_show_user_unknown_user(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population())

    with session_factory() as session:
        assert show_user(session, "nobody", window=DAY, now=NOW) is None
