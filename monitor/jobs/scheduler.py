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
    EVENT_SCHEDULER_SHUTDOWN,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from monitor.alerts.dispatcher import JOB_NAME as ALERT_JOB_NAME
from monitor.alerts.dispatcher import run_alert_dispatch
from monitor.alerts.sinks import build_sinks
from monitor.jobs.baselines import JOB_NAME as BASELINE_JOB_NAME
from monitor.jobs.baselines import run_baseline_job
from monitor.jobs.consistency_report import JOB_NAME as CONSISTENCY_JOB_NAME
from monitor.jobs.consistency_report import run_consistency_job
from monitor.jobs.flag_users import JOB_NAME as FLAG_JOB_NAME
from monitor.jobs.flag_users import AlertOptions, run_flag_job
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
    """Build a scheduler, not yet started, that runs the flag, consistency report and baseline jobs.

    The flag job runs at start and every `flags.interval_s` seconds. The
    consistency report job first runs `consistency.interval_s` seconds after
    start, then at that interval, so that it does not add to the start-up load.
    The baseline job runs at start and every `risk.baseline_refresh_s` seconds.
    The alert dispatcher runs at start and every `alerts.interval_s` seconds.
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
    flag_alerts = AlertOptions.from_settings(settings.alerts)
    scheduler.add_job(
        guarded(
            FLAG_JOB_NAME,
            lambda: run_flag_job(
                session_factory, flag_settings, risk=risk_settings, alerts=flag_alerts, tick_s=interval_s
            ),
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
            lambda: run_consistency_job(
                session_factory, consistency_settings, sentinels, tick_s=consistency_settings.interval_s
            ),
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

    # The baseline job keeps the cached population sums of every risk window
    # and flag rule window fresh, so that risk queries seldom sum a whole window.
    baseline_s = settings.risk.baseline_refresh_s
    window_lengths = (*settings.risk.windows_s, *(rule.window_s for rule in settings.flags.active_rules()))
    scheduler.add_job(
        guarded(
            BASELINE_JOB_NAME,
            lambda: run_baseline_job(session_factory, window_lengths, tick_s=baseline_s),
            counters,
        ),
        trigger=IntervalTrigger(seconds=baseline_s, timezone=timezone.utc),
        id=BASELINE_JOB_NAME,
        name=BASELINE_JOB_NAME,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=baseline_s,
        replace_existing=True,
        next_run_time=datetime.now(timezone.utc),
    )
    _add_alert_dispatch_job(scheduler, settings, session_factory, counters)
    return scheduler


def _add_alert_dispatch_job(
    scheduler: BackgroundScheduler, settings: Settings, session_factory: SessionFactory, counters: JobCounters
) -> None:
    """Deliver alerts at start and every `alerts.interval_s` seconds on every replica; without sinks, add nothing.

    Replicas share the due deliveries through row locks (SKIP LOCKED), so this
    job needs no advisory lock. The sinks are closed when the scheduler shuts down.
    """
    alert_settings = settings.alerts
    sinks = build_sinks(alert_settings, settings.kafka)
    if not sinks:
        return
    scheduler.add_job(
        guarded(ALERT_JOB_NAME, lambda: run_alert_dispatch(session_factory, alert_settings, sinks), counters),
        trigger=IntervalTrigger(seconds=alert_settings.interval_s, timezone=timezone.utc),
        id=ALERT_JOB_NAME,
        name=ALERT_JOB_NAME,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=alert_settings.interval_s,
        replace_existing=True,
        next_run_time=datetime.now(timezone.utc),
    )

    def close_sinks(_event: object) -> None:
        for sink in sinks.values():
            sink.close()

    scheduler.add_listener(close_sinks, EVENT_SCHEDULER_SHUTDOWN)


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
