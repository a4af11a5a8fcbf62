"""Alert repository: the outbox of alerts, their deliveries per sink, and the health of each sink.

An alert is written in the transaction of the change that caused it, with one
pending delivery per configured sink. The dispatcher (monitor/alerts) claims
due deliveries with `SELECT ... FOR UPDATE SKIP LOCKED` and moves each claimed
delivery's `next_attempt_at` past a lease, so that replicas never claim the
same delivery while it is being sent. The claim's lease time also serves as
its token: a result is written only while the delivery still holds that time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from storage.errors import translate_errors
from storage.models import SEVERITIES, AlertDeliveryRecord, AlertRecord, AlertSinkRecord

ALERT_KINDS = ("opened", "reopened", "escalated", "renotify", "recovered", "reviewed", "sink_disabled", "test")


@dataclass(frozen=True)
class AlertDraft:
    """An alert to store: the same `dedup_key` is the same alert, which is stored and sent once.

    `payload` must be JSON-safe, must contain a human-readable `summary`
    string, and must never contain request or reply text, because every sink
    receives it.
    """

    dedup_key: str
    kind: str
    severity: str
    flag_id: int | None
    user_id: str | None
    rule: str | None
    payload: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.dedup_key:
            raise ValueError("invalid alert: dedup_key is empty; derive it from what makes the alert unique")
        if self.kind not in ALERT_KINDS:
            raise ValueError(f"invalid alert kind {self.kind!r}; choose one of {', '.join(ALERT_KINDS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"invalid alert severity {self.severity!r}; choose one of {', '.join(SEVERITIES)}")
        if not isinstance(self.payload.get("summary"), str) or not self.payload["summary"]:
            raise ValueError(f"invalid alert {self.dedup_key!r}: payload needs a non-empty 'summary' string")


@dataclass(frozen=True)
class StoredAlert:
    """An alert as stored, with its database id."""

    id: int
    dedup_key: str
    kind: str
    severity: str
    flag_id: int | None
    user_id: str | None
    rule: str | None
    created_at: datetime
    payload: dict[str, Any]


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery that this replica claimed until `lease_until`; `attempts` counts this attempt."""

    alert: StoredAlert
    sink: str
    attempts: int
    lease_until: datetime


@dataclass(frozen=True)
class SinkState:
    """One sink's row in alert_sinks."""

    name: str
    enabled: bool
    consecutive_failures: int
    disabled_at: datetime | None
    last_error: str | None
    updated_at: datetime


@dataclass(frozen=True)
class SinkHealth:
    """A sink's pending deliveries and the oldest one's creation time, with its state (None before its first dispatch)."""

    name: str
    state: SinkState | None
    pending: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True)
class SinkFailure:
    """The sink's consecutive failures after a failed delivery, and whether this failure disabled it."""

    consecutive_failures: int
    disabled: bool
    disabled_at: datetime | None


@dataclass(frozen=True)
class DeliveryState:
    """One delivery of a listed alert."""

    sink: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class AlertWithDeliveries:
    alert: StoredAlert
    deliveries: tuple[DeliveryState, ...]


def enqueue_alert(session: Session, draft: AlertDraft, *, sinks: Sequence[str], now: datetime) -> bool:
    """Insert the alert unless its dedup_key exists, with one pending delivery per sink; return True if new.

    An alert whose key is already stored is left as it was, and no delivery
    is added for it, so enqueueing the same draft again sends nothing more.
    """
    _require_aware(now)
    query = (
        insert(AlertRecord)
        .values(
            dedup_key=draft.dedup_key,
            kind=draft.kind,
            severity=draft.severity,
            flag_id=draft.flag_id,
            user_id=draft.user_id,
            rule=draft.rule,
            created_at=now,
            payload=draft.payload,
        )
        .on_conflict_do_nothing(index_elements=[AlertRecord.dedup_key])
        .returning(AlertRecord.id)
    )
    with translate_errors(f"store alert {draft.dedup_key}", session):
        alert_id = session.execute(query).scalar_one_or_none()
        if alert_id is None:
            return False
        rows = [
            {"alert_id": alert_id, "sink": sink, "status": "pending", "attempts": 0, "next_attempt_at": now}
            for sink in dict.fromkeys(sinks)
        ]
        if rows:
            session.execute(insert(AlertDeliveryRecord), rows)
    return True


def ensure_sinks(session: Session, names: Sequence[str], *, now: datetime) -> None:
    """Add a healthy alert_sinks row for each name that has none; existing rows keep their state."""
    if not names:
        return
    rows = [{"name": name, "enabled": True, "consecutive_failures": 0, "updated_at": now} for name in names]
    query = insert(AlertSinkRecord).on_conflict_do_nothing(index_elements=[AlertSinkRecord.name])
    with translate_errors("register the alert sinks", session):
        session.execute(query, rows)


def read_sinks(session: Session, names: Sequence[str] | None = None) -> list[SinkState]:
    """Return the state of the named sinks, or of every sink, by name."""
    query = select(AlertSinkRecord).order_by(AlertSinkRecord.name)
    if names is not None:
        query = query.where(AlertSinkRecord.name.in_(list(names)))
    with translate_errors("read the alert sinks", session):
        return [_sink_state(record) for record in session.scalars(query)]


