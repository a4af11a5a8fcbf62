"""Inbound records: a polled Kafka message, decoded and validated, or marked for the dead-letter topic."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from monitor.errors import InvalidExchangeError, ScoringError
from monitor.exchange import Exchange
from monitor.guard import InjectionFinding, InputGuard
from monitor.policy import KafkaPosition
from monitor.scoring.prompts import EncodedPrompt
from monitor.wire import decode_exchange

logger = logging.getLogger(__name__)

# Serving clocks may run a little ahead; more than this is worth a warning.
FUTURE_TOLERANCE = timedelta(minutes=5)

Encoder = Callable[[Exchange], EncodedPrompt]


@dataclass(frozen=True)
class InboundRecord:
    """One polled message. Exactly one of (`exchange`, `prompt`) and `reason` is set.

    `exchange` is the exchange as received. `prompt` encodes the copy in which
    the guard neutralised the sentinels listed in `findings`.
    """

    position: KafkaPosition
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    exchange: Exchange | None = None
    prompt: EncodedPrompt | None = None
    reason: str | None = None
    error: str | None = None
    findings: tuple[InjectionFinding, ...] = ()

    @property
    def is_valid(self) -> bool:
        return self.exchange is not None

    @property
    def tokens(self) -> int:
        return len(self.prompt.ids) if self.prompt is not None else 0


def inbound_record(
    message: Any, encode: Encoder, max_bytes: int, *, guard: InputGuard | None = None
) -> InboundRecord:
    """Decode, validate, guard and tokenize one kafka-python ConsumerRecord.

    With a `guard`, sentinels written into user-controlled messages are
    replaced by a neutral marker before encoding, so only the neutralised copy
    is scored, and are kept as the record's findings.
    """
    position = KafkaPosition(message.topic, message.partition, message.offset)
    headers = tuple((name, value or b"") for name, value in (message.headers or ()))
    base = {"position": position, "key": message.key, "value": message.value, "headers": headers}
    try:
        exchange = decode_exchange(message.value, max_bytes=max_bytes)
    except InvalidExchangeError as exc:
        return InboundRecord(**base, reason=exc.reason, error=str(exc))
    _warn_if_in_the_future(exchange, position)
    scored_copy = exchange
    findings: tuple[InjectionFinding, ...] = ()
    if guard is not None:
        checked = guard.check(exchange.messages)
        if checked.findings:
            scored_copy, findings = replace(exchange, messages=checked.messages), checked.findings
            logger.debug(
                "exchange %s: %d injection finding(s) neutralised for scoring (topic=%s partition=%d offset=%d)",
                exchange.id, len(findings), position.topic, position.partition, position.offset,
            )  # fmt: skip
    try:
        prompt = encode(scored_copy)
    except ScoringError as exc:
        return InboundRecord(**base, reason="unscorable", error=str(exc))
    return InboundRecord(**base, exchange=exchange, prompt=prompt, findings=findings)


def _warn_if_in_the_future(exchange: Exchange, position: KafkaPosition) -> None:
    # The exchange is stored as sent, but no window that ends now contains it,
    # so a serving clock running ahead would hide the user's traffic from risk and flags.
    ahead = exchange.created_at - datetime.now(timezone.utc)
    if ahead > FUTURE_TOLERANCE:
        logger.warning(
            "exchange %s of user %s has created_at %s, %.0f s in the future; check the serving clock. It is stored, "
            "but per-user windows ending now leave it out (topic=%s partition=%d offset=%d)",
            exchange.id, exchange.user_id, exchange.created_at.isoformat(), ahead.total_seconds(),
            position.topic, position.partition, position.offset,
        )  # fmt: skip
