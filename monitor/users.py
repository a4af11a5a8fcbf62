"""Per-user risk: who has the most slip-throughs in a window, and the evidence against one user.

Slip-throughs of override exchanges are not counted as slip-throughs here,
because overrides are excluded from user flags. They are counted as `overrides`.
Nothing returned here contains the text of a conversation or a reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from monitor.settings import RiskSettings
from monitor.user_risk import risk_for_users
from storage.activity import (
    ScoredExchangeSummary,
    TimeWindow,
    count_user_exchanges,
    list_user_exchange_ids,
    max_slip_through_probs,
    recent_slip_through_ids,
    summarize_exchanges,
    total_slip_throughs,
)
from storage.flags import active_flag_status, list_user_flags
from storage.models import FlagRecord

# show_user lists at most this many slip-throughs from the window, newest kept.
MAX_WINDOW_EVIDENCE = 100


@dataclass(frozen=True)
class UserRisk:
    """One user's activity in a window: exchanges, slip-throughs and the highest probability per sentinel."""

    user_id: str
    exchanges: int
    slip_throughs: int
    overrides: int
    injection_attempts: int
    max_prob: float
    max_prob_by_sentinel: dict[str, float]
    flag_status: str | None
    risk: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "exchanges": self.exchanges,
            "slip_throughs": self.slip_throughs,
            "overrides": self.overrides,
            "injection_attempts": self.injection_attempts,
            "max_prob": self.max_prob,
            "max_prob_by_sentinel": dict(self.max_prob_by_sentinel),
            "flag_status": self.flag_status,
            "risk": self.risk,
        }


@dataclass(frozen=True)
class FlagSummary:
    """A flag against the user, with the ids of the exchanges it cites."""

    id: int
    rule: str
    status: str
    opened_at: datetime
    updated_at: datetime
    window_s: int
    slip_through_count: int
    max_prob: float
    exchange_ids: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "status": self.status,
            "opened_at": self.opened_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "window_s": self.window_s,
            "slip_through_count": self.slip_through_count,
            "max_prob": self.max_prob,
            "exchange_ids": list(self.exchange_ids),
        }


@dataclass(frozen=True)
class EvidenceExchange:
    """An exchange cited as evidence: when, its outcome and its per-sentinel probabilities."""

    id: str
    created_at: datetime
    model: str
    outcome: str
    decided_by: str
    outcome_sentinel: str | None
    override: bool
    probabilities: dict[str, float]
    slip_through_sentinels: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "model": self.model,
            "outcome": self.outcome,
            "decided_by": self.decided_by,
            "outcome_sentinel": self.outcome_sentinel,
            "override": self.override,
            "probabilities": dict(self.probabilities),
            "slip_through_sentinels": list(self.slip_through_sentinels),
        }


@dataclass(frozen=True)
class UserDetail:
    """One user's counts in a window, their flags, and the exchanges cited as evidence, oldest first.

    The evidence is the user's latest slip-throughs in the window (at most
    `MAX_WINDOW_EVIDENCE`) together with every exchange their flags cite.
    """

    user_id: str
    window_start: datetime
    window_end: datetime
    exchanges: int
    slip_throughs: int
    overrides: int
    injection_attempts: int
    flags: tuple[FlagSummary, ...]
    evidence: tuple[EvidenceExchange, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "exchanges": self.exchanges,
            "slip_throughs": self.slip_throughs,
            "overrides": self.overrides,
            "injection_attempts": self.injection_attempts,
            "flags": [flag.as_json() for flag in self.flags],
            "evidence": [exchange.as_json() for exchange in self.evidence],
        }


