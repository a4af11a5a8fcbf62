"""Policy: which scored exchanges are slip-throughs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from monitor.exchange import Exchange
from monitor.guard import InjectionFinding
from monitor.outcome import Outcome
from monitor.scores import PromptScore
from monitor.sentinels import Sentinel


@dataclass(frozen=True)
class KafkaPosition:
    """Where a message came from, kept with the exchange for tracing."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ScoredExchange:
    """An exchange with its scores, its outcome and the sentinels it slipped through.

    `injection_findings` are the sentinels found in the user-controlled
    messages. The score is of a copy with them neutralised, while `exchange`
    keeps the messages as received.
    """

    exchange: Exchange
    score: PromptScore
    outcome: Outcome
    slip_throughs: tuple[str, ...]
    position: KafkaPosition | None = None
    injection_findings: tuple[InjectionFinding, ...] = ()


def find_slip_throughs(score: PromptScore, outcome: Outcome, sentinels: Sequence[Sentinel]) -> tuple[str, ...]:
    """Return the names of the sentinels at or above their threshold on an answered exchange."""
    if outcome.kind != "answered":
        return ()
    return tuple(
        sentinel.name
        for sentinel in sentinels
        if sentinel.name in score.sentinels and score.sentinels[sentinel.name].prob >= sentinel.threshold
    )


def assess(
    exchange: Exchange,
    score: PromptScore,
    outcome: Outcome,
    sentinels: Sequence[Sentinel],
    position: KafkaPosition | None = None,
    injection_findings: tuple[InjectionFinding, ...] = (),
) -> ScoredExchange:
    """Combine an exchange, its score and its outcome into the record that is stored."""
    return ScoredExchange(
        exchange=exchange,
        score=score,
        outcome=outcome,
        slip_throughs=find_slip_throughs(score, outcome, sentinels),
        position=position,
        injection_findings=injection_findings,
    )
