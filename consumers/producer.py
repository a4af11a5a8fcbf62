"""Produce messages to the exchanges topic (replay and tests), waiting for every acknowledgement."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterable

from kafka.errors import KafkaError
from tqdm import tqdm

from consumers.errors import BrokerUnavailableError
from monitor.replay import ReplayMessage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProduceSummary:
    sent: int
    failed: int


def produce_messages(
    producer: Any,
    topic: str,
    messages: Iterable[ReplayMessage],
    *,
    total: int | None = None,
    show_progress: bool = False,
    timeout_s: float = 60.0,
) -> ProduceSummary:
    """Send every message keyed by user id, then flush and count acknowledged and failed sends."""
    failures: list[BaseException] = []
    futures = []
    with tqdm(total=total, unit="msg", disable=not show_progress, file=sys.stderr, desc="producing") as bar:
        for message in messages:
            key = message.key.encode("utf-8") if message.key is not None else None
            future = producer.send(topic, value=message.value, key=key)
            future.add_callback(lambda _metadata: bar.update(1))
            future.add_errback(failures.append)
            futures.append(future)
        try:
            producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"could not flush {len(futures)} message(s) to {topic}: {exc}") from exc
    pending = sum(1 for f in futures if not f.is_done)
    failed = len(failures) + pending
    if failures:
        logger.error("%d message(s) were not acknowledged by the broker; first error: %s", len(failures), failures[0])
    return ProduceSummary(sent=len(futures) - failed, failed=failed)
