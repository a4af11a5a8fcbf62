"""Flags as the API and the `flags` command show them, and the review action both use."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from monitor.api.schemas import Flag, FlagDetail, FlagEvent
from storage.alerts import AlertDraft, enqueue_alert
from storage.engine import SessionFactory, transaction
from storage.flags import list_flag_events, list_flags, review_flag
from storage.history import load_flag
from storage.models import FlagRecord

logger = logging.getLogger(__name__)


def find_flags(
    session: Session,
    *,
    status: str | None = None,
    rule: str | None = None,
    user_id: str | None = None,
    severity: str | None = None,
    firing: bool | None = None,
    limit: int = 100,
) -> list[Flag]:
    """Return the flags that match every filter given, most recently updated first."""
    records = list_flags(
        session, status=status, rule=rule, user_id=user_id, severity=severity, firing=firing, limit=limit
    )
    return [Flag.from_record(record) for record in records]


def flag_detail(session: Session, flag_id: int) -> FlagDetail | None:
    """Return the flag with its events, or None when no flag has that id."""
    record = load_flag(session, flag_id)
    if record is None:
        return None
    events = [FlagEvent.from_record(event) for event in list_flag_events(session, flag_id)]
    return FlagDetail(**Flag.from_record(record).model_dump(), events=events)


def review(
    session_factory: SessionFactory,
    flag_id: int,
    status: str,
    *,
    actor: str,
    note: str | None,
    now: datetime,
    sinks: Sequence[str] = (),
) -> FlagDetail | None:
    """Set a flag's status on behalf of `actor`, record the event and a `reviewed` alert; None for an unknown id.

    The alert shows the team who changed the flag. It leaves the reviewer's
    note out, since a note may quote the request.
    """
    with transaction(session_factory, f"review flag {flag_id}") as session:
        record = review_flag(session, flag_id, status, actor=actor, note=note, now=now)
        if record is None:
            return None
        enqueue_alert(session, _review_alert(record, actor=actor, now=now), sinks=sinks, now=now)
    logger.info("flag %d set to %s by %s", flag_id, status, actor)
    with session_factory() as session:
        return flag_detail(session, flag_id)


def _review_alert(flag: FlagRecord, *, actor: str, now: datetime) -> AlertDraft:
    summary = f"[{flag.severity}] flag {flag.id} of user {flag.user_id} under rule {flag.rule} set to {flag.status} by {actor}"
    return AlertDraft(
        dedup_key=f"flag:{flag.id}:reviewed:{flag.status}:{now.isoformat()}",
        kind="reviewed",
        severity=flag.severity,
        flag_id=flag.id,
        user_id=flag.user_id,
        rule=flag.rule,
        payload={
            "summary": summary,
            "kind": "reviewed",
            "at": now.isoformat(),
            "flag_id": flag.id,
            "user_id": flag.user_id,
            "rule": flag.rule,
            "status": flag.status,
            "severity": flag.severity,
            "reviewed_by": actor,
        },
    )
