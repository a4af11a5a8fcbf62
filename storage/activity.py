"""Read-only queries over users' exchanges within a time window.

A window is half-open at the start, so it contains the exchanges with
`start < created_at <= end`. Slip-throughs of override exchanges never count
as slip-throughs here, because overrides are excluded from user flags and
rankings. They are counted apart as `overrides`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, func, select
from sqlalchemy.orm import Session

from storage.errors import translate_errors
from storage.models import ExchangeRecord, ScoreRecord
from storage.sql import equals_any


@dataclass(frozen=True)
class TimeWindow:
    """The interval `start < created_at <= end`."""

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, end: datetime, length: timedelta) -> TimeWindow:
        if end.tzinfo is None:
            raise ValueError(f"window end {end.isoformat()} has no time zone. Pass an aware datetime.")
        if length <= timedelta(0):
            raise ValueError(f"window length {length} is invalid: it must be positive")
        return cls(start=end - length, end=end)


@dataclass(frozen=True)
class SlipThroughTotals:
    """A user's slip-throughs in a window: how many, and the highest sentinel probability among them."""

    user_id: str
    slip_throughs: int
    max_prob: float


@dataclass(frozen=True)
class ExchangeCounts:
    """A user's exchanges in a window, with the slip-throughs and overrides among them."""

    exchanges: int
    slip_throughs: int
    overrides: int
    injection_attempts: int = 0


@dataclass(frozen=True)
class ScoredExchangeSummary:
    """A stored exchange without its text: outcome and per-sentinel probabilities."""

    id: str
    user_id: str
    model: str
    created_at: datetime
    outcome_kind: str
    outcome_decided_by: str
    outcome_sentinel: str | None
    override: bool
    slip_through: bool
    probabilities: dict[str, float]
    slip_through_sentinels: tuple[str, ...]


_SUMMARY_COLUMNS = (
    ExchangeRecord.id,
    ExchangeRecord.user_id,
    ExchangeRecord.model,
    ExchangeRecord.created_at,
    ExchangeRecord.outcome_kind,
    ExchangeRecord.outcome_decided_by,
    ExchangeRecord.outcome_sentinel,
    ExchangeRecord.override_trusted,
    ExchangeRecord.slip_through,
)


def flaggable_slip_through(window: TimeWindow) -> ColumnElement[bool]:
    """Select slip-throughs of non-override exchanges in the window.

    The first two terms repeat the predicate of the partial index
    `ix_exchanges_flaggable_slip_throughs`, so PostgreSQL can use it.
    """
    return and_(
        ExchangeRecord.slip_through,
        ~ExchangeRecord.override_trusted,
        ExchangeRecord.created_at > window.start,
        ExchangeRecord.created_at <= window.end,
    )


def total_slip_throughs(
    session: Session, window: TimeWindow, *, min_count: int = 1, limit: int | None = None
) -> list[SlipThroughTotals]:
    """Return users with at least `min_count` slip-throughs, most slip-throughs and highest probability first."""
    count = func.count().label("slip_throughs")
    max_prob = func.max(ExchangeRecord.max_slip_prob).label("max_prob")
    query = (
        select(ExchangeRecord.user_id, count, max_prob)
        .where(flaggable_slip_through(window))
        .group_by(ExchangeRecord.user_id)
        .having(func.count() >= min_count)
        .order_by(count.desc(), max_prob.desc().nulls_last(), ExchangeRecord.user_id)
        .limit(limit)
    )
    with translate_errors("rank users by slip-throughs", session):
        rows = session.execute(query).all()
    return [SlipThroughTotals(user_id=row[0], slip_throughs=row[1], max_prob=row[2] or 0.0) for row in rows]


def count_user_exchanges(session: Session, user_ids: Sequence[str], window: TimeWindow) -> dict[str, ExchangeCounts]:
    """Count each user's exchanges, slip-throughs and overrides in the window."""
    flaggable = and_(ExchangeRecord.slip_through, ~ExchangeRecord.override_trusted)
    query = (
        select(
            ExchangeRecord.user_id,
            func.count(),
            func.count().filter(flaggable),
            func.count().filter(ExchangeRecord.override_trusted),
            func.coalesce(func.sum(ExchangeRecord.injection_attempts), 0),
        )
        .where(
            equals_any(ExchangeRecord.user_id, user_ids),
            ExchangeRecord.created_at > window.start,
            ExchangeRecord.created_at <= window.end,
        )
        .group_by(ExchangeRecord.user_id)
    )
    with translate_errors("count exchanges per user", session):
        rows = session.execute(query).all()
    return {
        row[0]: ExchangeCounts(exchanges=row[1], slip_throughs=row[2], overrides=row[3], injection_attempts=int(row[4]))
        for row in rows
    }


