"""The periodic job that flags users whose requests repeatedly slipped through.

Each rule (flags.rules, or the default rule built from the flat flags.*
settings) names a window, a minimum number of slip-throughs, the sentinels
and thresholds that count, a minimum risk score and a severity. A user meets
a rule when at least that many of their answered, non-override exchanges in
the window slipped through and their risk score over the window
(monitor/risk.py) reaches the rule's minimum, so that a user with many
ordinary requests is not flagged for the handful that pass a low threshold by
chance. Users on the trusted allowlist are never flagged.

The job is incremental. Each rule keeps a watermark on the database clock and
evaluates only the users with an exchange ingested since then (minus an
overlap for late commits), plus the users whose flag under the rule is still
firing, so that a flag whose evidence has aged out of the window recovers.
The first run of a rule evaluates everyone.

Each (user, rule) pair has one flag, which later runs update in place. Flag
transitions (opened, reopened, escalated, recovered) and re-notifications
become alerts in the same transaction (monitor/jobs/flag_alerts.py). One
replica runs each tick, and the others find the advisory lock taken or the
tick done and record a skipped run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy.orm import Session

from monitor.jobs.flag_alerts import enqueue_renotifications, enqueue_transition_alerts
from monitor.risk import SentinelRisk
from monitor.settings import AlertSettings, FlagSettings, RiskSettings, RuleSettings
from monitor.user_risk import risk_for_users
from storage.activity import ScoredExchangeSummary, TimeWindow, summarize_exchanges
from storage.engine import SessionFactory, transaction
from storage.errors import StorageError
from storage.flags import (
    CurrentState,
    FlagFinding,
    FlagTransition,
    firing_flag_users,
    recover_flags,
    retire_flags_of_removed_rules,
    upsert_flags,
)
from storage.job_runs import record_job_run, tick_already_ran, try_advisory_xact_lock
from storage.rule_matches import RuleMatch, SlipThroughCondition, match_users
from storage.trusted_users import active_trusted_user_ids
from storage.watermarks import database_now, read_watermark, save_watermark, users_ingested_since

logger = logging.getLogger(__name__)

JOB_NAME = "flag_users"

# A flag cites at most this many of the user's latest slip-throughs, so that a
# user with thousands of them in the window does not make one huge row.
MAX_EVIDENCE_EXCHANGES = 100


@dataclass(frozen=True)
class FlagRule:
    """A rule as the job applies it: the condition, the window, the minimums and the severities."""

    name: str
    min_slip_throughs: int
    window: timedelta
    min_risk: float = 0.0
    risk: RiskSettings = RiskSettings()
    condition: SlipThroughCondition = SlipThroughCondition()
    severity: str = "high"
    escalate_slip_throughs: int = 0
    escalate_risk: float = 0.0
    escalate_severity: str = "critical"

    @classmethod
    def from_rule_settings(cls, rule: RuleSettings, risk: RiskSettings | None = None) -> FlagRule:
        return cls(
            name=rule.name,
            min_slip_throughs=rule.min_slip_throughs,
            window=timedelta(seconds=rule.window_s),
            min_risk=rule.min_risk,
            risk=risk or RiskSettings(),
            condition=SlipThroughCondition(sentinels=rule.sentinels, thresholds=dict(rule.thresholds)),
            severity=rule.severity,
            escalate_slip_throughs=rule.escalate_slip_throughs,
            escalate_risk=rule.escalate_risk,
            escalate_severity=rule.escalate_severity,
        )

    @classmethod
    def from_settings(cls, settings: FlagSettings, risk: RiskSettings | None = None) -> FlagRule:
        """Build the default rule from the flat flags.* settings."""
        return cls.from_rule_settings(settings.default_rule(), risk)

    def severity_for(self, slip_throughs: int, risk: float) -> str:
        """Return the rule's severity, or its escalation severity when the count or the risk reaches an escalation level."""
        by_count = self.escalate_slip_throughs > 0 and slip_throughs >= self.escalate_slip_throughs
        by_risk = self.escalate_risk > 0 and risk >= self.escalate_risk
        return self.escalate_severity if by_count or by_risk else self.severity

    @property
    def watermark_job(self) -> str:
        return f"{JOB_NAME}:{self.name}"


@dataclass(frozen=True)
class RuleRunResult:
    """Counts of one run of the flag job for one rule."""

    rule: str
    evaluated_users: int | None
    users_over_threshold: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    recovered: int = 0
    alerts: int = 0


@dataclass(frozen=True)
class FlagJobResult:
    """Status and per-rule counts of one run of the flag job."""

    status: Literal["ok", "skipped"]
    rules: tuple[RuleRunResult, ...] = ()
    tick: str | None = None
    rule_names: tuple[str, ...] = field(default=())

    @property
    def rule(self) -> str:
        return ", ".join(self.rule_names or tuple(result.rule for result in self.rules))

    @property
    def users_over_threshold(self) -> int:
        return sum(result.users_over_threshold for result in self.rules)

    @property
    def created(self) -> int:
        return sum(result.created for result in self.rules)

    @property
    def updated(self) -> int:
        return sum(result.updated for result in self.rules)

    @property
    def unchanged(self) -> int:
        return sum(result.unchanged for result in self.rules)

    @property
    def recovered(self) -> int:
        return sum(result.recovered for result in self.rules)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "tick": self.tick,
            "rule": self.rule,
            "rules": [asdict(result) for result in self.rules],
            "users_over_threshold": self.users_over_threshold,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "recovered": self.recovered,
        }


