"""Scheduling of the baseline job; its runs against PostgreSQL are in tests/storage/test_baselines.py."""

from __future__ import annotations

from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session

from monitor.jobs.baselines import JOB_NAME
from monitor.jobs.scheduler import build_scheduler
from monitor.settings import RiskSettings, Settings


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
