"""Sentinels: named token sequences whose probability after the prompt is a refusal probability."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from monitor.errors import ConfigError

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")

_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Sentinel:
    """A sentinel: the text the model starts a refusal with, and the policy around it.

    `text` is tokenized with the model's special tokens recognised, so a
    sentinel such as `<SORRYDAVE>` is a single token for a model trained with
    it, and a refusal prefix such as "I'm sorry" is a multi-token sentinel.
    An exchange is a slip-through for this sentinel when the probability is at
    or above `threshold` and the outcome is `answered`.
    """

    name: str
    text: str
    threshold: float
    severity: Severity = "medium"

    def __post_init__(self) -> None:
        if not _NAME_PATTERN.match(self.name):
            raise ConfigError(
                f"invalid sentinel name {self.name!r}: use 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter"
            )
        if not self.text:
            raise ConfigError(f"sentinel {self.name!r} has an empty text; set the text the refusal starts with")
        if not (0.0 < self.threshold <= 1.0) or math.isnan(self.threshold):
            raise ConfigError(
                f"sentinel {self.name!r} has threshold {self.threshold!r}; it must be a probability in (0, 1]"
            )
        if self.severity not in SEVERITIES:
            raise ConfigError(
                f"sentinel {self.name!r} has severity {self.severity!r}; choose one of {', '.join(SEVERITIES)}"
            )


def validate_sentinel_set(sentinels: tuple[Sentinel, ...]) -> tuple[Sentinel, ...]:
    """Check that a configured set of sentinels is usable together and return it."""
    if not sentinels:
        raise ConfigError("no sentinels are configured; configure at least one under [[scoring.sentinels]]")
    names = [s.name for s in sentinels]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"duplicate sentinel names: {', '.join(duplicates)}; each name must be unique")
    return sentinels
