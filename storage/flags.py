"""Flag repository: one flag per (user, rule), upserted by the flag job and reviewed by people."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, case, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from storage.errors import StorageError, translate_errors
from storage.models import FLAG_STATUSES, Base, FlagEventRecord, FlagRecord
from storage.sql import equals_any

FLAGS: Table = Base.metadata.tables["flags"]

ACTIVE_STATUSES = ("open", "acknowledged")
CLOSED_STATUSES = ("resolved", "false_positive")


@dataclass(frozen=True)
class FlagFinding:
    """A user who meets a flag rule in the current window, with the count, maximum probability and evidence."""

    user_id: str
    slip_through_count: int
    max_prob: float
    evidence: dict[str, Any]


@dataclass(frozen=True)
class UpsertCounts:
    """How many flags an upsert created, changed, and left unchanged."""

    created: int
    updated: int
    unchanged: int


def upsert_flags(
    session: Session, findings: Sequence[FlagFinding], *, rule: str, window_s: int, now: datetime
) -> UpsertCounts:
    """Create an open flag for each finding, or update the user's flag under `rule`.

    An existing flag changes only when its evidence, count or maximum
    probability differ, so running the job again on the same data changes
    nothing. A resolved or false-positive flag is opened again when the new
    evidence cites an exchange that its old evidence did not. An acknowledged
    flag keeps its status.
    """
    if not findings:
        return UpsertCounts(created=0, updated=0, unchanged=0)

    user_ids = [finding.user_id for finding in findings]
    existing_query = select(FLAGS.c.user_id).where(FLAGS.c.rule == rule, equals_any(FLAGS.c.user_id, user_ids))
    rows = [_flag_row(finding, rule=rule, window_s=window_s, now=now) for finding in findings]
    with translate_errors(f"upsert {len(rows)} flags for rule {rule}", session):
        existing = set(session.scalars(existing_query))
        changed = set(session.scalars(_upsert_statement(), rows))

    created = len(changed - existing)
    updated = len(changed & existing)
    return UpsertCounts(created=created, updated=updated, unchanged=len(findings) - created - updated)


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
        raise StorageError("a flag review needs the reviewer's name; give a non-empty actor")
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


def _flag_row(finding: FlagFinding, *, rule: str, window_s: int, now: datetime) -> dict[str, Any]:
    return {
        "user_id": finding.user_id,
        "rule": rule,
        "status": "open",
        "opened_at": now,
        "updated_at": now,
        "window_s": window_s,
        "slip_through_count": finding.slip_through_count,
        "max_prob": finding.max_prob,
        "evidence": finding.evidence,
    }


def _upsert_statement() -> Any:
    statement = insert(FLAGS)
    new = statement.excluded
    cites_new_exchange = ~FLAGS.c.evidence["exchange_ids"].contains(new.evidence["exchange_ids"])
    # An IN list would be an "expanding" parameter, which executemany() rejects.
    closed = or_(*(FLAGS.c.status == status for status in CLOSED_STATUSES))
    reopen = and_(closed, cites_new_exchange)
    changed = or_(
        FLAGS.c.evidence.is_distinct_from(new.evidence),
        FLAGS.c.slip_through_count.is_distinct_from(new.slip_through_count),
        FLAGS.c.max_prob.is_distinct_from(new.max_prob),
        FLAGS.c.window_s.is_distinct_from(new.window_s),
    )
    return statement.on_conflict_do_update(
        index_elements=[FLAGS.c.user_id, FLAGS.c.rule],
        set_={
            "status": case((reopen, "open"), else_=FLAGS.c.status),
            "opened_at": case((reopen, new.opened_at), else_=FLAGS.c.opened_at),
            "updated_at": new.updated_at,
            "window_s": new.window_s,
            "slip_through_count": new.slip_through_count,
            "max_prob": new.max_prob,
            "evidence": new.evidence,
        },
        where=changed,
    ).returning(FLAGS.c.user_id)
