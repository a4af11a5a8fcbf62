from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from monitor.consistency import ScoredRequest, summarize_group
from monitor.jobs.consistency_report import (
    JOB_NAME,
    MAX_IDS_PER_GROUP,
    TOP_GROUPS,
    run_consistency_job,
    summarize_top_groups,
)
from monitor.jobs.scheduler import JobCounters, build_scheduler
from monitor.policy import ScoredExchange
from monitor.settings import ConsistencySettings, FlagSettings, Settings
from storage.errors import DatabaseUnavailableError
from storage.exchanges import ExchangeRepository, count_exchanges, count_scores
from storage.job_runs import list_job_runs, record_job_run, try_advisory_xact_lock
from storage.models import JobRunRecord
from tests.jobs.replicas import assert_each_tick_runs_once
from tests.storage.factories import HIGH, LOW, NOW, SENTINELS, scored_exchange

SETTINGS = ConsistencySettings(interval_s=600, window_s=3600, similarity=0.8, max_exchanges=100, min_group_size=2)
BREAD = "How do I bake sourdough bread at home?"
STAGGER_S = 0.3


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange], *, store_raw_text: bool = True) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=store_raw_text).save_batch(session, batch)


def _runs(factory: sessionmaker[Session]) -> list[JobRunRecord]:
    with factory() as session:
        return list_job_runs(session, JOB_NAME)


def _paraphrases() -> list[ScoredExchange]:
    """Three near-duplicates, one of them over the thresholds, and one unrelated request."""
    return [
        scored_exchange(exchange_id="bread-1", text=BREAD, probs=LOW, age=timedelta(minutes=30)),
        scored_exchange(exchange_id="bread-2", text="how do i bake sourdough bread at home", probs=HIGH),
        scored_exchange(exchange_id="bread-3", text="How do I bake sourdough bread at home??", probs=LOW),
        scored_exchange(exchange_id="poem", text="Write a poem about the sea", probs=LOW),
    ]


@pytest.mark.postgres
def test_run_records_summary(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases())

    result = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

    assert result.status == "ok"
    summary = result.summary
    assert summary["exchanges_read"] == 4
    assert summary["group_count"] == 1
    assert summary["flipping_groups"] == 1
    assert summary["max_spread"] == pytest.approx(HIGH["im_sorry"] - LOW["im_sorry"])
    assert summary["truncated"] is False
    assert summary["top_groups"] == [
        {
            "size": 3,
            "refusals": 1,
            "flips": True,
            "max_spread": pytest.approx(HIGH["im_sorry"] - LOW["im_sorry"]),
            "exchange_ids": ["bread-1", "bread-2", "bread-3"],
        }
    ]
    runs = _runs(session_factory)
    assert [run.status for run in runs] == ["ok"]
    assert runs[0].detail == json.loads(json.dumps(result.as_json()))
    assert runs[0].error is None


@pytest.mark.postgres
def test_detail_has_no_request_text(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases())

    run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

    detail = json.dumps(_runs(session_factory)[0].detail)
    assert "sourdough" not in detail
    assert "Write a poem" not in detail


@pytest.mark.postgres
def test_rerun_records_same_summary(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases())

    first = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)
    second = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

    assert first.as_json() == second.as_json()
    assert [run.status for run in _runs(session_factory)] == ["ok", "ok"]
    with session_factory() as session:
        assert count_exchanges(session) == 4
        assert count_scores(session) == 8


@pytest.mark.postgres
def test_exchanges_without_text_skipped(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases(), store_raw_text=False)

    result = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

    assert result.summary["skipped_without_text"] == 4
    assert result.summary["requests"] == 0
    assert result.summary["group_count"] == 0


@pytest.mark.postgres
def test_limit_marks_run_truncated(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases())

    settings = ConsistencySettings(max_exchanges=2, window_s=3600)

    result = run_consistency_job(session_factory, settings, SENTINELS, now=NOW)

    assert result.summary["exchanges_read"] == 2
    assert result.summary["truncated"] is True


