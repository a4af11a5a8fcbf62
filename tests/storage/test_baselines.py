"""The cached population sums against a live aggregate over the same PostgreSQL rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.baselines import run_baseline_job
from monitor.policy import ScoredExchange
from monitor.risk import ProbabilitySums
from monitor.settings import RiskSettings
from monitor.user_risk import risk_for_users, user_risk
from storage.activity import TimeWindow
from storage.baselines import (
    BASELINE_LOCK,
    PopulationBaseline,
    baseline_key,
    cached_population_sums,
    load_baselines,
    store_baseline,
)
from storage.exchanges import ExchangeRepository
from storage.job_runs import try_advisory_xact_lock
from storage.models import PopulationBaselineRecord
from storage.risk import population_sums
from tests.storage.factories import NOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

HOUR = timedelta(hours=1)
MAX_AGE = timedelta(minutes=5)
KEY = baseline_key(3600)


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange]) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, batch)


def _population(count: int, *, start: timedelta, user_prefix: str = "user") -> list[ScoredExchange]:
    """Answered exchanges of four users, one every 5 minutes back from `start` before NOW, with varied probabilities."""
    return [
        scored_exchange(
            user_id=f"{user_prefix}-{i % 4}",
            age=start + timedelta(minutes=5 * i),
            probs={"im_sorry": 0.01 + 0.07 * (i % 5), "i_cant": 0.002 * (i % 7)},
        )
        for i in range(count)
    ]


def _cached(factory: sessionmaker[Session], window: TimeWindow) -> dict[str, ProbabilitySums]:
    with factory() as session, session.begin():
        return cached_population_sums(session, {KEY: window}, max_age=MAX_AGE)[KEY]


def _live(factory: sessionmaker[Session], window: TimeWindow) -> dict[str, ProbabilitySums]:
    with factory() as session:
        return population_sums(session, window)


def _assert_same(cached: dict[str, ProbabilitySums], live: dict[str, ProbabilitySums]) -> None:
    assert set(cached) == set(live)
    for sentinel, sums in live.items():
        assert cached[sentinel].count == sums.count, sentinel
        assert cached[sentinel].total == pytest.approx(sums.total), sentinel
        assert cached[sentinel].total_squares == pytest.approx(sums.total_squares), sentinel


def _assert_close(cached: object, live: object, where: str) -> None:
    """Compare nested JSON values, numbers to a relative 1e-9, because the cache adds and subtracts in another order."""
    if isinstance(live, dict):
        assert isinstance(cached, dict) and cached.keys() == live.keys(), where
        for key in live:
            _assert_close(cached[key], live[key], f"{where}.{key}")
    elif isinstance(live, (list, tuple)):
        assert isinstance(cached, (list, tuple)) and len(cached) == len(live), where
        for index, (first, second) in enumerate(zip(cached, live)):
            _assert_close(first, second, f"{where}[{index}]")
    elif isinstance(live, float):
        assert cached == pytest.approx(live, rel=1e-9, abs=1e-12), where
    else:
        assert cached == live, where


def _stored(factory: sessionmaker[Session]) -> dict[int, PopulationBaseline]:
    with factory() as session:
        return load_baselines(session)[0]


def test_missing_baseline_computed_and_stored(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(10, start=timedelta(minutes=1)))
    window = TimeWindow.ending(NOW, HOUR)

    cached = _cached(session_factory, window)

    _assert_same(cached, _live(session_factory, window))
    stored = _stored(session_factory)
    assert set(stored) == {KEY}
    assert stored[KEY].window == window
    assert stored[KEY].sums == cached


def test_fresh_baseline_reused_not_recomputed(session_factory: sessionmaker[Session]) -> None:
    # The stored sums are invented: had the query summed the window, it would find no rows.
    window = TimeWindow.ending(NOW, HOUR)
    invented = {"im_sorry": ProbabilitySums(7, 1.5, 0.5)}
    with session_factory() as session, session.begin():
        clock = session.execute(select(func.clock_timestamp())).scalar_one()
        store_baseline(session, PopulationBaseline(KEY, window, clock, invented))

    assert _cached(session_factory, window) == invented


def test_fresh_baseline_corrected_to_live(session_factory: sessionmaker[Session]) -> None:
    # Rows near both ends of the hour, so that moving the window adds and removes some.
    _save(session_factory, _population(12, start=timedelta(seconds=30)))
    _cached(session_factory, TimeWindow.ending(NOW, HOUR))

    # Ingested after the baseline: inside the window, and just outside its old end.
    _save(session_factory, _population(3, start=timedelta(minutes=2), user_prefix="late"))
    _save(session_factory, [scored_exchange(user_id="late-x", age=-timedelta(minutes=1), probs={"im_sorry": 0.9})])
    for shift in (timedelta(0), timedelta(minutes=2), timedelta(minutes=4), -timedelta(minutes=3)):
        window = TimeWindow.ending(NOW + shift, HOUR)
        _assert_same(_cached(session_factory, window), _live(session_factory, window))


def test_stale_baseline_recomputed(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(10, start=timedelta(minutes=1)))
    old_window = TimeWindow.ending(NOW - timedelta(minutes=30), HOUR)
    with session_factory() as session, session.begin():
        clock = session.execute(select(func.clock_timestamp())).scalar_one()
        store_baseline(session, PopulationBaseline(KEY, old_window, clock, {"im_sorry": ProbabilitySums(1, 0.5, 0.25)}))
    window = TimeWindow.ending(NOW, HOUR)

    cached = _cached(session_factory, window)

    _assert_same(cached, _live(session_factory, window))
    assert _stored(session_factory)[KEY].window == window


def test_baseline_computed_long_ago_recomputed(session_factory: sessionmaker[Session]) -> None:
    window = TimeWindow.ending(NOW, HOUR)
    long_ago = datetime.now(timezone.utc) - MAX_AGE - timedelta(minutes=1)
    with session_factory() as session, session.begin():
        store_baseline(session, PopulationBaseline(KEY, window, long_ago, {"im_sorry": ProbabilitySums(1, 0.5, 0.25)}))
    _save(session_factory, _population(5, start=timedelta(minutes=1)))

    _assert_same(_cached(session_factory, window), _live(session_factory, window))
    assert _stored(session_factory)[KEY].computed_at > long_ago


def test_older_window_does_not_replace_newer(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(10, start=timedelta(minutes=1)))
    _cached(session_factory, TimeWindow.ending(NOW, HOUR))
    past = TimeWindow.ending(NOW - timedelta(hours=3), HOUR)

    _assert_same(_cached(session_factory, past), _live(session_factory, past))
    assert _stored(session_factory)[KEY].window.end == NOW


def test_read_only_transaction_still_answers(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(6, start=timedelta(minutes=1)))
    window = TimeWindow.ending(NOW, HOUR)

    with session_factory() as session, session.begin():
        session.execute(select(func.set_config("transaction_read_only", "on", True)))
        cached = cached_population_sums(session, {KEY: window}, max_age=MAX_AGE)[KEY]

    _assert_same(cached, _live(session_factory, window))
    assert _stored(session_factory) == {}


def test_lock_held_elsewhere_skips_store(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(6, start=timedelta(minutes=1)))
    window = TimeWindow.ending(NOW, HOUR)

    with session_factory() as holder, holder.begin():
        assert try_advisory_xact_lock(holder, BASELINE_LOCK)
        cached = _cached(session_factory, window)

    _assert_same(cached, _live(session_factory, window))
    assert _stored(session_factory) == {}


def test_zero_max_age_always_live(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(6, start=timedelta(minutes=1)))
    window = TimeWindow.ending(NOW, HOUR)

    with session_factory() as session, session.begin():
        sums = cached_population_sums(session, {KEY: window}, max_age=timedelta(0))[KEY]

    _assert_same(sums, _live(session_factory, window))
    assert _stored(session_factory) == {}


def test_user_risk_cached_matches_live(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(40, start=timedelta(minutes=1)))
    _save(session_factory, [scored_exchange(user_id="mallory", probs={"im_sorry": 0.8, "i_cant": 0.3}) for _ in range(4)])
    cached_settings = RiskSettings(windows_s=(3600, 86_400))
    live_settings = RiskSettings(windows_s=(3600, 86_400), baseline_max_age_s=0)
    with session_factory() as session, session.begin():
        user_risk(session, "mallory", cached_settings, now=NOW)  # fills the cache
    # The day before has no exchange, so it stores no row.
    assert set(_stored(session_factory)) == {3600, -3600, 86_400}

    _save(session_factory, [scored_exchange(user_id="user-1", probs={"im_sorry": 0.5, "i_cant": 0.1})])
    for now in (NOW, NOW + timedelta(minutes=3)):
        for user in ("mallory", "user-1", "nobody"):
            with session_factory() as session:
                cached = [window.as_json() for window in user_risk(session, user, cached_settings, now=now)]
                live = [window.as_json() for window in user_risk(session, user, live_settings, now=now)]
            _assert_close(cached, live, f"{user} at {now.isoformat()}")


def test_risk_for_users_cached_matches_live(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(20, start=timedelta(minutes=1)))
    window = TimeWindow.ending(NOW, HOUR)
    users = ["user-0", "user-1", "nobody"]
    with session_factory() as session, session.begin():
        risk_for_users(session, users, window, RiskSettings())
    _save(session_factory, [scored_exchange(user_id="user-2", probs={"im_sorry": 0.7, "i_cant": 0.2})])

    with session_factory() as session:
        cached = risk_for_users(session, users, window, RiskSettings())
        live = risk_for_users(session, users, window, RiskSettings(baseline_max_age_s=0))

    for user in users:
        assert cached[user][0] == pytest.approx(live[user][0]), user
        _assert_close([p.as_json() for p in cached[user][1]], [p.as_json() for p in live[user][1]], user)


def test_baseline_job_refreshes_and_skips_same_tick(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _population(20, start=timedelta(minutes=1)))

    first = run_baseline_job(session_factory, [3600, 86_400, 3600], now=NOW, tick_s=120)
    second = run_baseline_job(session_factory, [3600, 86_400], now=NOW, tick_s=120)

    assert first.status == "ok"
    assert sorted(first.keys) == [-86_400, -3600, 3600, 86_400]
    assert second.status == "skipped"
    stored = _stored(session_factory)
    assert stored[3600].window == TimeWindow.ending(NOW, HOUR)
    assert stored[-3600].window == TimeWindow.ending(NOW - HOUR, HOUR)
    _assert_same(stored[86_400].sums, _live(session_factory, TimeWindow.ending(NOW, timedelta(days=1))))


def test_baseline_job_skips_while_locked(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as holder, holder.begin():
        assert try_advisory_xact_lock(holder, BASELINE_LOCK)
        result = run_baseline_job(session_factory, [3600], now=NOW)

    assert result.status == "skipped"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(PopulationBaselineRecord)) == 0


def test_baseline_key_rejects_non_positive() -> None:
    assert baseline_key(60) == 60
    assert baseline_key(60, previous=True) == -60
    with pytest.raises(ValueError, match="must be positive"):
        baseline_key(0)


def test_cache_behind_user_rows_clamped(session_factory: sessionmaker[Session]) -> None:
    # A cached population smaller than the user's own sums, as when the cache missed the user's newest rows.
    _save(session_factory, [scored_exchange(user_id="mallory", probs={"im_sorry": 0.8, "i_cant": 0.3}) for _ in range(3)])
    window = TimeWindow.ending(NOW, HOUR)
    with session_factory() as session, session.begin():
        clock = session.execute(select(func.clock_timestamp())).scalar_one()
        store_baseline(session, PopulationBaseline(KEY, window, clock, {"im_sorry": ProbabilitySums(1, 0.8, 0.64)}))

    with session_factory() as session:
        report = user_risk(session, "mallory", RiskSettings(windows_s=(3600,)), now=NOW)[0]

    parts = {part.sentinel: part for part in report.sentinels}
    assert set(parts) == {"im_sorry", "i_cant"}
    assert parts["im_sorry"].answered == 3
    assert parts["im_sorry"].population_mean == 0.0
    assert parts["im_sorry"].population_std == 0.0
    assert parts["im_sorry"].excess == pytest.approx(2.4)