def claim_due_deliveries(
    session: Session, *, sinks: Sequence[str], now: datetime, lease_until: datetime, limit: int
) -> list[ClaimedDelivery]:
    """Claim up to `limit` pending deliveries due at `now` for the enabled sinks among `sinks`.

    Rows that another transaction has locked are skipped (SKIP LOCKED), and
    each claimed row gets `next_attempt_at = lease_until` and one more attempt,
    so that no replica claims it again before the lease ends. Commit soon
    after, because the row locks last until the transaction ends.
    """
    _require_aware(now)
    if not sinks:
        return []
    delivery, alert, sink_table = AlertDeliveryRecord, AlertRecord, AlertSinkRecord
    query = (
        select(delivery.alert_id, delivery.sink, delivery.attempts, alert)
        .join(alert, alert.id == delivery.alert_id)
        .join(sink_table, sink_table.name == delivery.sink)
        .where(
            delivery.status == "pending",
            delivery.next_attempt_at <= now,
            delivery.sink.in_(list(sinks)),
            sink_table.enabled.is_(True),
        )
        .order_by(delivery.next_attempt_at, delivery.alert_id, delivery.sink)
        .limit(limit)
        .with_for_update(of=delivery, skip_locked=True)
    )
    with translate_errors("claim due alert deliveries", session):
        rows = session.execute(query).all()
        if not rows:
            return []
        keys = [(row.alert_id, row.sink) for row in rows]
        session.execute(
            update(delivery)
            .where(tuple_(delivery.alert_id, delivery.sink).in_(keys))
            .values(attempts=delivery.attempts + 1, next_attempt_at=lease_until)
        )
    return [
        ClaimedDelivery(
            alert=_stored_alert(row.AlertRecord), sink=row.sink, attempts=row.attempts + 1, lease_until=lease_until
        )
        for row in rows
    ]


def release_claim(session: Session, claim: ClaimedDelivery, *, now: datetime) -> bool:
    """Give back a claimed delivery that was not sent: due again at `now`, the attempt not counted."""
    query = (
        _claimed_row(claim)
        .values(attempts=AlertDeliveryRecord.attempts - 1, next_attempt_at=now)
        .returning(AlertDeliveryRecord.alert_id)
    )
    with translate_errors(f"release the {claim.sink} delivery of alert {claim.alert.id}", session):
        return session.execute(query).first() is not None


def mark_delivered(session: Session, claim: ClaimedDelivery, *, now: datetime) -> bool:
    """Mark a claimed delivery delivered, and return False when it was no longer pending.

    The lease is not checked: the sink has the alert, even if the lease ran
    out and another replica claimed the delivery again meanwhile.
    """
    query = (
        update(AlertDeliveryRecord)
        .where(
            AlertDeliveryRecord.alert_id == claim.alert.id,
            AlertDeliveryRecord.sink == claim.sink,
            AlertDeliveryRecord.status == "pending",
        )
        .values(status="delivered", delivered_at=now, last_error=None)
        .returning(AlertDeliveryRecord.alert_id)
    )
    with translate_errors(f"mark alert {claim.alert.id} delivered to {claim.sink}", session):
        return session.execute(query).first() is not None


def record_delivery_failure(
    session: Session, claim: ClaimedDelivery, *, error: str, next_attempt_at: datetime
) -> bool:
    """Store a failed attempt of a claimed delivery and when to retry it; False when the claim had expired."""
    query = (
        _claimed_row(claim)
        .values(last_error=error, next_attempt_at=next_attempt_at)
        .returning(AlertDeliveryRecord.alert_id)
    )
    with translate_errors(f"record a failed delivery of alert {claim.alert.id} to {claim.sink}", session):
        return session.execute(query).first() is not None


def record_sink_success(session: Session, sink: str, *, now: datetime) -> None:
    """Reset the sink's consecutive failures after a delivery succeeded; a healthy sink's row is not written."""
    query = (
        update(AlertSinkRecord)
        .where(AlertSinkRecord.name == sink, AlertSinkRecord.consecutive_failures > 0)
        .values(consecutive_failures=0, last_error=None, updated_at=now)
    )
    with translate_errors(f"record a delivery to alert sink {sink}", session):
        session.execute(query)


