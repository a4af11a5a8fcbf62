"""Flag repository: one flag per (user, rule), upserted by the flag job and reviewed by people."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from storage.errors import StorageError, translate_errors
from storage.models import FLAG_STATUSES, SEVERITIES, AlertRecord, Base, FlagEventRecord, FlagRecord
from storage.sql import equals_any

FLAGS: Table = Base.metadata.tables["flags"]

ACTIVE_STATUSES = ("open", "acknowledged")
CLOSED_STATUSES = ("resolved", "false_positive")


SEVERITY_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}
JOB_ACTOR = "flag_job"

# The maximum length of a review note, in characters, that the API and the `flags review` command accept.
MAX_REVIEW_NOTE_CHARS = 4000


@dataclass(frozen=True)
class FlagFinding:
    """A user who meets a flag rule in the current window, with the count, maximum probability, evidence and severity."""

    user_id: str
    slip_through_count: int
    max_prob: float
    evidence: dict[str, Any]
    severity: str = "high"
    # True when `severity` is the rule's escalation severity, reached by count or risk.
    escalated: bool = False


@dataclass(frozen=True)
class FlagSnapshot:
    """A flag's state right after a transition, for the alert about it."""

    id: int
    user_id: str
    rule: str
    status: str
    severity: str
    opened_at: datetime
    firing_since: datetime | None
    window_s: int
    slip_through_count: int
    max_prob: float
    risk: float | None
    exchange_ids: tuple[str, ...]
    reason: str | None = None

    @classmethod
    def of(cls, flag: FlagRecord) -> FlagSnapshot:
        risk = flag.evidence.get("risk", {}).get("score")
        return cls(
            id=flag.id,
            user_id=flag.user_id,
            rule=flag.rule,
            status=flag.status,
            severity=flag.severity,
            opened_at=flag.opened_at,
            firing_since=flag.firing_since,
            window_s=flag.window_s,
            slip_through_count=flag.slip_through_count,
            max_prob=flag.max_prob,
            risk=float(risk) if risk is not None else None,
            exchange_ids=tuple(flag.evidence.get("exchange_ids", ())),
        )


@dataclass(frozen=True)
class CurrentState:
    """A user's numbers under a rule at the latest evaluation, and why they no longer meet it."""

    slip_throughs: int
    max_prob: float
    risk: float
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"slip_throughs": self.slip_throughs, "max_prob": self.max_prob, "risk": self.risk, "reason": self.reason}


@dataclass(frozen=True)
class FlagTransition:
    """A change of a flag that raises an alert: opened, reopened, escalated or recovered."""

    kind: str
    flag: FlagSnapshot


@dataclass(frozen=True)
class UpsertCounts:
    """How many flags an upsert created, changed, and left unchanged, and the transitions among the changes."""

    created: int
    updated: int
    unchanged: int
    transitions: tuple[FlagTransition, ...] = ()


