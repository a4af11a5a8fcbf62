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
    not_json: int


def produce_messages(
    producer: Any,
    topic: str,
    messages: Iterable[ReplayMessage],
    *,
    total: int | None = None,
    show_progress: bool = False,
    timeout_s: float = 60.0,
) -> ProduceSummary:
    """Send every message keyed by user id, then flush and count acknowledged and failed sends.

    A message the producer rejects before sending (too large, for example)
    counts as failed and the others still go out.
    """
    failures: list[BaseException] = []
    futures = []
    not_json = 0
    rejected = 0
    with tqdm(total=total, unit="msg", disable=not show_progress, file=sys.stderr, desc="producing") as bar:
        for message in messages:
            not_json += 0 if message.is_json_object else 1
            key = message.key.encode("utf-8") if message.key is not None else None
            try:
                future = producer.send(topic, value=message.value, key=key)
            except KafkaError as exc:
                failures.append(exc)
                rejected += 1
                continue
            future.add_callback(lambda _metadata: bar.update(1))
            future.add_errback(failures.append)
            futures.append(future)
        try:
            producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BrokerUnavailableError(f"could not flush {len(futures)} message(s) to {topic}: {exc}") from exc
    sent = sum(1 for future in futures if future.succeeded())
    failed = len(futures) - sent + rejected
    if failed:
        first = repr(failures[0]) if failures else "no acknowledgement before the flush timed out"
        logger.error("%d message(s) were not sent to %s; first error: %s", failed, topic, first)
    return ProduceSummary(sent=sent, failed=failed, not_json=not_json)
