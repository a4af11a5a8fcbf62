"""The scheduler runs the alert dispatcher on every replica at alerts.interval_s."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerts.dispatcher import JOB_NAME
from monitor.jobs.scheduler import JobCounters, build_scheduler
from monitor.settings import AlertSettings, FlagSettings, Settings
from tests.alerts.factories import deliveries, draft, enqueue


def _unused_session_factory() -> Session:
    raise AssertionError("the session factory must not be called while the scheduler is stopped")


def test_dispatch_job_scheduled_at_interval() -> None:
    scheduler = build_scheduler(Settings(alerts=AlertSettings(interval_s=7)), _unused_session_factory)

    job = scheduler.get_job(JOB_NAME)
    assert job is not None
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval.total_seconds() == 7
    assert job.max_instances == 1


def test_no_dispatch_job_without_sinks() -> None:
    settings = Settings(alerts=AlertSettings(log=False, kafka_topic=""))

    scheduler = build_scheduler(settings, _unused_session_factory)

    assert scheduler.get_job(JOB_NAME) is None


@pytest.mark.postgres
def test_scheduler_delivers_stored_alert(session_factory: sessionmaker[Session]) -> None:
    enqueue(session_factory, draft("flag:60:opened"), ["log"], datetime.now(timezone.utc))
    settings = Settings(flags=FlagSettings(interval_s=3600), alerts=AlertSettings(interval_s=1, kafka_topic=""))
    counters = JobCounters()
    scheduler = build_scheduler(settings, session_factory, counters=counters)

    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if deliveries(session_factory)[("flag:60:opened", "log")].status == "delivered":
                break
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)

    assert deliveries(session_factory)[("flag:60:opened", "log")].status == "delivered"
    assert counters.get("runs", JOB_NAME) >= 1
    assert counters.get("failures", JOB_NAME) == 0