def upsert_flags(
    session: Session, findings: Sequence[FlagFinding], *, rule: str, window_s: int, now: datetime
) -> UpsertCounts:
    """Create an open flag for each finding, or update the user's flag under `rule`, and record the transitions.

    - No flag yet: a new open, firing flag (`opened`).
    - A resolved or false-positive flag whose new evidence cites an exchange
      the old evidence did not: open again (`reopened`).
    - An active (open or acknowledged) flag that had recovered: firing and
      open again (`reopened`).
    - An active flag whose finding has a higher severity: the new severity,
      and open again if it was acknowledged (`escalated`). While a flag is
      active its severity never goes down.
    - Otherwise the evidence, count and maximum are updated when they differ,
      and nothing changes when they do not, so running the job again on the
      same data changes nothing. An acknowledged flag keeps its status.

    The caller holds the flag job's advisory lock, so no other writer creates
    flags meanwhile; the rows are still locked while they are compared.
    """
    if not findings:
        return UpsertCounts(created=0, updated=0, unchanged=0)
    user_ids = [finding.user_id for finding in findings]
    query = (
        select(FlagRecord)
        .where(FlagRecord.rule == rule, equals_any(FlagRecord.user_id, user_ids))
        .with_for_update()
    )
    with translate_errors(f"upsert {len(findings)} flags for rule {rule}", session):
        existing = {flag.user_id: flag for flag in session.scalars(query)}
        created = updated = 0
        transitions: list[FlagTransition] = []
        for finding in findings:
            flag = existing.get(finding.user_id)
            if flag is None:
                flag = _new_flag(session, finding, rule=rule, window_s=window_s, now=now)
                created += 1
                kind: str | None = "opened"
            else:
                kind, changed = _update_flag(flag, finding, window_s=window_s, now=now)
                updated += changed
            if kind is not None:
                record_flag_event(session, flag.id, kind, actor=JOB_ACTOR, now=now, detail=_event_detail(flag))
                transitions.append(FlagTransition(kind=kind, flag=FlagSnapshot.of(flag)))
        session.flush()
    return UpsertCounts(
        created=created, updated=updated, unchanged=len(findings) - created - updated, transitions=tuple(transitions)
    )


def firing_flag_users(session: Session, rule: str) -> list[str]:
    """Return the users whose flag under `rule` is firing (met the rule at the latest evaluation)."""
    query = select(FlagRecord.user_id).where(FlagRecord.rule == rule, FlagRecord.firing)
    with translate_errors(f"list firing flags of rule {rule}", session):
        return list(session.scalars(query))


def recover_flags(
    session: Session,
    *,
    rule: str,
    evaluated: Sequence[str] | None,
    meeting: set[str],
    now: datetime,
    current: Mapping[str, CurrentState] | None = None,
) -> list[FlagTransition]:
    """Stop the firing of flags under `rule` whose users were evaluated and no longer meet it.

    An active flag records a `recovered` transition. Its snapshot carries the
    user's numbers now and the reason from `current` when given, while the flag
    keeps the evidence of the last window in which the user met the rule. A
    closed flag only stops firing.
    """
    query = select(FlagRecord).where(FlagRecord.rule == rule, FlagRecord.firing).with_for_update()
    if evaluated is not None:
        query = query.where(equals_any(FlagRecord.user_id, evaluated))
    transitions = []
    with translate_errors(f"recover flags of rule {rule}", session):
        for flag in session.scalars(query):
            if flag.user_id in meeting:
                continue
            flag.firing = False
            flag.updated_at = now
            if flag.status not in ACTIVE_STATUSES:
                continue
            state = (current or {}).get(flag.user_id)
            detail = _event_detail(flag) | ({"now": state.as_json()} if state else {})
            record_flag_event(session, flag.id, "recovered", actor=JOB_ACTOR, now=now, detail=detail)
            transitions.append(FlagTransition(kind="recovered", flag=_recovered_snapshot(flag, state)))
        session.flush()
    return transitions


def retire_flags_of_removed_rules(session: Session, rules: Sequence[str], *, now: datetime) -> int:
    """Stop the firing of flags whose rule is no longer configured, recording a `rule_removed` event; return how many.

    Their status is left for a reviewer to close; no alert is written.
    """
    query = (
        select(FlagRecord)
        .where(FlagRecord.firing, ~equals_any(FlagRecord.rule, list(rules)))
        .with_for_update()
    )
    retired = 0
    with translate_errors("stop the flags of removed rules", session):
        for flag in session.scalars(query):
            flag.firing = False
            flag.updated_at = now
            record_flag_event(session, flag.id, "rule_removed", actor=JOB_ACTOR, now=now, detail=_event_detail(flag))
            retired += 1
        session.flush()
    return retired


