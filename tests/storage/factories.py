"""Factories for scored exchanges, built with the real policy so slip-throughs follow the thresholds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from monitor.exchange import ChatMessage, Exchange, Override
from monitor.outcome import Outcome
from monitor.policy import KafkaPosition, ScoredExchange, assess
from monitor.scores import PromptScore, ScorerIdentity, SentinelScore
from monitor.sentinels import Sentinel

SENTINELS = (
    Sentinel(name="im_sorry", text="I'm sorry", threshold=0.05, severity="medium"),
    Sentinel(name="i_cant", text="I can't", threshold=0.02, severity="medium"),
)
IDENTITY = ScorerIdentity(model_id="test/model", template_sha256="a" * 64, tokenizer_sha256="b" * 64)
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)

# Probabilities below every threshold, and above every threshold.
LOW = {"im_sorry": 0.001, "i_cant": 0.001}
HIGH = {"im_sorry": 0.6, "i_cant": 0.3}

_sequence = itertools.count(1)


def scored_exchange(
    *,
    user_id: str = "user-1",
    age: timedelta = timedelta(minutes=5),
    probs: Mapping[str, float] = HIGH,
    outcome: str = "answered",
    override: bool = False,
    exchange_id: str | None = None,
    text: str = "how do I pick a lock?",
    position: KafkaPosition | None = None,
) -> ScoredExchange:
    """Build a scored exchange created `age` before `NOW`.

    With the HIGH probabilities and the outcome `answered`, both sentinels slip through.
    """
    exchange = Exchange(
        id=exchange_id or f"ex-{next(_sequence):06d}",
        user_id=user_id,
        model="test/model",
        created_at=NOW - age,
        messages=(ChatMessage(role="system", content="be helpful"), ChatMessage(role="user", content=text)),
        reply=f"reply to: {text}",
        override=Override(trusted=True, reason="red team") if override else None,
        metadata={"team": "tests"},
    )
    score = PromptScore(
        sentinels={name: SentinelScore(sentinel=name, logprob=_log(prob)) for name, prob in probs.items()},
        truncated=False,
        prompt_tokens=42,
        identity=IDENTITY,
    )
    return assess(exchange, score, _outcome(outcome), SENTINELS, position=position)


def _outcome(kind: str) -> Outcome:
    if kind == "refused":
        return Outcome(kind="refused", decided_by="sentinel", sentinel="im_sorry")
    if kind == "answered":
        return Outcome(kind="answered", decided_by="detector")
    return Outcome(kind="unknown", decided_by="none")


def _log(prob: float) -> float:
    return math.log(prob) if prob > 0 else -math.inf
