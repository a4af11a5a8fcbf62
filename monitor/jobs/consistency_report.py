"""Consistency report job: group near-duplicate recent requests and record how their probabilities spread.

Every `consistency.interval_s` seconds, one replica reads the newest
`consistency.max_exchanges` exchanges of the window and groups their last user
turns (monitor.consistency). It records a summary in `job_runs.detail`: the
number of groups, the groups whose refuse decision flips, the largest spread,
and the exchange ids of the most inconsistent groups. The job changes no other
table, so running it again over the same data records the same summary.

One replica runs each scheduler tick. The advisory lock keeps replicas from
running at the same time, and the tick stored in `job_runs.detail.tick` stops
a replica whose timer fires later in the same tick from running it again. The
other replicas record a skipped run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy.orm import Session

from monitor.consistency import ConsistencyReport, RequestGroup, build_report
from monitor.sentinels import Sentinel
from monitor.settings import ConsistencySettings
from storage.activity import TimeWindow
from storage.consistency import RecentRequests, load_recent_requests
from storage.engine import SessionFactory, transaction
from storage.errors import StorageError
from storage.job_runs import record_job_run, tick_already_ran, try_advisory_xact_lock

logger = logging.getLogger(__name__)

JOB_NAME = "consistency_report"

# job_runs.detail lists this many of the most inconsistent groups, each with at
# most MAX_IDS_PER_GROUP exchange ids, so a run over a busy window stays a
# small row.
TOP_GROUPS = 10
MAX_IDS_PER_GROUP = 20


@dataclass(frozen=True)
class StoredRequestsReport:
    """A consistency report over stored exchanges, with the counts of exchanges it could not use."""

    window: TimeWindow
    model: str | None
    recent: RecentRequests
    report: ConsistencyReport

    def counts_json(self) -> dict[str, Any]:
        """Return the window, the counts and the totals of the report, without its groups."""
        return {
            "window_start": self.window.start.isoformat(),
            "window_end": self.window.end.isoformat(),
            "model": self.model,
            "exchanges_read": self.recent.exchanges_read,
            "truncated": self.recent.truncated,
            "skipped_without_text": self.recent.without_text,
            "skipped_unscored": self.recent.unscored,
            "requests": self.report.requests,
            "similarity": self.report.similarity,
            "min_group_size": self.report.min_group_size,
            "group_count": len(self.report.groups),
            "grouped_requests": self.report.grouped_requests,
            "flipping_groups": self.report.flipping_groups,
            "max_spread": self.report.max_spread,
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.counts_json(), "groups": [group.as_json() for group in self.report.groups]}


@dataclass(frozen=True)
class ConsistencyJobResult:
    """Status and summary of one run of the consistency report job."""

    status: Literal["ok", "skipped"]
    window_s: int
    tick: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "window_s": self.window_s, "tick": self.tick, **self.summary}


def report_stored_requests(
    session: Session,
    sentinels: Sequence[Sentinel],
    *,
    window: TimeWindow,
    similarity: float,
    limit: int,
    min_group_size: int,
    model: str | None = None,
) -> StoredRequestsReport:
    """Build the consistency report over the newest `limit` exchanges created in the window."""
    recent = load_recent_requests(session, window, limit=limit, model=model)
    report = build_report(recent.requests, sentinels, similarity=similarity, min_group_size=min_group_size)
    return StoredRequestsReport(window=window, model=model, recent=recent, report=report)


def run_consistency_job(
    session_factory: SessionFactory,
    settings: ConsistencySettings,
    sentinels: Sequence[Sentinel],
    *,
    now: datetime | None = None,
    tick_s: int | None = None,
) -> ConsistencyJobResult:
    """Run one tick of the consistency report job in one transaction and record it in `job_runs`.

    A failed run is recorded in a transaction of its own, and the error is
    raised again for the scheduler to log. With `tick_s`, the run belongs to
    the tick `now` rounded down to a multiple of `tick_s` seconds, and is
    skipped when any replica already finished that tick.
    """
    started_at = _utcnow()
    now = now or started_at
    tick = _tick(now, tick_s) if tick_s else None
    try:
        with transaction(session_factory, "run the consistency report job") as session:
            result = _run_locked(session, settings, sentinels, now=now, tick=tick)
            record_job_run(
                session,
                job=JOB_NAME,
                started_at=started_at,
                finished_at=_utcnow(),
                status=result.status,
                detail=result.as_json(),
            )
    except Exception as exc:
        _record_failure(session_factory, settings, started_at, exc)
        raise

    _log_result(result)
    return result


def summarize_top_groups(groups: Sequence[RequestGroup]) -> list[dict[str, Any]]:
    """Describe the first `TOP_GROUPS` groups by size, flip, spread and at most `MAX_IDS_PER_GROUP` exchange ids."""
    return [
        {
            "size": group.size,
            "refusals": group.refusals,
            "flips": group.flips,
            "max_spread": group.max_spread,
            "exchange_ids": list(group.exchange_ids[:MAX_IDS_PER_GROUP]),
        }
        for group in groups[:TOP_GROUPS]
    ]


def _run_locked(
    session: Session,
    settings: ConsistencySettings,
    sentinels: Sequence[Sentinel],
    *,
    now: datetime,
    tick: str | None,
) -> ConsistencyJobResult:
    if not try_advisory_xact_lock(session, JOB_NAME):
        return ConsistencyJobResult(status="skipped", window_s=settings.window_s, tick=tick)
    if tick is not None and tick_already_ran(session, JOB_NAME, tick):
        return ConsistencyJobResult(status="skipped", window_s=settings.window_s, tick=tick)
    stored = report_stored_requests(
        session,
        sentinels,
        window=TimeWindow.ending(now, timedelta(seconds=settings.window_s)),
        similarity=settings.similarity,
        limit=settings.max_exchanges,
        min_group_size=settings.min_group_size,
    )
    summary = {**stored.counts_json(), "top_groups": summarize_top_groups(stored.report.groups)}
    return ConsistencyJobResult(status="ok", window_s=settings.window_s, tick=tick, summary=summary)


def _record_failure(
    session_factory: SessionFactory, settings: ConsistencySettings, started_at: datetime, exc: Exception
) -> None:
    try:
        with transaction(session_factory, "record a failed consistency report job run") as session:
            record_job_run(
                session,
                job=JOB_NAME,
                started_at=started_at,
                finished_at=_utcnow(),
                status="failed",
                detail={"window_s": settings.window_s, "similarity": settings.similarity},
                error=f"{type(exc).__name__}: {exc}",
            )
    except StorageError as record_exc:
        # The caller raises the original error. This one only explains why
        # job_runs will not show the failure.
        logger.warning("could not record the failed run of job %s: %s", JOB_NAME, record_exc)


def _log_result(result: ConsistencyJobResult) -> None:
    if result.status == "skipped":
        logger.debug(
            "job %s skipped tick %s: another replica has its advisory lock or already ran the tick",
            JOB_NAME, result.tick,
        )  # fmt: skip
        return
    summary = result.summary
    logger.info(
        "job %s: %d exchanges read, %d skipped without text, %d groups, %d with a flipping decision, "
        "max spread %.3g",
        JOB_NAME, summary["exchanges_read"], summary["skipped_without_text"], summary["group_count"],
        summary["flipping_groups"], summary["max_spread"],
    )  # fmt: skip
    if summary["truncated"]:
        logger.info(
            "job %s read only the newest %d exchanges of its %d s window; raise consistency.max_exchanges "
            "or shorten consistency.window_s to cover the whole window",
            JOB_NAME, summary["exchanges_read"], result.window_s,
        )  # fmt: skip


def _tick(now: datetime, tick_s: int) -> str:
    """Return the start of the tick that contains `now`, a multiple of `tick_s` seconds since the epoch."""
    seconds = int(now.timestamp()) // tick_s * tick_s
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
