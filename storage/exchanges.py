"""Exchange repository: idempotent batch inserts of scored exchanges, and counts."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Table, exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from monitor.policy import ScoredExchange
from monitor.sentinels import Sentinel
from storage.errors import translate_errors
from storage.models import Base, ExchangeRecord, ScoreRecord

logger = logging.getLogger(__name__)

EXCHANGES: Table = Base.metadata.tables["exchanges"]
SCORES: Table = Base.metadata.tables["scores"]

# PostgreSQL rejects NUL in text and jsonb strings, and UTF-8 cannot encode lone
# surrogates, so both are replaced before a row is built. One such character
# in a user's message must not make the whole batch fail.
_NUL = "\x00"
_REPLACEMENT = "\ufffd"


class ExchangeRepository:
    """Repository of scored exchanges. The caller owns the session and its transaction.

    `sentinels` supplies the threshold recorded with each score, and
    `store_raw_text` decides whether the conversation and the reply are stored.
    """

    def __init__(self, *, sentinels: Sequence[Sentinel], store_raw_text: bool) -> None:
        self._thresholds = {sentinel.name: sentinel.threshold for sentinel in sentinels}
        self._store_raw_text = store_raw_text

    def save_batch(self, session: Session, scored: Sequence[ScoredExchange]) -> int:
        """Insert the exchanges not stored yet with their scores, and return how many were new.

        Idempotent on the exchange id: an exchange already stored, or repeated
        within the batch, keeps its first stored row and its scores are not
        inserted again. This is one INSERT for exchanges and one for scores
        while each fits SQLAlchemy's limit of 32,700 parameters per statement
        (about 1,500 exchanges or 3,600 score rows). Larger batches are split
        into several INSERTs within the same transaction.
        """
        unique = _first_of_each_id(scored)
        if not unique:
            return 0

        exchange_rows = [self._exchange_row(item) for item in unique]
        with translate_errors(f"insert a batch of {len(exchange_rows)} exchanges", session):
            inserted_ids = set(session.scalars(_insert_exchanges(), exchange_rows))

            new = [item for item in unique if clean_text(item.exchange.id) in inserted_ids]
            score_rows = [row for item in new for row in self._score_rows(item)]
            if score_rows:
                session.execute(_insert_scores(), score_rows).all()

        logger.debug(
            "stored batch: %d exchanges, %d new, %d already stored, %d score rows",
            len(scored), len(inserted_ids), len(unique) - len(inserted_ids), len(score_rows),
        )
        return len(inserted_ids)

    def _exchange_row(self, item: ScoredExchange) -> dict[str, Any]:
        exchange = item.exchange
        messages = [message.as_dict() for message in exchange.messages] if self._store_raw_text else None
        reply = exchange.reply if self._store_raw_text else None
        override = exchange.override
        position = item.position
        row: dict[str, Any] = {
            "id": exchange.id,
            "user_id": exchange.user_id,
            "model": exchange.model,
            "created_at": exchange.created_at,
            "messages": messages,
            "reply": reply,
            "override_trusted": exchange.is_override,
            "override_reason": override.reason if override is not None else None,
            "metadata": dict(exchange.metadata),
            "source_format": exchange.source_format,
            "outcome_kind": item.outcome.kind,
            "outcome_decided_by": item.outcome.decided_by,
            "outcome_sentinel": item.outcome.sentinel,
            "outcome_detail": item.outcome.detail,
            "prompt_tokens": item.score.prompt_tokens,
            "truncated": item.score.truncated,
            "kafka_topic": position.topic if position is not None else None,
            "kafka_partition": position.partition if position is not None else None,
            "kafka_offset": position.offset if position is not None else None,
            "slip_through": bool(item.slip_throughs),
            "max_slip_prob": _max_slip_prob(item),
            "injection_attempts": len(item.injection_findings),
            "injection_findings": [finding.as_json() for finding in item.injection_findings] or None,
        }
        return {key: clean_value(value) for key, value in row.items()}

    def _score_rows(self, item: ScoredExchange) -> Iterable[dict[str, Any]]:
        identity = item.score.identity
        for name, score in item.score.sentinels.items():
            yield {
                "exchange_id": clean_text(item.exchange.id),
                "sentinel": clean_text(name),
                "logprob": score.logprob,
                "prob": score.prob,
                "threshold": self._thresholds.get(name),
                "slip_through": name in item.slip_throughs,
                "model_id": clean_text(identity.model_id),
                "template_sha256": identity.template_sha256,
                "tokenizer_sha256": identity.tokenizer_sha256,
            }


def count_exchanges(session: Session) -> int:
    """Return the number of stored exchanges."""
    with translate_errors("count exchanges", session):
        return session.scalar(select(func.count()).select_from(ExchangeRecord)) or 0


def count_scores(session: Session) -> int:
    """Return the number of stored score rows (one per exchange and sentinel)."""
    with translate_errors("count scores", session):
        return session.scalar(select(func.count()).select_from(ScoreRecord)) or 0


def count_unscored(session: Session) -> int:
    """Return the number of stored exchanges that have no score row."""
    has_score = exists().where(ScoreRecord.exchange_id == ExchangeRecord.id)
    with translate_errors("count unscored exchanges", session):
        return session.scalar(select(func.count()).select_from(ExchangeRecord).where(~has_score)) or 0


def clean_text(value: str) -> str:
    """Replace the characters PostgreSQL cannot store (NUL, lone surrogates) with U+FFFD."""
    if _NUL in value:
        value = value.replace(_NUL, _REPLACEMENT)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join(_REPLACEMENT if "\ud800" <= char <= "\udfff" else char for char in value)
    return value


def clean_value(value: Any) -> Any:
    """Clean every string in a JSON-like value, and turn NaN and infinities (invalid in jsonb) into null."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {clean_text(str(key)): clean_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_value(item) for item in value]
    return value


def _insert_exchanges() -> Any:
    statement = insert(EXCHANGES).on_conflict_do_nothing(index_elements=[EXCHANGES.c.id])
    return statement.returning(EXCHANGES.c.id)


def _insert_scores() -> Any:
    # RETURNING makes SQLAlchemy send one multi-row INSERT (insertmanyvalues)
    # where psycopg's executemany() would send one INSERT per row.
    statement = insert(SCORES).on_conflict_do_nothing(index_elements=[SCORES.c.exchange_id, SCORES.c.sentinel])
    return statement.returning(SCORES.c.exchange_id)


def _first_of_each_id(scored: Sequence[ScoredExchange]) -> list[ScoredExchange]:
    seen: set[str] = set()
    unique = []
    for item in scored:
        stored_id = clean_text(item.exchange.id)
        if stored_id not in seen:
            seen.add(stored_id)
            unique.append(item)
    return unique


def _max_slip_prob(item: ScoredExchange) -> float | None:
    probs = [item.score.sentinels[name].prob for name in item.slip_throughs if name in item.score.sentinels]
    return max(probs) if probs else None