def _recovered_snapshot(flag: FlagRecord, state: CurrentState | None) -> FlagSnapshot:
    snapshot = FlagSnapshot.of(flag)
    if state is None:
        return snapshot
    return dataclasses.replace(
        snapshot,
        slip_through_count=state.slip_throughs,
        max_prob=state.max_prob,
        risk=state.risk,
        reason=state.reason,
    )


def flags_due_for_renotify(session: Session, rule: str, *, last_alert_before: datetime) -> list[FlagSnapshot]:
    """Return open, firing flags under `rule` whose latest alert is older than `last_alert_before`.

    Acknowledged flags are not re-notified: someone is on them.
    """
    latest_alert = (
        select(func.max(AlertRecord.created_at)).where(AlertRecord.flag_id == FlagRecord.id).scalar_subquery()
    )
    query = select(FlagRecord).where(
        FlagRecord.rule == rule,
        FlagRecord.status == "open",
        FlagRecord.firing,
        func.coalesce(latest_alert, FlagRecord.opened_at) < last_alert_before,
    )
    with translate_errors(f"find flags of rule {rule} to notify again", session):
        return [FlagSnapshot.of(flag) for flag in session.scalars(query)]


def list_user_flags(session: Session, user_id: str) -> list[FlagRecord]:
    """Return a user's flags under every rule, most recently updated first."""
    query = select(FlagRecord).where(FlagRecord.user_id == user_id).order_by(FlagRecord.updated_at.desc())
    with translate_errors("list a user's flags", session):
        return list(session.scalars(query))


def list_flags(
    session: Session,
    *,
    status: str | None = None,
    rule: str | None = None,
    user_id: str | None = None,
    severity: str | None = None,
    firing: bool | None = None,
    limit: int = 100,
) -> list[FlagRecord]:
    """Return flags that match every filter given, most recently updated first."""
    query = select(FlagRecord).order_by(FlagRecord.updated_at.desc(), FlagRecord.id.desc()).limit(limit)
    filters = {"status": status, "rule": rule, "user_id": user_id, "severity": severity, "firing": firing}
    for name, value in filters.items():
        if value is not None:
            query = query.where(getattr(FlagRecord, name) == value)
    with translate_errors("list flags", session):
        return list(session.scalars(query))


def active_flag_status(session: Session, user_ids: Sequence[str]) -> dict[str, str]:
    """Return, per user with an active flag, `open` if any flag is open, else `acknowledged`."""
    query = select(FlagRecord.user_id, FlagRecord.status).where(
        equals_any(FlagRecord.user_id, user_ids), FlagRecord.status.in_(ACTIVE_STATUSES)
    )
    with translate_errors("read the flag status of users", session):
        rows = session.execute(query).all()
    status: dict[str, str] = {}
    for user_id, flag_status in rows:
        if status.get(user_id) != "open":
            status[user_id] = flag_status
    return status


def set_flag_status(session: Session, flag_id: int, status: str, *, now: datetime) -> bool:
    """Set the review status of a flag, and return False when no flag has that id."""
    return review_flag(session, flag_id, status, actor="unknown", note=None, now=now) is not None


def review_flag(
    session: Session, flag_id: int, status: str, *, actor: str, note: str | None, now: datetime
) -> FlagRecord | None:
    """Set a flag's review status on behalf of `actor`, record the event, and return the flag (None if no such id).

    Setting the status a flag already has still records the event, so a
    reviewer's note is never lost.
    """
    if status not in FLAG_STATUSES:
        raise StorageError(f"invalid flag status {status!r}. Choose one of {', '.join(FLAG_STATUSES)}")
    if not actor.strip():
        raise StorageError("invalid flag review: the reviewer's name is empty; pass a non-empty actor")
    query = (
        update(FLAGS)
        .where(FLAGS.c.id == flag_id)
        .values(status=status, updated_at=now, reviewed_by=actor, reviewed_at=now, review_note=note)
        .returning(FLAGS.c.id)
    )
    with translate_errors(f"set the status of flag {flag_id}", session):
        if session.execute(query).first() is None:
            return None
        record_flag_event(session, flag_id, status, actor=actor, note=note, now=now)
        return session.get(FlagRecord, flag_id, populate_existing=True)


