"""Which users meet a flag rule's slip-through condition in a window, and the exchanges that count.

A rule counts an exchange when it was answered, is not an override, and at
least one of the rule's sentinels slipped through. By default a sentinel
slips through at its scoring threshold, which the exchange stored when it was
scored (`scores.slip_through`); a rule can set its own threshold per sentinel.
A rule with neither sentinels nor thresholds of its own reads the partial
index of slip-throughs and no scores at all.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session

from storage.activity import TimeWindow, flaggable_slip_through
from storage.errors import translate_errors
from storage.models import ExchangeRecord, ScoreRecord
from storage.sql import equals_any


@dataclass(frozen=True)
class SlipThroughCondition:
    """The sentinels a rule watches (empty: all) and its own thresholds for some of them."""

    sentinels: tuple[str, ...] = ()
    thresholds: Mapping[str, float] | None = None

    @property
    def uses_stored_flags(self) -> bool:
        return not self.sentinels and not self.thresholds


@dataclass(frozen=True)
class RuleMatch:
    """A user's exchanges that count under a rule in a window: how many, the highest probability, the latest ids."""

    user_id: str
    slip_throughs: int
    max_prob: float
    latest_ids: tuple[str, ...]


def match_users(
    session: Session,
    window: TimeWindow,
    condition: SlipThroughCondition,
    *,
    min_count: int,
    user_ids: Sequence[str] | None,
    evidence_limit: int,
) -> list[RuleMatch]:
    """Return the users (all, or only `user_ids`) with at least `min_count` counted exchanges, most first.

    `latest_ids` contains each user's latest `evidence_limit` counted exchanges, oldest first.
    """
    query = _counted_exchanges(window, condition)
    if user_ids is not None:
        query = query.where(equals_any(ExchangeRecord.user_id, user_ids))
    with translate_errors("find users who meet a flag rule", session):
        rows = session.execute(query).all()

    per_user: dict[str, list[tuple[datetime, str, float]]] = defaultdict(list)
    for user_id, exchange_id, created_at, prob in rows:
        per_user[user_id].append((created_at, exchange_id, float(prob or 0.0)))
    matches = [
        _match(user_id, exchanges, evidence_limit)
        for user_id, exchanges in per_user.items()
        if len(exchanges) >= min_count
    ]
    return sorted(matches, key=lambda match: (-match.slip_throughs, -match.max_prob, match.user_id))


def _counted_exchanges(window: TimeWindow, condition: SlipThroughCondition) -> Any:
    if condition.uses_stored_flags:
        return select(
            ExchangeRecord.user_id, ExchangeRecord.id, ExchangeRecord.created_at, ExchangeRecord.max_slip_prob
        ).where(flaggable_slip_through(window))
    return (
        select(ExchangeRecord.user_id, ExchangeRecord.id, ExchangeRecord.created_at, func.max(ScoreRecord.prob))
        .join(ScoreRecord, ScoreRecord.exchange_id == ExchangeRecord.id)
        .where(
            ExchangeRecord.outcome_kind == "answered",
            ~ExchangeRecord.override_trusted,
            ExchangeRecord.created_at > window.start,
            ExchangeRecord.created_at <= window.end,
            _sentinel_slipped(condition),
        )
        .group_by(ExchangeRecord.user_id, ExchangeRecord.id, ExchangeRecord.created_at)
    )


def _sentinel_slipped(condition: SlipThroughCondition) -> ColumnElement[bool]:
    thresholds = dict(condition.thresholds or {})
    watched = condition.sentinels or None
    terms = [
        and_(ScoreRecord.sentinel == sentinel, ScoreRecord.prob >= threshold)
        for sentinel, threshold in thresholds.items()
        if watched is None or sentinel in watched
    ]
    # Watched sentinels without a threshold of their own slip through at their scoring threshold.
    if watched is None:
        others = and_(ScoreRecord.slip_through) if not thresholds else and_(
            ScoreRecord.slip_through, ~equals_any(ScoreRecord.sentinel, list(thresholds))
        )
        terms.append(others)
    else:
        plain = [sentinel for sentinel in watched if sentinel not in thresholds]
        if plain:
            terms.append(and_(ScoreRecord.slip_through, equals_any(ScoreRecord.sentinel, plain)))
    return or_(*terms) if terms else false()


def _match(user_id: str, exchanges: list[tuple[datetime, str, float]], evidence_limit: int) -> RuleMatch:
    exchanges.sort()
    return RuleMatch(
        user_id=user_id,
        slip_throughs=len(exchanges),
        max_prob=max(prob for _, _, prob in exchanges),
        latest_ids=tuple(exchange_id for _, exchange_id, _ in exchanges[-evidence_limit:]),
    )
