"""Scores: sentinel log-probabilities for one prompt, and the identity of what computed them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class ScorerIdentity:
    """What produced a score: the model and the exact template and tokenizer used."""

    model_id: str
    template_sha256: str
    tokenizer_sha256: str


@dataclass(frozen=True)
class SentinelScore:
    """log P(sentinel | prompt), in nats, and its probability."""

    sentinel: str
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass(frozen=True)
class PromptScore:
    """The scores of every configured sentinel for one prompt."""

    sentinels: Mapping[str, SentinelScore]
    truncated: bool
    prompt_tokens: int
    identity: ScorerIdentity

    def as_json(self) -> dict[str, object]:
        return {
            "sentinels": {
                name: {"logprob": score.logprob, "prob": score.prob} for name, score in self.sentinels.items()
            },
            "truncated": self.truncated,
        }
