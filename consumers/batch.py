"""Micro-batches of inbound records, bounded by prompt tokens, message count and wait time."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Collection

from kafka import TopicPartition

from consumers.records import InboundRecord
from monitor.settings import KafkaSettings


@dataclass
class Batch:
    """Records polled in order; valid ones are scored and stored, invalid ones dead-lettered."""

    records: list[InboundRecord] = field(default_factory=list)
    tokens: int = 0
    opened_at: float | None = None

    @property
    def valid(self) -> list[InboundRecord]:
        return [r for r in self.records if r.is_valid]

    @property
    def invalid(self) -> list[InboundRecord]:
        return [r for r in self.records if not r.is_valid]

    def __len__(self) -> int:
        return len(self.records)


class BatchBuilder:
    """Collects records into batches that are full, or old enough, to be scored.

    A batch is sealed as soon as it reaches `batch_max_messages` or
    `batch_max_tokens` (a record that would push it over the token bound
    starts the next batch), so one large poll becomes several batches.
    """

    def __init__(self, settings: KafkaSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._sealed: deque[Batch] = deque()
        self._open = Batch()

    def __len__(self) -> int:
        return sum(len(batch) for batch in self._sealed) + len(self._open)

    def add(self, record: InboundRecord) -> None:
        if self._open.records and self._open.tokens + record.tokens > self._settings.batch_max_tokens:
            self._seal()
        if self._open.opened_at is None:
            self._open.opened_at = self._clock()
        self._open.records.append(record)
        self._open.tokens += record.tokens
        if self._is_full(self._open):
            self._seal()

    def is_ready(self) -> bool:
        if self._sealed:
            return True
        opened_at = self._open.opened_at
        return bool(self._open.records) and opened_at is not None and (
            self._clock() - opened_at >= self._settings.batch_max_wait_s
        )

    def take(self) -> Batch:
        """Return the oldest sealed batch, or else the open one."""
        if self._sealed:
            return self._sealed.popleft()
        batch, self._open = self._open, Batch()
        return batch

    def drop_partitions(self, partitions: Collection[TopicPartition]) -> list[InboundRecord]:
        """Remove the records of revoked partitions and return them, so the caller can rewind to them."""
        revoked = {(p.topic, p.partition) for p in partitions}
        dropped = [
            record
            for batch in (*self._sealed, self._open)
            for record in batch.records
            if (record.position.topic, record.position.partition) in revoked
        ]
        kept_sealed = (_without(batch, revoked) for batch in self._sealed)
        self._sealed = deque(batch for batch in kept_sealed if batch.records)
        self._open = _without(self._open, revoked)
        return dropped

    def _is_full(self, batch: Batch) -> bool:
        return len(batch.records) >= self._settings.batch_max_messages or batch.tokens >= self._settings.batch_max_tokens

    def _seal(self) -> None:
        self._sealed.append(self._open)
        self._open = Batch()


def _without(batch: Batch, revoked: set[tuple[str, int]]) -> Batch:
    kept = [r for r in batch.records if (r.position.topic, r.position.partition) not in revoked]
    if len(kept) == len(batch.records):
        return batch
    return Batch(records=kept, tokens=sum(r.tokens for r in kept), opened_at=batch.opened_at if kept else None)