@dataclass(frozen=True)
class AlertOptions:
    """Alert sinks of the flag job, and the interval after which a flag still open and firing is notified again."""

    sinks: tuple[str, ...] = ()
    renotify_s: int = 0

    @classmethod
    def from_settings(cls, settings: AlertSettings) -> AlertOptions:
        return cls(sinks=settings.sink_names(), renotify_s=settings.renotify_s)


def flag_users(
    session: Session,
    rule: FlagRule,
    *,
    now: datetime,
    alerts: AlertOptions = AlertOptions(),
    overlap: timedelta = timedelta(minutes=10),
) -> RuleRunResult:
    """Evaluate `rule` for the users with new exchanges (everyone on the rule's first run) and update their flags."""
    window = TimeWindow.ending(now, rule.window)
    clock = database_now(session)
    watermark = read_watermark(session, rule.watermark_job)
    firing = firing_flag_users(session, rule.name)
    candidates = _candidates(session, firing, watermark, overlap)

    matches = match_users(
        session, window, rule.condition, min_count=rule.min_slip_throughs, user_ids=candidates,
        evidence_limit=MAX_EVIDENCE_EXCHANGES,
    )
    trusted = active_trusted_user_ids(session, [match.user_id for match in matches], now=now) if matches else set()
    matches = [match for match in matches if match.user_id not in trusted]
    risks = risk_for_users(session, [match.user_id for match in matches], window, rule.risk) if matches else {}
    if rule.min_risk > 0:
        # Many slip-throughs at the population's rate are chance, not abuse.
        matches = [match for match in matches if risks[match.user_id][0] >= rule.min_risk]

    findings = _findings(session, rule, matches, risks)
    counts = upsert_flags(session, findings, rule=rule.name, window_s=_seconds(rule.window), now=now)
    meeting = {finding.user_id for finding in findings}
    leaving = [user for user in firing if user not in meeting]
    recovered = recover_flags(
        session,
        rule=rule.name,
        evaluated=candidates,
        meeting=meeting,
        now=now,
        current=_current_states(session, rule, window, leaving, now=now) if leaving else {},
    )
    transitions: list[FlagTransition] = [*counts.transitions, *recovered]
    alert_count = enqueue_transition_alerts(session, transitions, sinks=alerts.sinks, now=now)
    alert_count += enqueue_renotifications(session, rule.name, renotify_s=alerts.renotify_s, sinks=alerts.sinks, now=now)
    save_watermark(session, rule.watermark_job, clock)
    return RuleRunResult(
        rule=rule.name,
        evaluated_users=None if candidates is None else len(candidates),
        users_over_threshold=len(findings),
        created=counts.created,
        updated=counts.updated,
        unchanged=counts.unchanged,
        recovered=len(recovered),
        alerts=alert_count,
    )


def run_flag_job(
    session_factory: SessionFactory,
    settings: FlagSettings,
    *,
    risk: RiskSettings | None = None,
    alerts: AlertOptions = AlertOptions(),
    now: datetime | None = None,
    tick_s: int | None = None,
) -> FlagJobResult:
    """Run one tick of the flag job, every rule, in one transaction, and record it in `job_runs`.

    A failed run is recorded in a transaction of its own, and the error is
    raised again for the scheduler to log. With `tick_s`, the run belongs to
    the tick `now` rounded down to a multiple of `tick_s` seconds, and is
    skipped when any replica already finished that tick.
    """
    rules = tuple(FlagRule.from_rule_settings(rule, risk) for rule in settings.active_rules())
    names = tuple(rule.name for rule in rules)
    started_at = _utcnow()
    now = now or started_at
    tick = _tick(now, tick_s) if tick_s else None
    overlap = timedelta(seconds=settings.watermark_overlap_s)
    try:
        with transaction(session_factory, "run the flag job") as session:
            result = _run_locked(session, rules, now=now, tick=tick, alerts=alerts, overlap=overlap)
            record_job_run(
                session,
                job=JOB_NAME,
                started_at=started_at,
                finished_at=_utcnow(),
                status=result.status,
                detail=result.as_json(),
            )
    except Exception as exc:
        _record_failure(session_factory, names, started_at, exc)
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


