"""Trusted-user allowlist: who is exempt from user flags, why, who approved it, and until when.

An entry is active at a time `now` when `created_at <= now < expires_at` and
it was not revoked at or before `now`. A user is trusted while at least one
of their entries is active. Allowing a user who is already trusted adds a new
entry, so the user stays trusted until the latest expiry among the active
entries. Revoking ends every active entry of the user. Rows are never updated
except to revoke them and never deleted, so the table is the audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from storage.errors import StorageError, translate_errors
from storage.models import TrustedUserRecord
from storage.sql import equals_any

AllowlistState = Literal["active", "expired", "revoked"]

# An entry lasts at most this long. Trust that must outlast it is renewed by
# allowing the user again, which records a new approver and reason.
MAX_TRUST_PERIOD = timedelta(days=365)

# The message formats accept user ids of at most 256 characters; the other
# limits keep one entry a short row.
MAX_USER_ID_CHARS = 256
MAX_APPROVER_CHARS = 256
MAX_REASON_CHARS = 2000


class AllowlistError(StorageError):
    """An allowlist change was rejected: an invalid user id, reason, approver, revoker or expiry."""


def allow_user(
    session: Session, user_id: str, *, reason: str, approver: str, expires_at: datetime, now: datetime
) -> TrustedUserRecord:
    """Add an allowlist entry that trusts `user_id` from `now` until `expires_at`, and return it.

    The user id is stored as given, because it must equal the exchanges'
    user id, and the reason and approver without leading and trailing
    whitespace. Raises `AllowlistError` when a text is blank or too long, when
    `expires_at` is not after `now`, or when it is more than
    `MAX_TRUST_PERIOD` after `now`.
    """
    _required_text("user id", user_id, MAX_USER_ID_CHARS)
    reason = _required_text("reason", reason, MAX_REASON_CHARS)
    approver = _required_text("approver", approver, MAX_APPROVER_CHARS)
    _check_expiry(expires_at, now)
    record = TrustedUserRecord(
        user_id=user_id, reason=reason, approver=approver, created_at=now, expires_at=expires_at
    )
    with translate_errors(f"add user {user_id!r} to the allowlist", session):
        session.add(record)
        session.flush()
    return record


def revoke_user(session: Session, user_id: str, *, by: str, now: datetime) -> int:
    """Revoke every entry of `user_id` that is active at `now`, on behalf of `by`, and return how many.

    Returns 0 when the user has no active entry. Expired and already revoked
    entries keep their state.
    """
    _required_text("user id", user_id, MAX_USER_ID_CHARS)
    by = _required_text("revoker", by, MAX_APPROVER_CHARS)
    _require_aware("now", now)
    query = (
        update(TrustedUserRecord)
        .where(TrustedUserRecord.user_id == user_id, active_at(now))
        .values(revoked_at=now, revoked_by=by)
        .returning(TrustedUserRecord.id)
    )
    with translate_errors(f"revoke the allowlist entries of user {user_id!r}", session):
        return len(session.execute(query).all())


def active_trusted_user_ids(session: Session, user_ids: Sequence[str] | None, *, now: datetime) -> set[str]:
    """Users (among user_ids, or all when None) with an allowlist entry that is neither expired nor revoked at `now`."""
    _require_aware("now", now)
    if user_ids is not None and not user_ids:
        return set()
    query = select(TrustedUserRecord.user_id).where(active_at(now)).distinct()
    if user_ids is not None:
        query = query.where(equals_any(TrustedUserRecord.user_id, user_ids))
    with translate_errors("read the active allowlist entries", session):
        return set(session.scalars(query))


def list_trusted_users(
    session: Session, *, include_inactive: bool, now: datetime, user_id: str | None = None
) -> list[TrustedUserRecord]:
    """Return the allowlist entries that exist at `now`, newest first: only the active ones unless `include_inactive`.

    Entries created after `now` are left out, so a past `now` shows the
    allowlist as it was then.
    """
    _require_aware("now", now)
    query = (
        select(TrustedUserRecord)
        .where(TrustedUserRecord.created_at <= now)
        .order_by(TrustedUserRecord.created_at.desc(), TrustedUserRecord.id.desc())
    )
    if not include_inactive:
        query = query.where(active_at(now))
    if user_id is not None:
        query = query.where(TrustedUserRecord.user_id == user_id)
    with translate_errors("list the allowlist", session):
        return list(session.scalars(query))


def list_entries_in_force(
    session: Session,
    *,
    since: datetime | None,
    until: datetime,
    user_id: str | None = None,
    limit: int,
) -> list[TrustedUserRecord]:
    """Return at most `limit` entries that were active at some time in `since < t <= until`, newest first.

    With `since` None, every entry created at or before `until` qualifies.
    """
    query = select(TrustedUserRecord).where(TrustedUserRecord.created_at <= until)
    if since is not None:
        query = query.where(_entry_end() > since)
    if user_id is not None:
        query = query.where(TrustedUserRecord.user_id == user_id)
    query = query.order_by(TrustedUserRecord.created_at.desc(), TrustedUserRecord.id.desc()).limit(limit)
    with translate_errors("list the allowlist entries of a period", session):
        return list(session.scalars(query))


def entry_state(record: TrustedUserRecord, *, now: datetime) -> AllowlistState:
    """Return whether an entry is active, expired or revoked at `now`; an entry revoked after it expired is expired."""
    if record.revoked_at is not None and record.revoked_at <= now and record.revoked_at < record.expires_at:
        return "revoked"
    if record.expires_at <= now:
        return "expired"
    return "active"


def active_at(now: datetime) -> ColumnElement[bool]:
    """Select the entries that are active at `now`: created, not expired, and not revoked."""
    return and_(
        TrustedUserRecord.created_at <= now,
        TrustedUserRecord.expires_at > now,
        or_(TrustedUserRecord.revoked_at.is_(None), TrustedUserRecord.revoked_at > now),
    )


def covered_at(
    user_id: ColumnElement[str] | InstrumentedAttribute[str], at: ColumnElement[datetime] | InstrumentedAttribute[datetime]
) -> ColumnElement[bool]:
    """Select whether an entry of the user `user_id` was active at the time `at`, for use in a correlated query."""
    entry = select(TrustedUserRecord.id).where(
        TrustedUserRecord.user_id == user_id,
        TrustedUserRecord.created_at <= at,
        _entry_end() > at,
    )
    return entry.exists()


def _entry_end() -> ColumnElement[datetime]:
    """Build the time at which an entry stops being active: its revocation, or its expiry if that is earlier or it was not revoked."""
    return func.least(TrustedUserRecord.expires_at, func.coalesce(TrustedUserRecord.revoked_at, TrustedUserRecord.expires_at))


def _required_text(name: str, value: str, max_chars: int) -> str:
    text = value.strip()
    if not text:
        raise AllowlistError(f"the {name} is empty; give a non-blank {name}")
    if len(text) > max_chars:
        raise AllowlistError(f"the {name} has {len(text)} characters, over the maximum of {max_chars}; shorten it")
    if "\x00" in text:
        raise AllowlistError(f"the {name} contains a NUL character, which PostgreSQL text cannot store; remove it")
    return text


def _check_expiry(expires_at: datetime, now: datetime) -> None:
    _require_aware("expires_at", expires_at)
    _require_aware("now", now)
    if expires_at <= now:
        raise AllowlistError(
            f"the expiry {expires_at.isoformat()} is not after the current time {now.isoformat()}; "
            "give an expiry in the future"
        )
    if expires_at - now > MAX_TRUST_PERIOD:
        raise AllowlistError(
            f"the expiry {expires_at.isoformat()} is more than {MAX_TRUST_PERIOD.days} days after "
            f"{now.isoformat()}; give an earlier expiry and allow the user again when it ends"
        )


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None:
        raise AllowlistError(f"{name} {value.isoformat()} has no time zone; pass an aware datetime")
