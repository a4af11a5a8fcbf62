"""Read-only queries behind the HTTP API: a user's latest exchanges, one exchange in full, and counts for metrics."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import translate_errors
from storage.models import ExchangeRecord, FlagRecord, JobRunRecord, ScoreRecord
from storage.sql import equals_any


@dataclass(frozen=True)
class HistoryExchange:
    """One of a user's exchanges without its text: outcome, override, injection attempts and scores."""

    id: str
    created_at: datetime
    model: str
    outcome_kind: str
    outcome_decided_by: str
    outcome_sentinel: str | None
    override: bool
    slip_through: bool
    max_slip_prob: float | None
    injection_attempts: int
    probabilities: dict[str, float]
    slip_through_sentinels: tuple[str, ...]


@dataclass(frozen=True)
class ExchangeDetail:
    """A stored exchange with its score rows, sentinel name first."""

    exchange: ExchangeRecord
    scores: tuple[ScoreRecord, ...]


def user_history(session: Session, user_id: str, *, limit: int) -> list[HistoryExchange]:
    """Return the user's latest `limit` exchanges with their scores, newest first; never reads the text columns."""
    latest = (
        select(
            ExchangeRecord.id,
            ExchangeRecord.created_at,
            ExchangeRecord.model,
            ExchangeRecord.outcome_kind,
            ExchangeRecord.outcome_decided_by,
            ExchangeRecord.outcome_sentinel,
            ExchangeRecord.override_trusted,
            ExchangeRecord.slip_through,
            ExchangeRecord.max_slip_prob,
            ExchangeRecord.injection_attempts,
        )
        .where(ExchangeRecord.user_id == user_id)
        .order_by(ExchangeRecord.created_at.desc(), ExchangeRecord.id.desc())
        .limit(limit)
    )
    with translate_errors("list a user's latest exchanges", session):
        rows = session.execute(latest).all()
        scores = _scores_of(session, [row.id for row in rows])
    return [
        HistoryExchange(
            id=row.id,
            created_at=row.created_at,
            model=row.model,
            outcome_kind=row.outcome_kind,
            outcome_decided_by=row.outcome_decided_by,
            outcome_sentinel=row.outcome_sentinel,
            override=row.override_trusted,
            slip_through=row.slip_through,
            max_slip_prob=row.max_slip_prob,
            injection_attempts=row.injection_attempts,
            probabilities={score.sentinel: score.prob for score in scores.get(row.id, [])},
            slip_through_sentinels=tuple(score.sentinel for score in scores.get(row.id, []) if score.slip_through),
        )
        for row in rows
    ]


def load_exchange(session: Session, exchange_id: str) -> ExchangeDetail | None:
    """Return the exchange with its scores, or None when no exchange has that id."""
    with translate_errors(f"load exchange {exchange_id}", session):
        exchange = session.get(ExchangeRecord, exchange_id)
        if exchange is None:
            return None
        scores = _scores_of(session, [exchange_id]).get(exchange_id, [])
    return ExchangeDetail(exchange=exchange, scores=tuple(scores))


def count_flags_by_status(session: Session) -> dict[str, int]:
    """Return how many flags have each status; statuses without flags are left out."""
    query = select(FlagRecord.status, func.count()).group_by(FlagRecord.status)
    with translate_errors("count flags by status", session):
        return {status: count for status, count in session.execute(query).all()}


def count_job_runs_by_status(session: Session) -> dict[tuple[str, str], int]:
    """Return how many job runs are recorded per (job, status)."""
    query = select(JobRunRecord.job, JobRunRecord.status, func.count()).group_by(JobRunRecord.job, JobRunRecord.status)
    with translate_errors("count job runs by status", session):
        return {(job, status): count for job, status, count in session.execute(query).all()}


def load_flag(session: Session, flag_id: int) -> FlagRecord | None:
    """Return the flag with that id, or None."""
    with translate_errors(f"load flag {flag_id}", session):
        return session.get(FlagRecord, flag_id)


def _scores_of(session: Session, exchange_ids: list[str]) -> dict[str, list[ScoreRecord]]:
    if not exchange_ids:
        return {}
    query = (
        select(ScoreRecord)
        .where(equals_any(ScoreRecord.exchange_id, exchange_ids))
        .order_by(ScoreRecord.exchange_id, ScoreRecord.sentinel)
    )
    grouped: dict[str, list[ScoreRecord]] = defaultdict(list)
    for score in session.scalars(query):
        grouped[score.exchange_id].append(score)
    return dict(grouped)
