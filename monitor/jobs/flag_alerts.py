"""Alerts about flags: one per transition, and a reminder for flags left open and firing.

The flag job calls these in its own transaction, so an alert exists exactly
when the flag change that caused it was committed. Each alert's dedup key
names the flag, the kind and the moment that makes it unique, so a job run
repeated for the same tick writes nothing new:

- opened, reopened: `flag:<id>:<kind>:<opened_at or firing_since>`
- escalated: `flag:<id>:escalated:<severity>:<opened_at>`
- recovered: `flag:<id>:recovered:<firing_since>`
- renotify: `flag:<id>:renotify:<firing_since>:<n>`, the n-th interval since firing began

Payloads carry ids, counts, probabilities and the risk score, never request text.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from storage.alerts import AlertDraft, enqueue_alert
from storage.flags import FlagSnapshot, FlagTransition, flags_due_for_renotify

# An alert cites at most this many exchange ids; the flag has the rest.
MAX_ALERT_EXCHANGES = 10


def enqueue_transition_alerts(
    session: Session, transitions: Sequence[FlagTransition], *, sinks: Sequence[str], now: datetime
) -> int:
    """Write one alert per transition; return how many were new."""
    return sum(
        enqueue_alert(session, _draft(transition.kind, transition.flag, _key(transition), now), sinks=sinks, now=now)
        for transition in transitions
    )


def enqueue_renotifications(
    session: Session, rule: str, *, renotify_s: int, sinks: Sequence[str], now: datetime
) -> int:
    """Remind about open, firing flags whose latest alert is `renotify_s` or more old; 0 turns reminders off."""
    if renotify_s <= 0:
        return 0
    interval = timedelta(seconds=renotify_s)
    created = 0
    for flag in flags_due_for_renotify(session, rule, last_alert_before=now - interval):
        since = flag.firing_since or flag.opened_at
        number = int((now - since) / interval)
        key = f"flag:{flag.id}:renotify:{since.isoformat()}:{number}"
        created += enqueue_alert(session, _draft("renotify", flag, key, now), sinks=sinks, now=now)
    return created


def _key(transition: FlagTransition) -> str:
    flag = transition.flag
    if transition.kind == "escalated":
        return f"flag:{flag.id}:escalated:{flag.severity}:{flag.opened_at.isoformat()}"
    if transition.kind == "opened":
        return f"flag:{flag.id}:opened:{flag.opened_at.isoformat()}"
    since = flag.firing_since or flag.opened_at
    return f"flag:{flag.id}:{transition.kind}:{since.isoformat()}"


def _draft(kind: str, flag: FlagSnapshot, key: str, now: datetime) -> AlertDraft:
    return AlertDraft(
        dedup_key=key,
        kind=kind,
        severity=flag.severity,
        flag_id=flag.id,
        user_id=flag.user_id,
        rule=flag.rule,
        payload=_payload(kind, flag, now),
    )


def _payload(kind: str, flag: FlagSnapshot, now: datetime) -> dict[str, Any]:
    return {
        "summary": _summary(kind, flag),
        "kind": kind,
        "at": now.isoformat(),
        "flag_id": flag.id,
        "user_id": flag.user_id,
        "rule": flag.rule,
        "status": flag.status,
        "severity": flag.severity,
        "opened_at": flag.opened_at.isoformat(),
        "window_s": flag.window_s,
        "slip_through_count": flag.slip_through_count,
        "max_prob": flag.max_prob,
        "risk": flag.risk,
        "exchange_ids": list(flag.exchange_ids[-MAX_ALERT_EXCHANGES:]),
        "reason": flag.reason,
    }


def _summary(kind: str, flag: FlagSnapshot) -> str:
    risk = f", risk {flag.risk:.2f}" if flag.risk is not None else ""
    facts = f"{flag.slip_through_count} slip-throughs, highest probability {flag.max_prob:.3g}{risk}"
    if kind == "recovered":
        # The numbers are the user's now, in the window that ends at this run.
        facts = f"now {facts}" + (f"; {flag.reason}" if flag.reason else "")
    what = {
        "opened": "flagged",
        "reopened": "flagged again",
        "escalated": f"escalated to {flag.severity}",
        "recovered": "no longer meets the rule",
        "renotify": "still flagged and not acknowledged",
    }.get(kind, kind)
    return f"[{flag.severity}] user {flag.user_id} {what} under rule {flag.rule} (flag {flag.id}): {facts}"
