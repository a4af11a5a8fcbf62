"""Sums of sentinel probabilities over answered exchanges, per user and for the whole population.

Only answered exchanges that are not overrides count: a refused request was
not bypassed, and an override was bypassed on purpose.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from monitor.risk import ProbabilitySums
from storage.activity import ExchangeCounts, TimeWindow
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
    return _answered_between(window.start, window.end)


def _answered_between(
    start: datetime | ColumnElement[datetime], end: datetime | ColumnElement[datetime]
) -> ColumnElement[bool]:
    return and_(
        ExchangeRecord.outcome_kind == "answered",
        ~ExchangeRecord.override_trusted,
        ExchangeRecord.created_at > start,
        ExchangeRecord.created_at <= end,
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


def user_sums_by_window(
    session: Session, user_id: str, windows: Sequence[TimeWindow]
) -> list[dict[str, UserSentinelSums]]:
    """Sum each sentinel's probability over one user's answered, non-override exchanges in each window, in one query.

    The query reads the user's exchanges from the earliest window start to the
    latest end through the index on (user_id, created_at), and one FILTER per
    window sorts each row into the windows that contain it. The result lists
    the windows in the order given.
    """
    if not windows:
        return []
    parameters: dict[str, Any] = {
        "user_id": user_id,
        "span_start": min(window.start for window in windows),
        "span_end": max(window.end for window in windows),
    }
    for index, window in enumerate(windows):
        parameters |= {f"start_{index}": window.start, f"end_{index}": window.end}
    with translate_errors("sum one user's sentinel probabilities per window", session):
        rows = session.execute(_user_windows_query(len(windows)), parameters).all()

    result: list[dict[str, UserSentinelSums]] = [{} for _ in windows]
    for row in rows:
        for index in range(len(windows)):
            values: Sequence[Any] = row[1 + 5 * index : 6 + 5 * index]
            if values[0]:
                sums = ProbabilitySums(int(values[0]), float(values[1]), float(values[2]))
                result[index][row[0]] = UserSentinelSums(sums, int(values[3]), float(values[4]))
    return result


@functools.lru_cache(maxsize=16)
def _user_windows_query(windows: int) -> Select[Any]:
    """Build the query of `user_sums_by_window` for `windows` windows once; the values are bound parameters."""
    columns: list[ColumnElement[Any]] = []
    for index in range(windows):
        inside = and_(
            ExchangeRecord.created_at > _time_parameter(f"start_{index}"),
            ExchangeRecord.created_at <= _time_parameter(f"end_{index}"),
        )
        columns += [
            func.count().filter(inside),
            func.sum(ScoreRecord.prob).filter(inside),
            func.sum(ScoreRecord.prob * ScoreRecord.prob).filter(inside),
            func.count().filter(inside, ScoreRecord.slip_through),
            func.max(ScoreRecord.prob).filter(inside),
        ]
    return (
        select(ScoreRecord.sentinel, *columns)
        .join(ExchangeRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(
            ExchangeRecord.user_id == bindparam("user_id", type_=Text),
            _answered_between(_time_parameter("span_start"), _time_parameter("span_end")),
        )
        .group_by(ScoreRecord.sentinel)
    )


def _time_parameter(name: str) -> BindParameter[datetime]:
    return bindparam(name, type_=DateTime(timezone=True))


def count_user_exchanges_by_window(session: Session, user_id: str, windows: Sequence[TimeWindow]) -> list[ExchangeCounts]:
    """Count one user's exchanges, slip-throughs, overrides and injection attempts in each window, in one query.

    The counts match `storage.activity.count_user_exchanges` for each window.
    """
    if not windows:
        return []
    parameters: dict[str, Any] = {"user_id": user_id}
    for index, window in enumerate(windows):
        parameters |= {f"start_{index}": window.start, f"end_{index}": window.end}
    parameters |= {"span_start": min(w.start for w in windows), "span_end": max(w.end for w in windows)}
    with translate_errors("count one user's exchanges per window", session):
        row = session.execute(_user_counts_query(len(windows)), parameters).one()
    return [
        ExchangeCounts(
            exchanges=int(row[4 * index]),
            slip_throughs=int(row[4 * index + 1]),
            overrides=int(row[4 * index + 2]),
            injection_attempts=int(row[4 * index + 3]),
        )
        for index in range(len(windows))
    ]


@functools.lru_cache(maxsize=16)
def _user_counts_query(windows: int) -> Select[Any]:
    flaggable = and_(ExchangeRecord.slip_through, ~ExchangeRecord.override_trusted)
    columns: list[ColumnElement[Any]] = []
    for index in range(windows):
        inside = and_(
            ExchangeRecord.created_at > _time_parameter(f"start_{index}"),
            ExchangeRecord.created_at <= _time_parameter(f"end_{index}"),
        )
        columns += [
            func.count().filter(inside),
            func.count().filter(inside, flaggable),
            func.count().filter(inside, ExchangeRecord.override_trusted),
            func.coalesce(func.sum(ExchangeRecord.injection_attempts).filter(inside), 0),
        ]
    return select(*columns).where(
        ExchangeRecord.user_id == bindparam("user_id", type_=Text),
        ExchangeRecord.created_at > _time_parameter("span_start"),
        ExchangeRecord.created_at <= _time_parameter("span_end"),
    )


def top_contributions_by_window(
    session: Session, user_id: str, windows: Sequence[TimeWindow], *, limit: int
) -> list[list[tuple[str, str, float]]]:
    """Return `top_contributions` for each window, in one query (a UNION ALL of one limited SELECT per window)."""
    if not windows:
        return []
    parameters: dict[str, Any] = {"user_id": user_id, "limit": limit}
    for index, window in enumerate(windows):
        parameters |= {f"start_{index}": window.start, f"end_{index}": window.end}
    with translate_errors("list a user's largest sentinel probabilities per window", session):
        rows = session.execute(_top_contributions_query(len(windows)), parameters).all()
    result: list[list[tuple[str, str, float]]] = [[] for _ in windows]
    for index, exchange_id, sentinel, prob in rows:
        result[index].append((exchange_id, sentinel, float(prob)))
    return result


@functools.lru_cache(maxsize=16)
def _top_contributions_query(windows: int) -> Select[Any]:
    parts = [
        select(literal(index).label("window_index"), ExchangeRecord.id, ScoreRecord.sentinel, ScoreRecord.prob)
        .join(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(
            ExchangeRecord.user_id == bindparam("user_id", type_=Text),
            _answered_between(_time_parameter(f"start_{index}"), _time_parameter(f"end_{index}")),
        )
        .order_by(ScoreRecord.prob.desc(), ExchangeRecord.id, ScoreRecord.sentinel)
        .limit(bindparam("limit", type_=Integer))
        .subquery()
        for index in range(windows)
    ]
    union = union_all(*(select(part) for part in parts)).subquery()
    # The outer ORDER BY restores each part's order, which a UNION ALL does not keep.
    return select(union).order_by(union.c.window_index, union.c.prob.desc(), union.c.id, union.c.sentinel)


def top_contributions(
    session: Session, user_id: str, window: TimeWindow, *, limit: int
) -> list[tuple[str, str, float]]:
    """Return (exchange id, sentinel, probability) of the user's largest contributions to the sums, largest first."""
    query = (
        select(ExchangeRecord.id, ScoreRecord.sentinel, ScoreRecord.prob)
        .join(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(ExchangeRecord.user_id == user_id, _answered_in(window))
        .order_by(ScoreRecord.prob.desc(), ExchangeRecord.id, ScoreRecord.sentinel)
        .limit(limit)
    )
    with translate_errors("list a user's largest sentinel probabilities", session):
        return [(row[0], row[1], float(row[2])) for row in session.execute(query).all()]
