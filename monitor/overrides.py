"""The override audit: the trusted-user allowlist, the override exchanges, and what both kept out of user flags.

There are two kinds of override. A message marks one exchange as an override
(`override.trusted`), and the allowlist exempts a user for a period. In both
cases the exchanges are scored and stored as usual, but their slip-throughs
count towards no flag. The audit lists, for a period, the allowlist entries
that were in force, the override exchanges with their probabilities and the
sentinels that slipped through, and per user how many slip-throughs were
left out of flags. It never contains request or reply text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from monitor.errors import SentinelMonitorError
from storage.models import TrustedUserRecord
from storage.overrides import (
    ExcludedSlipThroughs,
    OverrideExchange,
    count_excluded_slip_throughs,
    count_override_exchanges,
    list_override_exchanges,
)
from storage.trusted_users import (
    AllowlistState,
    active_trusted_user_ids,
    entry_state,
    list_entries_in_force,
)


class InvalidAuditQueryError(SentinelMonitorError):
    """The period or the limit of an override audit is invalid."""


@dataclass(frozen=True)
class AllowlistEntry:
    """One allowlist entry and its state at the time of the query."""

    id: int
    user_id: str
    reason: str
    approver: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    state: AllowlistState

    @classmethod
    def from_record(cls, record: TrustedUserRecord, *, now: datetime) -> AllowlistEntry:
        return cls(
            id=record.id,
            user_id=record.user_id,
            reason=record.reason,
            approver=record.approver,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            revoked_by=record.revoked_by,
            state=entry_state(record, now=now),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "state": self.state,
            "reason": self.reason,
            "approver": self.approver,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "revoked_at": _isoformat(self.revoked_at),
            "revoked_by": self.revoked_by,
        }


@dataclass(frozen=True)
class UserExclusions:
    """A user's slip-throughs left out of flags in the period, and whether the user is trusted at the query time."""

    counts: ExcludedSlipThroughs
    trusted_now: bool

    def as_json(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "user_id": counts.user_id,
            "override_exchanges": counts.override_exchanges,
            "override_slip_throughs": counts.override_slip_throughs,
            "allowlisted_slip_throughs": counts.allowlisted_slip_throughs,
            "excluded_slip_throughs": counts.override_slip_throughs + counts.allowlisted_slip_throughs,
            "trusted_now": self.trusted_now,
        }


@dataclass(frozen=True)
class OverrideAudit:
    """The override audit of the period `since < created_at <= until`, evaluated at `now`.

    `override_exchange_count` counts every override exchange of the period,
    of which `exchanges` lists the newest `limit`.
    """

    since: datetime | None
    until: datetime
    now: datetime
    user_id: str | None
    limit: int
    allowlist: tuple[AllowlistEntry, ...]
    override_exchange_count: int
    exchanges: tuple[OverrideExchange, ...]
    users: tuple[UserExclusions, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "since": _isoformat(self.since),
            "until": self.until.isoformat(),
            "now": self.now.isoformat(),
            "user_id": self.user_id,
            "limit": self.limit,
            "allowlist": [entry.as_json() for entry in self.allowlist],
            "override_exchange_count": self.override_exchange_count,
            "exchanges": [_exchange_json(exchange) for exchange in self.exchanges],
            "users": [user.as_json() for user in self.users],
        }


def override_audit(
    session: Session,
    *,
    since: datetime | None,
    until: datetime | None,
    user_id: str | None,
    limit: int,
    now: datetime,
) -> OverrideAudit:
    """Build the override audit of the exchanges created in `since < created_at <= until`.

    `until` defaults to `now`, and `since` None means no lower bound. Each of
    the three lists contains at most `limit` items: the allowlist entries that
    were active at some time in the period, the newest override exchanges,
    and the users with the most excluded slip-throughs. Entry states are
    their states at `now`. Raises `InvalidAuditQueryError` for a naive
    datetime, an empty period or a limit below 1.
    """
    until = until or now
    _check_query(since, until, now, limit)
    records = list_entries_in_force(session, since=since, until=until, user_id=user_id, limit=limit)
    exchanges = list_override_exchanges(session, since=since, until=until, user_id=user_id, limit=limit)
    count = count_override_exchanges(session, since=since, until=until, user_id=user_id)
    exclusions = count_excluded_slip_throughs(session, since=since, until=until, user_id=user_id, limit=limit, now=now)
    trusted = active_trusted_user_ids(session, [item.user_id for item in exclusions], now=now)
    return OverrideAudit(
        since=since,
        until=until,
        now=now,
        user_id=user_id,
        limit=limit,
        allowlist=tuple(AllowlistEntry.from_record(record, now=now) for record in records),
        override_exchange_count=count,
        exchanges=tuple(exchanges),
        users=tuple(UserExclusions(counts=item, trusted_now=item.user_id in trusted) for item in exclusions),
    )


def _check_query(since: datetime | None, until: datetime, now: datetime, limit: int) -> None:
    for name, value in (("since", since), ("until", until), ("now", now)):
        if value is not None and value.tzinfo is None:
            raise InvalidAuditQueryError(f"{name} {value.isoformat()} has no time zone; give a time with an offset")
    if since is not None and since >= until:
        raise InvalidAuditQueryError(
            f"the audit period is empty: since {since.isoformat()} is not before until {until.isoformat()}"
        )
    if limit < 1:
        raise InvalidAuditQueryError(f"invalid limit {limit}; give a positive number of items per list")


def _exchange_json(exchange: OverrideExchange) -> dict[str, Any]:
    summary = exchange.summary
    return {
        "id": summary.id,
        "user_id": summary.user_id,
        "model": summary.model,
        "created_at": summary.created_at.isoformat(),
        "outcome": summary.outcome_kind,
        "outcome_decided_by": summary.outcome_decided_by,
        "override_reason": exchange.override_reason,
        "probabilities": summary.probabilities,
        # What would have counted towards a flag had the exchange not been an override.
        "slip_through": summary.slip_through,
        "slip_through_sentinels": list(summary.slip_through_sentinels),
    }


def _isoformat(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