def top_users(
    session: Session, *, window: timedelta, now: datetime, limit: int, risk: RiskSettings | None = None
) -> list[UserRisk]:
    """Return the users with slip-throughs in the window ending at `now`, riskiest first.

    Users are ordered by their number of slip-throughs, then by their highest
    slip-through probability, then by id. With `risk`, each user also gets the
    risk score over the window (docs/risk.md). Users without a slip-through in the
    window are left out.
    """
    if limit <= 0:
        raise ValueError(f"limit={limit} must be positive")
    time_window = TimeWindow.ending(now, window)
    totals = total_slip_throughs(session, time_window, limit=limit)
    user_ids = [total.user_id for total in totals]
    if not user_ids:
        return []

    counts = count_user_exchanges(session, user_ids, time_window)
    maxima = max_slip_through_probs(session, user_ids, time_window)
    flag_status = active_flag_status(session, user_ids)
    risks = risk_for_users(session, user_ids, time_window, risk) if risk else {}
    return [
        UserRisk(
            user_id=total.user_id,
            exchanges=counts[total.user_id].exchanges,
            slip_throughs=total.slip_throughs,
            overrides=counts[total.user_id].overrides,
            injection_attempts=counts[total.user_id].injection_attempts,
            max_prob=total.max_prob,
            max_prob_by_sentinel=maxima.get(total.user_id, {}),
            flag_status=flag_status.get(total.user_id),
            risk=risks[total.user_id][0] if risks else None,
        )
        for total in totals
    ]


def top_users_json(window: timedelta, users: list[UserRisk]) -> dict[str, Any]:
    """Build the JSON of a user ranking, shared by `users top --json` and the HTTP API."""
    return {"window_s": window.total_seconds(), "users": [user.as_json() for user in users]}


def show_user(session: Session, user_id: str, *, window: timedelta, now: datetime) -> UserDetail | None:
    """Return one user's counts, flags and evidence for the window ending at `now`.

    Returns None when the user has neither a stored exchange nor a flag.
    """
    time_window = TimeWindow.ending(now, window)
    flags = list_user_flags(session, user_id)
    if not flags and not list_user_exchange_ids(session, user_id, limit=1):
        return None

    counts = count_user_exchanges(session, [user_id], time_window).get(user_id)
    window_ids = recent_slip_through_ids(session, [user_id], time_window, per_user=MAX_WINDOW_EVIDENCE)
    cited_ids = {exchange_id for flag in flags for exchange_id in _flag_exchange_ids(flag)}
    evidence_ids = sorted(set(window_ids.get(user_id, [])) | cited_ids)
    evidence = summarize_exchanges(session, evidence_ids)

    return UserDetail(
        user_id=user_id,
        window_start=time_window.start,
        window_end=time_window.end,
        exchanges=counts.exchanges if counts else 0,
        slip_throughs=counts.slip_throughs if counts else 0,
        overrides=counts.overrides if counts else 0,
        injection_attempts=counts.injection_attempts if counts else 0,
        flags=tuple(_flag_summary(flag) for flag in flags),
        evidence=tuple(_evidence(summary) for summary in evidence if summary.user_id == user_id),
    )


def _flag_exchange_ids(flag: FlagRecord) -> tuple[str, ...]:
    ids = flag.evidence.get("exchange_ids", [])
    return tuple(str(exchange_id) for exchange_id in ids)


def _flag_summary(flag: FlagRecord) -> FlagSummary:
    return FlagSummary(
        id=flag.id,
        rule=flag.rule,
        status=flag.status,
        opened_at=flag.opened_at,
        updated_at=flag.updated_at,
        window_s=flag.window_s,
        slip_through_count=flag.slip_through_count,
        max_prob=flag.max_prob,
        exchange_ids=_flag_exchange_ids(flag),
    )


def _evidence(summary: ScoredExchangeSummary) -> EvidenceExchange:
    return EvidenceExchange(
        id=summary.id,
        created_at=summary.created_at,
        model=summary.model,
        outcome=summary.outcome_kind,
        decided_by=summary.outcome_decided_by,
        outcome_sentinel=summary.outcome_sentinel,
        override=summary.override,
        probabilities=summary.probabilities,
        slip_through_sentinels=summary.slip_through_sentinels,
    )
