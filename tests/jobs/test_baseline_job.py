"""Scheduling of the baseline job; its runs against PostgreSQL are in tests/storage/test_baselines.py."""

from __future__ import annotations

import time

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.baselines import JOB_NAME
from monitor.jobs.scheduler import JobCounters, build_scheduler
from monitor.settings import FlagSettings, RiskSettings, Settings
from storage.job_runs import list_job_runs


def _unused_session_factory() -> Session:
    raise AssertionError("the session factory must not be called while the scheduler is stopped")


def test_baseline_job_scheduled_at_refresh_interval() -> None:
    settings = Settings(risk=RiskSettings(baseline_refresh_s=90))

    scheduler = build_scheduler(settings, _unused_session_factory)

    job = scheduler.get_job(JOB_NAME)
    assert job is not None
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval.total_seconds() == 90
    assert job.max_instances == 1
    assert job.coalesce is True


@pytest.mark.postgres
def test_three_schedulers_refresh_each_tick_once(session_factory: sessionmaker[Session]) -> None:
    # The flag job also starts with each scheduler; a long interval keeps it to one run each.
    settings = Settings(risk=RiskSettings(baseline_refresh_s=1), flags=FlagSettings(interval_s=3600))
    counters = [JobCounters() for _ in range(3)]
    schedulers = [build_scheduler(settings, session_factory, counters=c) for c in counters]

    # Replicas start apart, so a later one finds the tick finished, not only the lock taken.
    for scheduler in schedulers:
        scheduler.start()
        time.sleep(0.3)
    try:
        deadline = time.monotonic() + 20
        while sum(c.get("runs", JOB_NAME) for c in counters) < 12:
            assert time.monotonic() < deadline, "timed out waiting for twelve baseline job runs in all"
            time.sleep(0.05)
    finally:
        for scheduler in schedulers:
            scheduler.shutdown(wait=True)

    with session_factory() as session:
        runs = list_job_runs(session, JOB_NAME, limit=1000)
    assert all(c.get("failures", JOB_NAME) == 0 for c in counters)
    assert len(runs) == sum(c.get("runs", JOB_NAME) for c in counters)
    ok_ticks = [run.detail["tick"] for run in runs if run.status == "ok"]
    assert len(ok_ticks) == len(set(ok_ticks)), f"a tick ran more than once: {sorted(ok_ticks)}"
    assert len(ok_ticks) >= 2
    assert any(run.status == "skipped" for run in runs)
