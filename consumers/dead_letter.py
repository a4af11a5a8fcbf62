"""The dead-letter topic: invalid messages, byte for byte, with the reason in headers."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from consumers.errors import DeadLetterError
from consumers.records import InboundRecord

logger = logging.getLogger(__name__)

REASON_HEADER = "sentinel-error"
MESSAGE_HEADER = "sentinel-error-message"
MAX_MESSAGE_HEADER_BYTES = 1024


class DeadLetterWriter:
    """Writes invalid records to the dead-letter topic and waits until the broker acknowledged them."""

    def __init__(self, producer: KafkaProducer, topic: str, timeout_s: float) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s

    def write(self, records: Sequence[InboundRecord]) -> None:
        """Send every record and block until all are acknowledged; raise DeadLetterError otherwise."""
        if not records:
            return
        try:
            futures = [self._send(record) for record in records]
            self._producer.flush(timeout=self._timeout_s)
            for future in futures:
                future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise DeadLetterError(
                f"could not write {len(records)} message(s) to dead-letter topic {self._topic}: {exc}; "
                "their offsets stay uncommitted and they are retried"
            ) from exc
        reasons = Counter(record.reason or "unknown" for record in records)
        first = records[0].position
        logger.warning(
            "dead-lettered %d message(s) to %s: reasons=%s first=%s/%d/%d",
            len(records), self._topic, dict(reasons), first.topic, first.partition, first.offset,
        )  # fmt: skip
        for record in records:
            logger.debug(
                "dead-lettered message: topic=%s partition=%d offset=%d reason=%s error=%s",
                record.position.topic, record.position.partition, record.position.offset, record.reason, record.error,
            )  # fmt: skip

    def _send(self, record: InboundRecord):  # type: ignore[no-untyped-def]
        position = record.position
        headers = list(record.headers) + [
            (REASON_HEADER, (record.reason or "unknown").encode("utf-8")),
            (MESSAGE_HEADER, _truncate_utf8(record.error or "", MAX_MESSAGE_HEADER_BYTES)),
            ("sentinel-source-topic", position.topic.encode("utf-8")),
            ("sentinel-source-partition", str(position.partition).encode("ascii")),
            ("sentinel-source-offset", str(position.offset).encode("ascii")),
        ]
        return self._producer.send(self._topic, value=record.value, key=record.key, headers=headers)


def _truncate_utf8(text: str, limit: int) -> bytes:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore").encode("utf-8")
