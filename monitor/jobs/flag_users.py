"""Flag job: open a flag against each user with too many slip-throughs in the recent window.

A user is flagged when at least `min_slip_throughs` of their exchanges
created in the window ending now are slip-throughs, which are exchanges with
the outcome `answered` although a sentinel's probability was at or above its
threshold. Override exchanges never count. With `flags.min_risk` above 0,
the user's risk score over the window (monitor/risk.py) must also reach it,
so that a user with many ordinary requests is not flagged for the handful
that pass a low threshold by chance. Each (user, rule) pair has one
flag, which later runs update in place, so the job is idempotent. One replica
runs each tick, and the others find the advisory lock taken and record a
skipped run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy.orm import Session

from monitor.risk import SentinelRisk
from monitor.settings import FlagSettings, RiskSettings
from monitor.user_risk import risk_for_users
from storage.activity import (
    ScoredExchangeSummary,
    SlipThroughTotals,
    TimeWindow,
    recent_slip_through_ids,
    summarize_exchanges,
    total_slip_throughs,
)
from storage.engine import SessionFactory, transaction
from storage.errors import StorageError
from storage.flags import FlagFinding, UpsertCounts, upsert_flags
from storage.job_runs import record_job_run, tick_already_ran, try_advisory_xact_lock

logger = logging.getLogger(__name__)

JOB_NAME = "flag_users"

# A flag cites at most this many of the user's latest slip-throughs, so that a
# user with thousands of them in the window does not make one huge row.
MAX_EVIDENCE_EXCHANGES = 100


@dataclass(frozen=True)
class FlagRule:
    """At least `min_slip_throughs` slip-throughs within `window`, and a risk score of at least `min_risk`."""

    min_slip_throughs: int
    window: timedelta
    min_risk: float = 0.0
    risk: RiskSettings = RiskSettings()

    @classmethod
    def from_settings(cls, settings: FlagSettings, risk: RiskSettings | None = None) -> FlagRule:
        return cls(
            min_slip_throughs=settings.min_slip_throughs,
            window=timedelta(seconds=settings.window_s),
            min_risk=settings.min_risk,
            risk=risk or RiskSettings(),
        )

    @property
    def name(self) -> str:
        """The rule as stored in `flags.rule`, for example `slip_throughs>=3,risk>=0.5/24h`."""
        risk = f",risk>={self.min_risk:g}" if self.min_risk > 0 else ""
        return f"slip_throughs>={self.min_slip_throughs}{risk}/{format_duration(self.window)}"


@dataclass(frozen=True)
class FlagJobResult:
    """Status and flag counts of one run of the flag job."""

    status: Literal["ok", "skipped"]
    rule: str
    tick: str | None = None
    users_over_threshold: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def flag_users(session: Session, rule: FlagRule, *, now: datetime) -> UpsertCounts:
    """Create or update the flags of every user who meets `rule` in the window ending at `now`."""
    window = TimeWindow.ending(now, rule.window)
    totals = total_slip_throughs(session, window, min_count=rule.min_slip_throughs)
    risks = risk_for_users(session, [total.user_id for total in totals], window, rule.risk) if totals else {}
    if rule.min_risk > 0:
        # Many slip-throughs at the population's rate are chance, not abuse.
        totals = [total for total in totals if risks[total.user_id][0] >= rule.min_risk]
    if not totals:
        return UpsertCounts(created=0, updated=0, unchanged=0)

    user_ids = [total.user_id for total in totals]
    evidence_ids = recent_slip_through_ids(session, user_ids, window, per_user=MAX_EVIDENCE_EXCHANGES)
    all_ids = [exchange_id for ids in evidence_ids.values() for exchange_id in ids]
    summaries = {summary.id: summary for summary in summarize_exchanges(session, all_ids)}

    findings = [_finding(total, evidence_ids.get(total.user_id, []), summaries, risks[total.user_id]) for total in totals]
    return upsert_flags(session, findings, rule=rule.name, window_s=_seconds(rule.window), now=now)


def run_flag_job(
    session_factory: SessionFactory,
    settings: FlagSettings,
    *,
    risk: RiskSettings | None = None,
    now: datetime | None = None,
    tick_s: int | None = None,
) -> FlagJobResult:
    """Run one tick of the flag job in one transaction and record it in `job_runs`.

    A failed run is recorded in a transaction of its own, and the error is
    raised again for the scheduler to log. With `tick_s`, the run belongs to
    the tick `now` rounded down to a multiple of `tick_s` seconds, and is
    skipped when any replica already finished that tick.
    """
    rule = FlagRule.from_settings(settings, risk)
    started_at = _utcnow()
    now = now or started_at
    tick = _tick(now, tick_s) if tick_s else None
    try:
        with transaction(session_factory, "run the flag job") as session:
            result = _run_locked(session, rule, now=now, tick=tick)
            record_job_run(
                session,
                job=JOB_NAME,
                started_at=started_at,
                finished_at=_utcnow(),
                status=result.status,
                detail=result.as_json(),
            )
    except Exception as exc:
        _record_failure(session_factory, rule, started_at, exc)
        raise

    _log_result(result)
    return result


def format_duration(duration: timedelta) -> str:
    """Format a duration in the largest whole unit: `24h`, `90m`, `45s`."""
    seconds = _seconds(duration)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _run_locked(session: Session, rule: FlagRule, *, now: datetime, tick: str | None) -> FlagJobResult:
    # The lock keeps replicas from running at the same time. The tick check
    # stops a replica that comes later in the same tick from running again.
    if not try_advisory_xact_lock(session, JOB_NAME):
        return FlagJobResult(status="skipped", rule=rule.name, tick=tick)
    if tick is not None and tick_already_ran(session, JOB_NAME, tick):
        return FlagJobResult(status="skipped", rule=rule.name, tick=tick)
    counts = flag_users(session, rule, now=now)
    return FlagJobResult(
        status="ok",
        rule=rule.name,
        tick=tick,
        users_over_threshold=counts.created + counts.updated + counts.unchanged,
        created=counts.created,
        updated=counts.updated,
        unchanged=counts.unchanged,
    )


def _finding(
    total: SlipThroughTotals,
    exchange_ids: list[str],
    summaries: dict[str, ScoredExchangeSummary],
    risk: tuple[float, list[SentinelRisk]],
) -> FlagFinding:
    cited = [exchange_id for exchange_id in exchange_ids if exchange_id in summaries]
    score, parts = risk
    evidence = {
        "exchange_ids": cited,
        "probabilities": {exchange_id: summaries[exchange_id].probabilities for exchange_id in cited},
        "risk": {"score": score, "sentinels": [part.as_json() for part in parts]},
    }
    return FlagFinding(
        user_id=total.user_id,
        slip_through_count=total.slip_throughs,
        max_prob=total.max_prob,
        evidence=evidence,
    )


def _record_failure(session_factory: SessionFactory, rule: FlagRule, started_at: datetime, exc: Exception) -> None:
    try:
        with transaction(session_factory, "record a failed flag job run") as session:
            record_job_run(
                session,
                job=JOB_NAME,
                started_at=started_at,
                finished_at=_utcnow(),
                status="failed",
                detail={"rule": rule.name},
                error=f"{type(exc).__name__}: {exc}",
            )
    except StorageError as record_exc:
        # The caller raises the original error. This one only explains why
        # job_runs will not show the failure.
        logger.warning("could not record the failed run of job %s: %s", JOB_NAME, record_exc)


def _log_result(result: FlagJobResult) -> None:
    if result.status == "skipped":
        logger.debug("job %s skipped: another replica has its advisory lock", JOB_NAME)
    elif result.created or result.updated:
        logger.info(
            "job %s: rule %s, %d users over the threshold, %d flags created, %d updated",
            JOB_NAME, result.rule, result.users_over_threshold, result.created, result.updated,
        )
    else:
        logger.debug("job %s: rule %s, no flag changed", JOB_NAME, result.rule)


def _tick(now: datetime, tick_s: int) -> str:
    seconds = int(now.timestamp()) // tick_s * tick_s
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _seconds(duration: timedelta) -> int:
    return int(duration.total_seconds())


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