def max_slip_through_probs(
    session: Session, user_ids: Sequence[str], window: TimeWindow
) -> dict[str, dict[str, float]]:
    """Return, per user and sentinel, the highest probability among that sentinel's slip-throughs."""
    query = (
        select(ExchangeRecord.user_id, ScoreRecord.sentinel, func.max(ScoreRecord.prob))
        .join(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(flaggable_slip_through(window), equals_any(ExchangeRecord.user_id, user_ids), ScoreRecord.slip_through)
        .group_by(ExchangeRecord.user_id, ScoreRecord.sentinel)
    )
    with translate_errors("find the highest slip-through probabilities per user", session):
        rows = session.execute(query).all()
    maxima: dict[str, dict[str, float]] = defaultdict(dict)
    for user_id, sentinel, prob in rows:
        maxima[user_id][sentinel] = prob
    return dict(maxima)


def recent_slip_through_ids(
    session: Session, user_ids: Sequence[str], window: TimeWindow, *, per_user: int
) -> dict[str, list[str]]:
    """Return the ids of each user's latest `per_user` slip-throughs in the window, oldest first."""
    rank = (
        func.row_number()
        .over(
            partition_by=ExchangeRecord.user_id,
            order_by=(ExchangeRecord.created_at.desc(), ExchangeRecord.id.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(ExchangeRecord.user_id, ExchangeRecord.id, ExchangeRecord.created_at, rank)
        .where(flaggable_slip_through(window), equals_any(ExchangeRecord.user_id, user_ids))
        .subquery()
    )
    query = (
        select(ranked.c.user_id, ranked.c.id)
        .where(ranked.c.rank <= per_user)
        .order_by(ranked.c.user_id, ranked.c.created_at, ranked.c.id)
    )
    with translate_errors("list recent slip-throughs", session):
        rows = session.execute(query).all()
    ids: dict[str, list[str]] = defaultdict(list)
    for user_id, exchange_id in rows:
        ids[user_id].append(exchange_id)
    return dict(ids)


def summarize_exchanges(session: Session, exchange_ids: Sequence[str]) -> list[ScoredExchangeSummary]:
    """Load the given exchanges with their scores, oldest first, leaving out ids that are not stored.

    Only the summary columns are read, never the stored conversation or reply.
    """
    query = (
        select(
            *_SUMMARY_COLUMNS,
            ScoreRecord.sentinel,
            ScoreRecord.prob,
            ScoreRecord.slip_through.label("sentinel_slipped"),
        )
        .outerjoin(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(equals_any(ExchangeRecord.id, exchange_ids))
        .order_by(ExchangeRecord.created_at, ExchangeRecord.id, ScoreRecord.sentinel)
    )
    with translate_errors("load exchange summaries", session):
        rows = session.execute(query).all()

    rows_by_id: dict[str, list[Row[*tuple[Any, ...]]]] = defaultdict(list)
    for row in rows:
        rows_by_id[row.id].append(row)
    return [_summary(exchange_rows) for exchange_rows in rows_by_id.values()]


def list_user_exchange_ids(session: Session, user_id: str, *, limit: int = 1) -> list[str]:
    """Return the ids of a user's latest exchanges, newest first."""
    query = (
        select(ExchangeRecord.id)
        .where(ExchangeRecord.user_id == user_id)
        .order_by(ExchangeRecord.created_at.desc(), ExchangeRecord.id.desc())
        .limit(limit)
    )
    with translate_errors("list a user's exchanges", session):
        return list(session.scalars(query))


def _summary(rows: list[Row[*tuple[Any, ...]]]) -> ScoredExchangeSummary:
    first = rows[0]
    scored = [row for row in rows if row.sentinel is not None]
    return ScoredExchangeSummary(
        id=first.id,
        user_id=first.user_id,
        model=first.model,
        created_at=first.created_at,
        outcome_kind=first.outcome_kind,
        outcome_decided_by=first.outcome_decided_by,
        outcome_sentinel=first.outcome_sentinel,
        override=first.override_trusted,
        slip_through=first.slip_through,
        probabilities={row.sentinel: row.prob for row in scored},
        slip_through_sentinels=tuple(row.sentinel for row in scored if row.sentinel_slipped),
    )
