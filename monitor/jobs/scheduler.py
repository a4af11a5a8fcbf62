"""The scheduler of the periodic jobs (APScheduler 3.x, background thread).

APScheduler catches what a job raises and only logs it through its own logger,
so every job is wrapped: the wrapper logs the error once, with its traceback
unless the database is merely unavailable, and counts it in `JobCounters`. A
listener logs and counts the ticks APScheduler missed or skipped because the
previous run was still going, and any error of a job added without the wrapper.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.jobs.consistency_report import JOB_NAME as CONSISTENCY_JOB_NAME
from monitor.jobs.consistency_report import run_consistency_job
from monitor.jobs.flag_users import JOB_NAME as FLAG_JOB_NAME
from monitor.jobs.flag_users import run_flag_job
from monitor.settings import Settings
from storage.engine import SessionFactory
from storage.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)


class JobCounters:
    """Thread-safe counts of job runs, failures and missed ticks, by job name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {"runs": Counter(), "failures": Counter(), "missed": Counter()}

    def add(self, kind: str, job: str) -> None:
        with self._lock:
            self._counts[kind][job] += 1

    def get(self, kind: str, job: str) -> int:
        with self._lock:
            return self._counts[kind][job]

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {kind: dict(counts) for kind, counts in self._counts.items()}


def guarded(job: str, function: Callable[[], object], counters: JobCounters) -> Callable[[], None]:
    """Wrap a job so that an error is logged and counted here instead of disappearing into APScheduler."""

    def run() -> None:
        counters.add("runs", job)
        try:
            function()
        except DatabaseUnavailableError as exc:
            counters.add("failures", job)
            logger.warning(
                "job %s failed because the database is unavailable, and the next tick retries it: %s", job, exc
            )
        except Exception:
            counters.add("failures", job)
            logger.exception("job %s failed, and the next tick runs it again", job)

    return run


def build_scheduler(
    settings: Settings, session_factory: SessionFactory, *, counters: JobCounters | None = None
) -> BackgroundScheduler:
    """Build a scheduler, not yet started, that runs the flag job and the consistency report job.

    The flag job runs at start and every `flags.interval_s` seconds. The
    consistency report job first runs `consistency.interval_s` seconds after
    start, then at that interval, so that it does not add to the start-up load.
    A tick that finds the previous run still going is skipped (`max_instances=1`),
    and ticks missed while the process was busy run once (`coalesce=True`).
    """
    counters = counters if counters is not None else JobCounters()
    interval_s = settings.flags.interval_s
    scheduler = BackgroundScheduler(
        timezone=timezone.utc,
        job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": interval_s},
    )
    scheduler.add_listener(_listener(counters), EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    flag_settings, risk_settings = settings.flags, settings.risk
    scheduler.add_job(
        guarded(
            FLAG_JOB_NAME,
            lambda: run_flag_job(session_factory, flag_settings, risk=risk_settings, tick_s=interval_s),
            counters,
        ),
        trigger=IntervalTrigger(seconds=interval_s, timezone=timezone.utc),
        id=FLAG_JOB_NAME,
        name=FLAG_JOB_NAME,
        max_instances=1,
        coalesce=True,
        replace_existing=True,
        next_run_time=datetime.now(timezone.utc),
    )

    consistency_settings = settings.consistency
    sentinels = settings.scoring.sentinels
    scheduler.add_job(
        guarded(
            CONSISTENCY_JOB_NAME,
            lambda: run_consistency_job(session_factory, consistency_settings, sentinels),
            counters,
        ),
        trigger=IntervalTrigger(seconds=consistency_settings.interval_s, timezone=timezone.utc),
        id=CONSISTENCY_JOB_NAME,
        name=CONSISTENCY_JOB_NAME,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=consistency_settings.interval_s,
        replace_existing=True,
    )
    return scheduler


def _listener(counters: JobCounters) -> Callable[[JobEvent], None]:
    def on_event(event: JobEvent) -> None:
        if event.code == EVENT_JOB_ERROR and isinstance(event, JobExecutionEvent):
            counters.add("failures", event.job_id)
            logger.error(
                "job %s raised an error outside its guard: %r\n%s",
                event.job_id, event.exception, event.traceback,
            )
        elif event.code == EVENT_JOB_MISSED:
            counters.add("missed", event.job_id)
            logger.warning("job %s missed its run time, and runs at the next tick", event.job_id)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            counters.add("missed", event.job_id)
            logger.warning("job %s skipped a tick because its previous run is still going", event.job_id)

    return on_event
