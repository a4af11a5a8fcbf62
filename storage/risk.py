"""Sums of sentinel probabilities over answered exchanges, per user and for the whole population.

Only answered exchanges that are not overrides count: a refused request was
not bypassed, and an override was bypassed on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.orm import Session

from monitor.risk import ProbabilitySums
from storage.activity import TimeWindow
from storage.errors import translate_errors
from storage.models import ExchangeRecord, ScoreRecord
from storage.sql import equals_any


@dataclass(frozen=True)
class UserSentinelSums:
    """One user's sums for one sentinel, with the slip-throughs and the highest probability among them."""

    sums: ProbabilitySums
    slip_throughs: int
    max_prob: float


def _answered_in(window: TimeWindow) -> ColumnElement[bool]:
    return and_(
        ExchangeRecord.outcome_kind == "answered",
        ~ExchangeRecord.override_trusted,
        ExchangeRecord.created_at > window.start,
        ExchangeRecord.created_at <= window.end,
    )


def population_sums(session: Session, window: TimeWindow) -> dict[str, ProbabilitySums]:
    """Sum each sentinel's probability over every user's answered, non-override exchanges in the window."""
    query = (
        select(ScoreRecord.sentinel, func.count(), func.sum(ScoreRecord.prob), func.sum(ScoreRecord.prob * ScoreRecord.prob))
        .join(ExchangeRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(_answered_in(window))
        .group_by(ScoreRecord.sentinel)
    )
    with translate_errors("sum sentinel probabilities over all users", session):
        rows = session.execute(query).all()
    return {sentinel: ProbabilitySums(count, float(total), float(squares)) for sentinel, count, total, squares in rows}


def user_sums(session: Session, user_ids: Sequence[str], window: TimeWindow) -> dict[str, dict[str, UserSentinelSums]]:
    """Sum each sentinel's probability over each user's answered, non-override exchanges in the window."""
    query = (
        select(
            ExchangeRecord.user_id,
            ScoreRecord.sentinel,
            func.count(),
            func.sum(ScoreRecord.prob),
            func.sum(ScoreRecord.prob * ScoreRecord.prob),
            func.count().filter(ScoreRecord.slip_through),
            func.max(ScoreRecord.prob),
        )
        .join(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(equals_any(ExchangeRecord.user_id, user_ids), _answered_in(window))
        .group_by(ExchangeRecord.user_id, ScoreRecord.sentinel)
    )
    with translate_errors("sum sentinel probabilities per user", session):
        rows = session.execute(query).all()
    result: dict[str, dict[str, UserSentinelSums]] = {}
    for user_id, sentinel, count, total, squares, slips, max_prob in rows:
        sums = ProbabilitySums(count, float(total), float(squares))
        result.setdefault(user_id, {})[sentinel] = UserSentinelSums(sums, slips, float(max_prob))
    return result


def top_contributions(
    session: Session, user_id: str, window: TimeWindow, *, limit: int
) -> list[tuple[str, str, float]]:
    """Return (exchange id, sentinel, probability) of the user's largest contributions to the sums, largest first."""
    query = (
        select(ExchangeRecord.id, ScoreRecord.sentinel, ScoreRecord.prob)
        .join(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(ExchangeRecord.user_id == user_id, _answered_in(window))
        .order_by(ScoreRecord.prob.desc(), ExchangeRecord.id)
        .limit(limit)
    )
    with translate_errors("list a user's largest sentinel probabilities", session):
        return [(row[0], row[1], float(row[2])) for row in session.execute(query).all()]
