"""One exchange in detail. Only reviewers get the conversation, the reply and the metadata."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import Depends, HTTPException
from sqlalchemy.orm import Session

from monitor.api.auth import Principal, data_router, require_viewer
from monitor.api.context import get_session
from monitor.api.schemas import ChatMessage, ErrorResponse, ExchangeDetail, Score
from storage.history import ExchangeDetail as StoredExchange
from storage.history import load_exchange
from storage.models import ScoreRecord

router = data_router("/exchanges", "exchanges")


@router.get(
    "/{exchange_id:path}",
    response_model=ExchangeDetail,
    summary="One exchange: outcome, scores, injection findings; the text for reviewers only",
    responses={404: {"model": ErrorResponse, "description": "No exchange has this id."}},
)
def get_exchange(
    exchange_id: str,
    principal: Annotated[Principal, Depends(require_viewer)],
    session: Annotated[Session, Depends(get_session)],
) -> ExchangeDetail:
    stored = load_exchange(session, exchange_id)
    if stored is None:
        raise HTTPException(status_code=404, detail=f"exchange {exchange_id!r} not found")
    return exchange_detail(stored, include_text=principal.is_reviewer)


def exchange_detail(stored: StoredExchange, *, include_text: bool) -> ExchangeDetail:
    """Build the response, leaving the text and metadata out unless `include_text`."""
    record = stored.exchange
    text_stored = record.messages is not None or record.reply is not None
    raw_text: Literal["included", "hidden", "not_stored"]
    if not text_stored:
        raw_text = "not_stored"
    elif include_text:
        raw_text = "included"
    else:
        raw_text = "hidden"
    show = raw_text == "included"
    return ExchangeDetail(
        id=record.id,
        user_id=record.user_id,
        model=record.model,
        created_at=record.created_at,
        ingested_at=record.ingested_at,
        source_format=record.source_format,
        outcome=record.outcome_kind,
        decided_by=record.outcome_decided_by,
        outcome_sentinel=record.outcome_sentinel,
        outcome_detail=record.outcome_detail,
        override=record.override_trusted,
        override_reason=record.override_reason,
        slip_through=record.slip_through,
        max_slip_prob=record.max_slip_prob,
        prompt_tokens=record.prompt_tokens,
        truncated=record.truncated,
        kafka_topic=record.kafka_topic,
        kafka_partition=record.kafka_partition,
        kafka_offset=record.kafka_offset,
        injection_attempts=record.injection_attempts,
        injection_findings=record.injection_findings or [],
        scores=[_score(score) for score in stored.scores],
        raw_text=raw_text,
        messages=[ChatMessage(**message) for message in record.messages or []] if show else None,
        reply=record.reply if show else None,
        metadata=record.exchange_metadata if include_text else None,
    )


def _score(score: ScoreRecord) -> Score:
    return Score(
        sentinel=score.sentinel,
        prob=score.prob,
        logprob=score.logprob if math.isfinite(score.logprob) else None,
        threshold=score.threshold,
        slip_through=score.slip_through,
        model_id=score.model_id,
        template_sha256=score.template_sha256,
        tokenizer_sha256=score.tokenizer_sha256,
        scored_at=score.scored_at,
    )
