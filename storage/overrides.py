"""Read-only queries for the override audit: override exchanges, and the slip-throughs left out of user flags.

A period is half-open at the start like a `TimeWindow`, `since < created_at
<= until`, and has no lower bound when `since` is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from storage.activity import ScoredExchangeSummary, summarize_exchanges
from storage.errors import translate_errors
from storage.models import ExchangeRecord, TrustedUserRecord
from storage.trusted_users import active_at, covered_at


@dataclass(frozen=True)
class OverrideExchange:
    """An override exchange without its text: the reason given in the message, and its scores."""

    summary: ScoredExchangeSummary
    override_reason: str | None


@dataclass(frozen=True)
class ExcludedSlipThroughs:
    """One user's exchanges in a period that count towards no flag.

    `override_slip_throughs` are slip-throughs among the user's override
    exchanges. `allowlisted_slip_throughs` are slip-throughs of the user's
    other exchanges that were created while an allowlist entry of the user
    was active. When the user has an active entry at the audit's `now`, they
    are all of the user's other slip-throughs in the period, because the flag
    job leaves out every user who is trusted when it runs.
    """

    user_id: str
    override_exchanges: int
    override_slip_throughs: int
    allowlisted_slip_throughs: int


def count_override_exchanges(session: Session, *, since: datetime | None, until: datetime, user_id: str | None) -> int:
    """Count the override exchanges created in the period, of one user or of all."""
    query = select(func.count()).where(ExchangeRecord.override_trusted, *_in_period(since, until, user_id))
    with translate_errors("count override exchanges", session):
        return int(session.execute(query).scalar_one())


def list_override_exchanges(
    session: Session, *, since: datetime | None, until: datetime, user_id: str | None, limit: int
) -> list[OverrideExchange]:
    """Return the newest `limit` override exchanges created in the period, newest first, with their scores."""
    # The partial index ix_exchanges_overrides serves this query, newest first.
    query = (
        select(ExchangeRecord.id, ExchangeRecord.override_reason)
        .where(ExchangeRecord.override_trusted, *_in_period(since, until, user_id))
        .order_by(ExchangeRecord.created_at.desc(), ExchangeRecord.id.desc())
        .limit(limit)
    )
    with translate_errors("list override exchanges", session):
        reasons = {row.id: row.override_reason for row in session.execute(query)}
    summaries = summarize_exchanges(session, list(reasons))
    newest_first = sorted(summaries, key=lambda summary: (summary.created_at, summary.id), reverse=True)
    return [OverrideExchange(summary=summary, override_reason=reasons[summary.id]) for summary in newest_first]


def count_excluded_slip_throughs(
    session: Session, *, since: datetime | None, until: datetime, user_id: str | None, limit: int, now: datetime
) -> list[ExcludedSlipThroughs]:
    """Count, per user, the override exchanges and the slip-throughs that no flag counts, most excluded first.

    A slip-through is allowlisted when the user was trusted at its creation
    or is trusted at `now`. Users without an override exchange or an
    allowlisted slip-through in the period are left out, and at most `limit`
    users are returned.
    """
    trusted_now = ExchangeRecord.user_id.in_(select(TrustedUserRecord.user_id).where(active_at(now)))
    allowlisted = and_(
        ~ExchangeRecord.override_trusted,
        ExchangeRecord.slip_through,
        or_(covered_at(ExchangeRecord.user_id, ExchangeRecord.created_at), trusted_now),
    )
    overrides = func.count().filter(ExchangeRecord.override_trusted)
    override_slips = func.count().filter(ExchangeRecord.override_trusted, ExchangeRecord.slip_through)
    allowlisted_slips = func.count().filter(allowlisted)
    ever_trusted = ExchangeRecord.user_id.in_(select(TrustedUserRecord.user_id))
    query = (
        select(ExchangeRecord.user_id, overrides, override_slips, allowlisted_slips)
        .where(
            *_in_period(since, until, user_id),
            or_(ExchangeRecord.override_trusted, and_(ExchangeRecord.slip_through, ever_trusted)),
        )
        .group_by(ExchangeRecord.user_id)
        .having(or_(overrides > 0, allowlisted_slips > 0))
        .order_by((override_slips + allowlisted_slips).desc(), overrides.desc(), ExchangeRecord.user_id)
        .limit(limit)
    )
    with translate_errors("count the slip-throughs excluded from flags", session):
        rows = session.execute(query).all()
    return [
        ExcludedSlipThroughs(
            user_id=row[0], override_exchanges=row[1], override_slip_throughs=row[2], allowlisted_slip_throughs=row[3]
        )
        for row in rows
    ]


def _in_period(since: datetime | None, until: datetime, user_id: str | None) -> list[ColumnElement[bool]]:
    conditions = [ExchangeRecord.created_at <= until]
    if since is not None:
        conditions.append(ExchangeRecord.created_at > since)
    if user_id is not None:
        conditions.append(ExchangeRecord.user_id == user_id)
    return conditions