def _run_locked(
    session: Session,
    rules: Sequence[FlagRule],
    *,
    now: datetime,
    tick: str | None,
    alerts: AlertOptions,
    overlap: timedelta,
) -> FlagJobResult:
    # The lock keeps replicas from running at the same time. The tick check
    # stops a replica that comes later in the same tick from running again.
    names = tuple(rule.name for rule in rules)
    if not try_advisory_xact_lock(session, JOB_NAME):
        return FlagJobResult(status="skipped", tick=tick, rule_names=names)
    if tick is not None and tick_already_ran(session, JOB_NAME, tick):
        return FlagJobResult(status="skipped", tick=tick, rule_names=names)
    results = tuple(flag_users(session, rule, now=now, alerts=alerts, overlap=overlap) for rule in rules)
    retired = retire_flags_of_removed_rules(session, names, now=now)
    if retired:
        logger.info("job %s: %d firing flag(s) of rules no longer configured stopped firing", JOB_NAME, retired)
    return FlagJobResult(status="ok", rules=results, tick=tick, rule_names=names)


def _candidates(
    session: Session, firing: Sequence[str], watermark: datetime | None, overlap: timedelta
) -> list[str] | None:
    if watermark is None:
        return None
    users = set(users_ingested_since(session, watermark, overlap=overlap))
    users.update(firing)
    return sorted(users)


def _current_states(
    session: Session, rule: FlagRule, window: TimeWindow, user_ids: Sequence[str], *, now: datetime
) -> dict[str, CurrentState]:
    """Compute the numbers of users whose flag is firing but who no longer meet the rule, and the reason."""
    counted = {
        match.user_id: match
        for match in match_users(
            session, window, rule.condition, min_count=1, user_ids=user_ids, evidence_limit=1
        )
    }
    risks = risk_for_users(session, list(user_ids), window, rule.risk)
    trusted = active_trusted_user_ids(session, user_ids, now=now)
    states = {}
    for user_id in user_ids:
        match = counted.get(user_id)
        count = match.slip_throughs if match else 0
        risk = risks[user_id][0]
        if user_id in trusted:
            reason = "the user is on the trusted allowlist"
        elif count < rule.min_slip_throughs:
            reason = f"{count} slip-through(s) in the window, below the rule's {rule.min_slip_throughs}"
        else:
            reason = f"risk {risk:.2f}, below the rule's {rule.min_risk:g}"
        states[user_id] = CurrentState(
            slip_throughs=count, max_prob=match.max_prob if match else 0.0, risk=risk, reason=reason
        )
    return states


def _findings(
    session: Session,
    rule: FlagRule,
    matches: Sequence[RuleMatch],
    risks: dict[str, tuple[float, list[SentinelRisk]]],
) -> list[FlagFinding]:
    if not matches:
        return []
    all_ids = [exchange_id for match in matches for exchange_id in match.latest_ids]
    summaries = {summary.id: summary for summary in summarize_exchanges(session, all_ids)}
    return [_finding(rule, match, summaries, risks[match.user_id]) for match in matches]


def _finding(
    rule: FlagRule,
    match: RuleMatch,
    summaries: dict[str, ScoredExchangeSummary],
    risk: tuple[float, list[SentinelRisk]],
) -> FlagFinding:
    cited = [exchange_id for exchange_id in match.latest_ids if exchange_id in summaries]
    score, parts = risk
    severity = rule.severity_for(match.slip_throughs, score)
    evidence = {
        "exchange_ids": cited,
        "probabilities": {exchange_id: summaries[exchange_id].probabilities for exchange_id in cited},
        "risk": {"score": score, "sentinels": [part.as_json() for part in parts]},
    }
    return FlagFinding(
        user_id=match.user_id,
        slip_through_count=match.slip_throughs,
        max_prob=match.max_prob,
        evidence=evidence,
        severity=severity,
        escalated=severity != rule.severity,
    )


def _record_failure(
    session_factory: SessionFactory, rules: Sequence[str], started_at: datetime, exc: Exception
) -> None:
    try:
        with transaction(session_factory, "record a failed flag job run") as session:
            record_job_run(
                session,
                job=JOB_NAME,
                started_at=started_at,
                finished_at=_utcnow(),
                status="failed",
                detail={"rule": ", ".join(rules)},
                error=f"{type(exc).__name__}: {exc}",
            )
    except StorageError as record_exc:
        # The caller raises the original error. This one only explains why
        # job_runs will not show the failure.
        logger.warning("could not record the failed run of job %s: %s", JOB_NAME, record_exc)


def _log_result(result: FlagJobResult) -> None:
    if result.status == "skipped":
        logger.debug("job %s skipped: another replica holds its advisory lock or ran this tick", JOB_NAME)
        return
    for rule in result.rules:
        if rule.created or rule.updated or rule.recovered:
            logger.info(
                "job %s: rule %s, %s users evaluated, %d over the threshold, %d flags created, %d updated, "
                "%d recovered, %d alerts",
                JOB_NAME, rule.rule, "all" if rule.evaluated_users is None else rule.evaluated_users,
                rule.users_over_threshold, rule.created, rule.updated, rule.recovered, rule.alerts,
            )
        else:
            logger.debug("job %s: rule %s, no flag changed", JOB_NAME, rule.rule)


def _tick(now: datetime, tick_s: int) -> str:
    seconds = int(now.timestamp()) // tick_s * tick_s
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def _seconds(duration: timedelta) -> int:
    return int(duration.total_seconds())


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)
