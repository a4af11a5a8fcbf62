"""Read recent requests for the consistency report: the last user turn of each exchange, with its probabilities.

Only the text of the last user turn leaves the database, extracted by
PostgreSQL from the stored conversation, never the rest of the conversation
or the reply.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, cast, func, literal, select
from sqlalchemy.dialects.postgresql import JSONB, JSONPATH
from sqlalchemy.orm import Session

from monitor.consistency import ScoredRequest
from storage.activity import TimeWindow
from storage.errors import translate_errors
from storage.models import ExchangeRecord, ScoreRecord
from storage.sql import equals_any

# The contents of the user turns of a conversation, in order.
_USER_CONTENTS = '$[*] ? (@.role == "user").content'


@dataclass(frozen=True)
class RecentRequests:
    """The newest exchanges of a window, as requests to group, and those that could not be used.

    `exchanges_read` counts every exchange read, at most the limit.
    `without_text` counts those stored without a conversation (with
    database.store_raw_text off) or without a user turn, and `unscored` those
    that have a text but no score. `truncated` is true when the window contains
    more exchanges than the limit, so the oldest of them were not read.
    """

    requests: tuple[ScoredRequest, ...]
    exchanges_read: int
    without_text: int
    unscored: int
    truncated: bool


def load_recent_requests(
    session: Session, window: TimeWindow, *, limit: int, model: str | None = None
) -> RecentRequests:
    """Load the newest `limit` exchanges created in the window, optionally of one served model, oldest first.

    The requests are returned oldest first, each with the text of its last
    user turn and its probability per sentinel.
    """
    if limit <= 0:
        raise ValueError(f"limit {limit} is invalid: it must be positive")
    with translate_errors("load recent requests for the consistency report", session):
        rows = session.execute(_newest_exchanges(window, limit=limit, model=model)).all()
        truncated = len(rows) > limit
        rows = rows[:limit]
        with_text = [(row.id, row.text) for row in rows if row.text is not None]
        probabilities = _probabilities(session, [exchange_id for exchange_id, _ in with_text])

    requests = [
        ScoredRequest(id=exchange_id, text=text, probabilities=probabilities[exchange_id])
        for exchange_id, text in reversed(with_text)
        if exchange_id in probabilities
    ]
    return RecentRequests(
        requests=tuple(requests),
        exchanges_read=len(rows),
        without_text=len(rows) - len(with_text),
        unscored=len(with_text) - len(requests),
        truncated=truncated,
    )


def _newest_exchanges(window: TimeWindow, *, limit: int, model: str | None) -> Select[tuple[str, str | None]]:
    # ix_exchanges_created_at lets PostgreSQL read the index backwards and stop
    # after `limit + 1` rows.
    user_contents = func.jsonb_path_query_array(
        ExchangeRecord.messages, cast(literal(_USER_CONTENTS), JSONPATH), type_=JSONB
    )
    last_user_turn = user_contents[-1].astext.label("text")
    query = (
        select(ExchangeRecord.id, last_user_turn)
        .where(ExchangeRecord.created_at > window.start, ExchangeRecord.created_at <= window.end)
        .order_by(ExchangeRecord.created_at.desc(), ExchangeRecord.id.desc())
        # The row after the limit shows whether the window contains more.
        .limit(limit + 1)
    )
    if model is not None:
        query = query.where(ExchangeRecord.model == model)
    return query


def _probabilities(session: Session, exchange_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """Return each exchange's probability per sentinel, leaving out exchanges without a score."""
    if not exchange_ids:
        return {}
    query = select(ScoreRecord.exchange_id, ScoreRecord.sentinel, ScoreRecord.prob).where(
        equals_any(ScoreRecord.exchange_id, exchange_ids)
    )
    probabilities: dict[str, dict[str, float]] = defaultdict(dict)
    for exchange_id, sentinel, prob in session.execute(query):
        probabilities[exchange_id][sentinel] = prob
    return dict(probabilities)
