"""Scheduling of the baseline job; its runs against PostgreSQL are in tests/storage/test_baselines.py."""

from __future__ import annotations

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.baselines import JOB_NAME
from monitor.jobs.scheduler import build_scheduler
from monitor.settings import FlagSettings, RiskSettings, Settings
from tests.jobs.replicas import assert_each_tick_runs_once


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
    assert_each_tick_runs_once(session_factory, settings, JOB_NAME, stagger_s=0.3, every_tick_ran=False)