def record_sink_failure(
    session: Session, sink: str, *, error: str, now: datetime, disable_after: int
) -> SinkFailure | None:
    """Count a failed delivery against an enabled sink, and disable it at `disable_after` consecutive failures.

    The count and the switch happen in one UPDATE, so when several replicas
    fail at once exactly one of them gets `disabled=True`. Returns None when
    the sink is already disabled or has no row, and then counts nothing.
    """
    failures = AlertSinkRecord.consecutive_failures + 1
    reaches_limit = failures >= disable_after
    query = (
        update(AlertSinkRecord)
        .where(AlertSinkRecord.name == sink, AlertSinkRecord.enabled.is_(True))
        .values(
            consecutive_failures=failures,
            last_error=error,
            updated_at=now,
            enabled=~reaches_limit,
            disabled_at=case((reaches_limit, now), else_=AlertSinkRecord.disabled_at),
        )
        .returning(AlertSinkRecord.consecutive_failures, AlertSinkRecord.enabled, AlertSinkRecord.disabled_at)
    )
    with translate_errors(f"record a failed delivery to alert sink {sink}", session):
        row = session.execute(query).first()
    if row is None:
        return None
    return SinkFailure(consecutive_failures=row.consecutive_failures, disabled=not row.enabled, disabled_at=row.disabled_at)


def enable_sink(session: Session, name: str, *, now: datetime) -> bool:
    """Enable a sink with no failures counted, and make its pending deliveries due now; False if unknown."""
    query = (
        update(AlertSinkRecord)
        .where(AlertSinkRecord.name == name)
        .values(enabled=True, consecutive_failures=0, disabled_at=None, last_error=None, updated_at=now)
        .returning(AlertSinkRecord.name)
    )
    due_now = (
        update(AlertDeliveryRecord)
        .where(AlertDeliveryRecord.sink == name, AlertDeliveryRecord.status == "pending")
        .values(next_attempt_at=func.least(AlertDeliveryRecord.next_attempt_at, now))
    )
    with translate_errors(f"enable alert sink {name}", session):
        if session.execute(query).first() is None:
            return False
        session.execute(due_now)
    return True


def list_sink_health(session: Session) -> list[SinkHealth]:
    """Return every sink's state with its pending deliveries, including sinks that only deliveries name."""
    pending = (
        select(
            AlertDeliveryRecord.sink,
            func.count().label("pending"),
            func.min(AlertRecord.created_at).label("oldest"),
        )
        .join(AlertRecord, AlertRecord.id == AlertDeliveryRecord.alert_id)
        .where(AlertDeliveryRecord.status == "pending")
        .group_by(AlertDeliveryRecord.sink)
    )
    with translate_errors("read the alert sinks' health", session):
        counts = {row.sink: (row.pending, row.oldest) for row in session.execute(pending)}
        states = {record.name: _sink_state(record) for record in session.scalars(select(AlertSinkRecord))}
    health = []
    for name in sorted(set(states) | set(counts)):
        count, oldest = counts.get(name, (0, None))
        health.append(SinkHealth(name=name, state=states.get(name), pending=count, oldest_pending_at=oldest))
    return health


def list_alerts(session: Session, *, limit: int) -> list[AlertWithDeliveries]:
    """Return the newest alerts, newest first, each with its deliveries ordered by sink."""
    alerts_query = select(AlertRecord).order_by(AlertRecord.created_at.desc(), AlertRecord.id.desc()).limit(limit)
    with translate_errors("list alerts", session):
        alerts = [_stored_alert(record) for record in session.scalars(alerts_query)]
        ids = [alert.id for alert in alerts]
        deliveries_query = (
            select(AlertDeliveryRecord)
            .where(AlertDeliveryRecord.alert_id.in_(ids))
            .order_by(AlertDeliveryRecord.sink)
        )
        by_alert: dict[int, list[DeliveryState]] = {alert_id: [] for alert_id in ids}
        for record in session.scalars(deliveries_query) if ids else ():
            by_alert[record.alert_id].append(_delivery_state(record))
    return [AlertWithDeliveries(alert=alert, deliveries=tuple(by_alert[alert.id])) for alert in alerts]


def _claimed_row(claim: ClaimedDelivery) -> Any:
    """Build an UPDATE of the delivery that matches only while it is pending and still has this claim's lease."""
    return update(AlertDeliveryRecord).where(
        AlertDeliveryRecord.alert_id == claim.alert.id,
        AlertDeliveryRecord.sink == claim.sink,
        AlertDeliveryRecord.status == "pending",
        AlertDeliveryRecord.next_attempt_at == claim.lease_until,
    )


def _stored_alert(record: AlertRecord) -> StoredAlert:
    return StoredAlert(
        id=record.id,
        dedup_key=record.dedup_key,
        kind=record.kind,
        severity=record.severity,
        flag_id=record.flag_id,
        user_id=record.user_id,
        rule=record.rule,
        created_at=record.created_at,
        payload=dict(record.payload),
    )


def _sink_state(record: AlertSinkRecord) -> SinkState:
    return SinkState(
        name=record.name,
        enabled=record.enabled,
        consecutive_failures=record.consecutive_failures,
        disabled_at=record.disabled_at,
        last_error=record.last_error,
        updated_at=record.updated_at,
    )


def _delivery_state(record: AlertDeliveryRecord) -> DeliveryState:
    return DeliveryState(
        sink=record.sink,
        status=record.status,
        attempts=record.attempts,
        next_attempt_at=record.next_attempt_at,
        last_error=record.last_error,
        delivered_at=record.delivered_at,
    )


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError(f"invalid time {now.isoformat()}: alerts need a timezone-aware time, such as UTC")