@pytest.mark.postgres
def test_concurrent_run_is_skipped(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases())

    with session_factory() as holder, holder.begin():
        assert try_advisory_xact_lock(holder, JOB_NAME) is True

        skipped = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

        assert skipped.status == "skipped"
        assert skipped.summary == {}

    ran = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

    assert ran.status == "ok"
    assert sorted(run.status for run in _runs(session_factory)) == ["ok", "skipped"]


@pytest.mark.postgres
def test_lock_is_free_after_run(session_factory: sessionmaker[Session]) -> None:
    run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW)

    with session_factory() as session, session.begin():
        assert try_advisory_xact_lock(session, JOB_NAME) is True


@pytest.mark.postgres
def test_failed_run_is_recorded_and_raised(session_factory: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        run_consistency_job(session_factory, SETTINGS, SENTINELS, now=datetime(2025, 6, 1, 12, 0))

    runs = _runs(session_factory)
    assert [run.status for run in runs] == ["failed"]
    assert runs[0].error is not None
    assert "ValueError" in runs[0].error


def test_top_groups_are_bounded() -> None:
    members = [ScoredRequest(id=f"ex-{i}", text="t", probabilities={"im_sorry": 0.01}) for i in range(30)]
    groups = [summarize_group(members, SENTINELS) for _ in range(TOP_GROUPS + 5)]

    top = summarize_top_groups(groups)

    assert len(top) == TOP_GROUPS
    assert all(len(group["exchange_ids"]) == MAX_IDS_PER_GROUP for group in top)
    assert all(group["size"] == 30 for group in top)


def _unused_session_factory() -> Session:
    raise AssertionError("the session factory must not be called while the scheduler is stopped")


def _unavailable_session_factory() -> Session:
    raise DatabaseUnavailableError("failed to connect: PostgreSQL is unavailable")


def test_scheduler_runs_job_at_its_interval() -> None:
    settings = Settings(consistency=ConsistencySettings(interval_s=900))

    scheduler = build_scheduler(settings, _unused_session_factory)

    job = scheduler.get_job(JOB_NAME)
    assert job is not None
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval.total_seconds() == 900
    assert job.max_instances == 1
    assert job.coalesce is True


def test_scheduled_job_is_guarded() -> None:
    counters = JobCounters()
    scheduler = build_scheduler(Settings(), _unavailable_session_factory, counters=counters)
    job = scheduler.get_job(JOB_NAME)
    assert job is not None

    job.func()

    assert counters.get("runs", JOB_NAME) == 1
    assert counters.get("failures", JOB_NAME) == 1


@pytest.mark.postgres
def test_tick_runs_once(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _paraphrases())

    first = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW, tick_s=600)
    later_in_tick = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW + timedelta(seconds=599), tick_s=600)
    next_tick = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW + timedelta(seconds=600), tick_s=600)

    assert first.status == "ok"
    assert first.tick == NOW.isoformat()
    assert later_in_tick.status == "skipped"
    assert later_in_tick.tick == NOW.isoformat()
    assert next_tick.status == "ok"
    assert next_tick.tick == (NOW + timedelta(seconds=600)).isoformat()
    runs = _runs(session_factory)
    assert [(run.status, run.detail["tick"]) for run in reversed(runs)] == [
        ("ok", first.tick),
        ("skipped", first.tick),
        ("ok", next_tick.tick),
    ]


@pytest.mark.postgres
def test_failed_tick_runs_again(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session, session.begin():
        record_job_run(
            session, job=JOB_NAME, started_at=NOW, finished_at=NOW, status="failed", detail={"tick": NOW.isoformat()}
        )

    result = run_consistency_job(session_factory, SETTINGS, SENTINELS, now=NOW, tick_s=600)

    assert result.status == "ok"


@pytest.mark.postgres
def test_three_schedulers_run_each_tick_once(session_factory: sessionmaker[Session]) -> None:
    # The flag job also starts with each scheduler; a long interval keeps it to one run each.
    settings = Settings(consistency=ConsistencySettings(interval_s=1), flags=FlagSettings(interval_s=3600))
    assert_each_tick_runs_once(session_factory, settings, JOB_NAME, stagger_s=STAGGER_S)
