from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.flag_users import JOB_NAME, FlagRule, format_duration, run_flag_job
from monitor.policy import ScoredExchange
from monitor.settings import FlagSettings
from storage.exchanges import ExchangeRepository
from storage.flags import set_flag_status
from storage.job_runs import list_job_runs, try_advisory_xact_lock
from storage.models import FlagRecord, JobRunRecord
from tests.storage.factories import NOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

K = 3
SETTINGS = FlagSettings(min_slip_throughs=K, window_s=3600, interval_s=60, min_risk=0.0)
RULE = "slip_throughs>=3/1h"


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange]) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, batch)


def _slip_throughs(
    count: int, *, user_id: str = "mallory", age: timedelta = timedelta(minutes=10)
) -> list[ScoredExchange]:
    return [scored_exchange(user_id=user_id, age=age + timedelta(seconds=i)) for i in range(count)]


def _flags(factory: sessionmaker[Session]) -> list[FlagRecord]:
    with factory() as session:
        return list(session.scalars(select(FlagRecord).order_by(FlagRecord.user_id, FlagRecord.rule)))


def _runs(factory: sessionmaker[Session]) -> list[JobRunRecord]:
    with factory() as session:
        return list_job_runs(session, JOB_NAME)


def test_rule_name_formats_window() -> None:
    assert FlagRule.from_settings(SETTINGS).name == RULE
    assert format_duration(timedelta(hours=24)) == "24h"
    assert format_duration(timedelta(minutes=90)) == "90m"
    assert format_duration(timedelta(seconds=45)) == "45s"


def test_below_threshold_opens_no_flag(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K - 1))

    result = run_flag_job(session_factory, SETTINGS, now=NOW)

    assert result.status == "ok"
    assert result.users_over_threshold == 0
    assert _flags(session_factory) == []


def test_threshold_opens_one_flag(session_factory: sessionmaker[Session]) -> None:
    batch = _slip_throughs(K)
    _save(session_factory, batch)

    result = run_flag_job(session_factory, SETTINGS, now=NOW)

    assert (result.created, result.updated, result.unchanged) == (1, 0, 0)
    flags = _flags(session_factory)
    assert len(flags) == 1
    flag = flags[0]
    assert (flag.user_id, flag.rule, flag.status) == ("mallory", RULE, "open")
    assert flag.slip_through_count == K
    assert flag.window_s == 3600
    assert flag.max_prob == pytest.approx(0.6)
    assert flag.opened_at == NOW
    assert sorted(flag.evidence["exchange_ids"]) == sorted(item.exchange.id for item in batch)
    first_id = batch[0].exchange.id
    assert flag.evidence["probabilities"][first_id] == pytest.approx({"im_sorry": 0.6, "i_cant": 0.3})


def test_rerun_leaves_the_same_flag(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K))
    run_flag_job(session_factory, SETTINGS, now=NOW)
    before = _flags(session_factory)

    result = run_flag_job(session_factory, SETTINGS, now=NOW + timedelta(seconds=30))

    after = _flags(session_factory)
    assert (result.created, result.updated, result.unchanged) == (0, 0, 1)
    assert len(after) == 1
    assert after[0].id == before[0].id
    assert after[0].slip_through_count == K
    assert after[0].updated_at == before[0].updated_at
    assert after[0].evidence == before[0].evidence


def test_new_evidence_updates_count(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K))
    run_flag_job(session_factory, SETTINGS, now=NOW)
    newest = scored_exchange(user_id="mallory", age=timedelta(minutes=1))
    _save(session_factory, [newest])

    later = NOW + timedelta(minutes=1)
    result = run_flag_job(session_factory, SETTINGS, now=later)

    flags = _flags(session_factory)
    assert (result.created, result.updated) == (0, 1)
    assert len(flags) == 1
    assert flags[0].slip_through_count == K + 1
    assert newest.exchange.id in flags[0].evidence["exchange_ids"]
    assert flags[0].updated_at == later
    assert flags[0].opened_at == NOW


def test_overrides_do_not_count(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K - 1))
    _save(session_factory, [scored_exchange(user_id="mallory", override=True) for _ in range(3)])

    run_flag_job(session_factory, SETTINGS, now=NOW)

    assert _flags(session_factory) == []


def test_refused_exchanges_do_not_count(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K - 1))
    _save(session_factory, [scored_exchange(user_id="mallory", outcome="refused") for _ in range(3)])
    _save(session_factory, [scored_exchange(user_id="mallory", outcome="unknown") for _ in range(3)])

    run_flag_job(session_factory, SETTINGS, now=NOW)

    assert _flags(session_factory) == []


def test_exchanges_outside_window_do_not_count(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K - 1))
    _save(session_factory, _slip_throughs(2, age=timedelta(hours=1)))
    _save(session_factory, _slip_throughs(2, age=-timedelta(minutes=5)))

    run_flag_job(session_factory, SETTINGS, now=NOW)

    assert _flags(session_factory) == []


def test_each_user_counted_apart(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K, user_id="mallory"))
    _save(session_factory, _slip_throughs(K - 1, user_id="trudy"))
    _save(session_factory, _slip_throughs(K + 2, user_id="eve"))

    result = run_flag_job(session_factory, SETTINGS, now=NOW)

    flags = _flags(session_factory)
    assert result.created == 2
    assert [(flag.user_id, flag.slip_through_count) for flag in flags] == [("eve", K + 2), ("mallory", K)]


