"""Inbound records: a polled Kafka message, decoded and validated, or marked for the dead-letter topic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from monitor.errors import InvalidExchangeError, ScoringError
from monitor.exchange import Exchange
from monitor.policy import KafkaPosition
from monitor.scoring.prompts import EncodedPrompt
from monitor.wire import decode_exchange

Encoder = Callable[[Exchange], EncodedPrompt]


@dataclass(frozen=True)
class InboundRecord:
    """One polled message. Exactly one of (`exchange`, `prompt`) and `reason` is set."""

    position: KafkaPosition
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    exchange: Exchange | None = None
    prompt: EncodedPrompt | None = None
    reason: str | None = None
    error: str | None = None

    @property
    def is_valid(self) -> bool:
        return self.exchange is not None

    @property
    def tokens(self) -> int:
        return len(self.prompt.ids) if self.prompt is not None else 0


def inbound_record(message: Any, encode: Encoder, max_bytes: int) -> InboundRecord:
    """Decode, validate and tokenize one kafka-python ConsumerRecord."""
    position = KafkaPosition(message.topic, message.partition, message.offset)
    headers = tuple((name, value or b"") for name, value in (message.headers or ()))
    base = {"position": position, "key": message.key, "value": message.value, "headers": headers}
    try:
        exchange = decode_exchange(message.value, max_bytes=max_bytes)
    except InvalidExchangeError as exc:
        return InboundRecord(**base, reason=exc.reason, error=str(exc))
    try:
        prompt = encode(exchange)
    except ScoringError as exc:
        return InboundRecord(**base, reason="unscorable", error=str(exc))
    return InboundRecord(**base, exchange=exchange, prompt=prompt)
