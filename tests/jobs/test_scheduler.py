from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

import pytest
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.flag_users import JOB_NAME
from monitor.jobs.scheduler import JobCounters, build_scheduler, guarded
from monitor.settings import FlagSettings, Settings
from storage.errors import DatabaseUnavailableError
from storage.job_runs import list_job_runs
from tests.jobs.replicas import assert_each_tick_runs_once

DEADLINE_S = 15.0


def _wait_for(condition: Callable[[], bool], description: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S} s waiting for {description}")
        time.sleep(0.05)


def _unused_session_factory() -> Session:
    raise AssertionError("the session factory must not be called while the scheduler is stopped")


def _fail() -> None:
    raise RuntimeError("boom")


def _database_down() -> None:
    raise DatabaseUnavailableError("failed to run the flag job: PostgreSQL is unavailable")


def test_flag_job_scheduled_at_interval() -> None:
    settings = Settings(flags=FlagSettings(interval_s=45))

    scheduler = build_scheduler(settings, _unused_session_factory)

    job = scheduler.get_job(JOB_NAME)
    assert job is not None
    assert isinstance(job.trigger, IntervalTrigger)
    assert job.trigger.interval.total_seconds() == 45
    assert job.max_instances == 1
    assert job.coalesce is True


def test_guarded_logs_and_counts_errors(caplog: pytest.LogCaptureFixture) -> None:
    counters = JobCounters()

    with caplog.at_level(logging.ERROR, logger="monitor.jobs.scheduler"):
        guarded("exploding", _fail, counters)()

    assert counters.get("runs", "exploding") == 1
    assert counters.get("failures", "exploding") == 1
    records = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(records) == 1
    assert "exploding" in records[0].getMessage()
    assert records[0].exc_info is not None


def test_guarded_logs_unavailable_database_as_warning(caplog: pytest.LogCaptureFixture) -> None:
    counters = JobCounters()

    with caplog.at_level(logging.WARNING, logger="monitor.jobs.scheduler"):
        guarded("flag_users", _database_down, counters)()

    assert counters.get("failures", "flag_users") == 1
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert "unavailable" in caplog.records[0].getMessage()


def test_listener_logs_unguarded_job_errors(caplog: pytest.LogCaptureFixture) -> None:
    counters = JobCounters()
    settings = Settings(flags=FlagSettings(interval_s=3600))
    scheduler = build_scheduler(settings, _unused_session_factory, counters=counters)
    scheduler.remove_job(JOB_NAME)
    scheduler.add_job(_fail, id="unguarded", next_run_time=datetime.now(timezone.utc))

    with caplog.at_level(logging.ERROR, logger="monitor.jobs.scheduler"):
        scheduler.start()
        try:
            _wait_for(lambda: counters.get("failures", "unguarded") == 1, "the error listener")
        finally:
            scheduler.shutdown(wait=True)

    messages = [record.getMessage() for record in caplog.records if record.name == "monitor.jobs.scheduler"]
    assert any("unguarded" in message and "boom" in message for message in messages)


@pytest.mark.postgres
def test_scheduler_runs_flag_job_at_start(session_factory: sessionmaker[Session]) -> None:
    counters = JobCounters()
    scheduler = build_scheduler(Settings(flags=FlagSettings(interval_s=3600)), session_factory, counters=counters)

    scheduler.start()
    try:
        _wait_for(lambda: counters.get("runs", JOB_NAME) == 1, "the first flag job run")

        def recorded() -> bool:
            with session_factory() as session:
                return len(list_job_runs(session, JOB_NAME)) == 1

        _wait_for(recorded, "the job_runs row")
    finally:
        scheduler.shutdown(wait=True)

    assert counters.get("failures", JOB_NAME) == 0


@pytest.mark.postgres
def test_three_schedulers_run_each_tick_once(session_factory: sessionmaker[Session]) -> None:
    assert_each_tick_runs_once(session_factory, Settings(flags=FlagSettings(interval_s=1)), JOB_NAME)