def test_resolved_flag_reopens_on_new_exchange(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K))
    run_flag_job(session_factory, SETTINGS, now=NOW)
    flag_id = _flags(session_factory)[0].id
    with session_factory() as session, session.begin():
        set_flag_status(session, flag_id, "resolved", now=NOW)

    run_flag_job(session_factory, SETTINGS, now=NOW + timedelta(seconds=10))
    assert _flags(session_factory)[0].status == "resolved"

    _save(session_factory, [scored_exchange(user_id="mallory", age=timedelta(minutes=1))])
    run_flag_job(session_factory, SETTINGS, now=NOW + timedelta(minutes=1))

    flag = _flags(session_factory)[0]
    assert flag.status == "open"
    assert flag.opened_at == NOW + timedelta(minutes=1)


def test_acknowledged_flag_keeps_status(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K))
    run_flag_job(session_factory, SETTINGS, now=NOW)
    with session_factory() as session, session.begin():
        set_flag_status(session, _flags(session_factory)[0].id, "acknowledged", now=NOW)
    _save(session_factory, [scored_exchange(user_id="mallory", age=timedelta(minutes=1))])

    run_flag_job(session_factory, SETTINGS, now=NOW + timedelta(minutes=1))

    flag = _flags(session_factory)[0]
    assert flag.status == "acknowledged"
    assert flag.slip_through_count == K + 1


def test_run_is_recorded(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K))

    run_flag_job(session_factory, SETTINGS, now=NOW)

    runs = _runs(session_factory)
    assert len(runs) == 1
    assert runs[0].status == "ok"
    assert runs[0].detail["rule"] == RULE
    assert runs[0].detail["created"] == 1
    assert runs[0].error is None
    assert runs[0].finished_at >= runs[0].started_at


def test_concurrent_run_is_skipped(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slip_throughs(K))

    with session_factory() as holder, holder.begin():
        assert try_advisory_xact_lock(holder, JOB_NAME) is True

        skipped = run_flag_job(session_factory, SETTINGS, now=NOW)

        assert skipped.status == "skipped"
        assert _flags(session_factory) == []

    ran = run_flag_job(session_factory, SETTINGS, now=NOW)

    assert ran.status == "ok"
    assert len(_flags(session_factory)) == 1
    assert sorted(run.status for run in _runs(session_factory)) == ["ok", "skipped"]


def test_lock_is_free_after_run(session_factory: sessionmaker[Session]) -> None:
    run_flag_job(session_factory, SETTINGS, now=NOW)

    with session_factory() as session, session.begin():
        assert try_advisory_xact_lock(session, JOB_NAME) is True


def test_failed_run_is_recorded_and_raised(session_factory: sessionmaker[Session]) -> None:
    naive_now = datetime(2025, 6, 1, 12, 0)

    with pytest.raises(ValueError, match="no time zone"):
        run_flag_job(session_factory, SETTINGS, now=naive_now)

    runs = _runs(session_factory)
    assert [run.status for run in runs] == ["failed"]
    assert runs[0].error is not None
    assert "ValueError" in runs[0].error


RISK_SETTINGS = FlagSettings(min_slip_throughs=K, window_s=3600, interval_s=60, min_risk=0.5)


def test_risk_rule_name_shows_min_risk() -> None:
    assert FlagRule.from_settings(RISK_SETTINGS).name == "slip_throughs>=3,risk>=0.5/1h"


def test_heavy_benign_user_is_not_flagged(session_factory: sessionmaker[Session]) -> None:
    # Everyone's requests sit around 0.06 for im_sorry (threshold 0.05), so a heavy
    # user collects slip-throughs at the population's rate; mallory's are far higher.
    ordinary = {"im_sorry": 0.06, "i_cant": 0.001}
    batch = [
        scored_exchange(user_id=f"user-{i % 20}", probs=ordinary, age=timedelta(minutes=5 + i % 40))
        for i in range(200)
    ]
    batch += [scored_exchange(user_id="heavy", probs=ordinary, age=timedelta(minutes=5 + i % 40)) for i in range(60)]
    batch += [
        scored_exchange(user_id="mallory", probs={"im_sorry": 0.7, "i_cant": 0.3}, age=timedelta(minutes=5 + i))
        for i in range(K)
    ]
    _save(session_factory, batch)

    result = run_flag_job(session_factory, RISK_SETTINGS, now=NOW)

    flags = _flags(session_factory)
    assert [flag.user_id for flag in flags] == ["mallory"]
    assert result.created == 1
    assert flags[0].rule == "slip_throughs>=3,risk>=0.5/1h"
    assert flags[0].evidence["risk"]["score"] >= 0.5
    sentinels = {part["sentinel"]: part for part in flags[0].evidence["risk"]["sentinels"]}
    assert sentinels["im_sorry"]["expected_bypassed"] == pytest.approx(3 * 0.7)
    assert sentinels["im_sorry"]["population_mean"] == pytest.approx(0.06)


def test_risk_check_off_flags_heavy_user(session_factory: sessionmaker[Session]) -> None:
    ordinary = {"im_sorry": 0.06, "i_cant": 0.001}
    batch = [scored_exchange(user_id="heavy", probs=ordinary, age=timedelta(minutes=5 + i)) for i in range(10)]
    batch += [scored_exchange(user_id="other", probs=ordinary, age=timedelta(minutes=5 + i)) for i in range(10)]
    _save(session_factory, batch)

    run_flag_job(session_factory, SETTINGS, now=NOW)

    assert [flag.user_id for flag in _flags(session_factory)] == ["heavy", "other"]