def record_flag_event(
    session: Session,
    flag_id: int,
    kind: str,
    *,
    actor: str,
    now: datetime,
    note: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one transition to the flag's history in `flag_events`."""
    values = {"flag_id": flag_id, "at": now, "kind": kind, "actor": actor, "note": note, "detail": detail or {}}
    with translate_errors(f"record a {kind} event of flag {flag_id}", session):
        session.execute(insert(FlagEventRecord).values(**values))


def list_flag_events(session: Session, flag_id: int) -> list[FlagEventRecord]:
    """Return a flag's history, oldest first."""
    query = select(FlagEventRecord).where(FlagEventRecord.flag_id == flag_id).order_by(FlagEventRecord.at, FlagEventRecord.id)
    with translate_errors(f"list the events of flag {flag_id}", session):
        return list(session.scalars(query))


def _new_flag(session: Session, finding: FlagFinding, *, rule: str, window_s: int, now: datetime) -> FlagRecord:
    flag = FlagRecord(
        user_id=finding.user_id,
        rule=rule,
        status="open",
        opened_at=now,
        updated_at=now,
        window_s=window_s,
        slip_through_count=finding.slip_through_count,
        max_prob=finding.max_prob,
        evidence=finding.evidence,
        severity=finding.severity,
        firing=True,
        firing_since=now,
    )
    session.add(flag)
    session.flush()
    return flag


def _update_flag(flag: FlagRecord, finding: FlagFinding, *, window_s: int, now: datetime) -> tuple[str | None, bool]:
    """Apply a finding to an existing flag; return the transition (or None) and whether anything changed."""
    old_ids = set(flag.evidence.get("exchange_ids", ()))
    cites_new = bool(set(finding.evidence.get("exchange_ids", ())) - old_ids)
    kind: str | None = None
    severity_raised = False
    if flag.status in CLOSED_STATUSES:
        if cites_new:
            kind = "reopened"
            flag.status, flag.opened_at, flag.severity, flag.escalated_at = "open", now, finding.severity, None
            flag.firing, flag.firing_since = True, now
        else:
            flag.firing = True
    elif not flag.firing:
        kind = "reopened"
        flag.status, flag.firing, flag.firing_since = "open", True, now
        flag.severity = _higher(flag.severity, finding.severity)
    elif SEVERITY_RANK[finding.severity] > SEVERITY_RANK[flag.severity] and finding.escalated:
        kind = "escalated"
        flag.status, flag.severity, flag.escalated_at = "open", finding.severity, now
    elif SEVERITY_RANK[finding.severity] > SEVERITY_RANK[flag.severity]:
        # The rule's own severity went up (a configuration change, or a flag
        # from before severities existed): no escalation to announce.
        flag.severity = finding.severity
        severity_raised = True

    data_changed = (
        severity_raised
        or flag.evidence != finding.evidence
        or flag.slip_through_count != finding.slip_through_count
        or flag.max_prob != finding.max_prob
        or flag.window_s != window_s
    )
    if data_changed:
        flag.evidence = finding.evidence
        flag.slip_through_count = finding.slip_through_count
        flag.max_prob = finding.max_prob
        flag.window_s = window_s
    changed = data_changed or kind is not None
    if changed:
        flag.updated_at = now
    return kind, changed


def _higher(first: str, second: str) -> str:
    return first if SEVERITY_RANK[first] >= SEVERITY_RANK[second] else second


def _event_detail(flag: FlagRecord) -> dict[str, Any]:
    return {
        "status": flag.status,
        "severity": flag.severity,
        "slip_through_count": flag.slip_through_count,
        "max_prob": flag.max_prob,
        "risk": flag.evidence.get("risk", {}).get("score"),
    }
