"""The consume, score, persist, commit loop.

The main thread owns the KafkaConsumer: it polls, decodes, batches, commits
and handles rebalances. One worker thread scores and persists one batch at a
time. While the worker is busy the main thread keeps polling (with partitions
paused when too many messages are in flight), so a slow batch never exceeds
`max.poll.interval.ms` and never gets this member evicted from the group.

Offsets are committed only for batches whose every message is stored in
PostgreSQL or acknowledged by the dead-letter topic.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.batch import Batch, BatchBuilder
from consumers.offsets import merge_offsets
from consumers.processor import BatchProcessor, BatchResult
from consumers.records import Encoder, InboundRecord, inbound_record
from consumers.retry import RetryCancelled
from monitor.guard import InputGuard
from monitor.settings import KafkaSettings

logger = logging.getLogger(__name__)

BUSY_POLL_MS = 100
IDLE_POLL_MS = 500
CAUGHT_UP_CHECK_S = 1.0
# A commit normally takes milliseconds. When the group coordinator cannot be
# reached, the loop gives up on a commit after this long and retries it with
# backoff, so that polling and shutdown do not wait kafka.request_timeout_ms.
COMMIT_TIMEOUT_MS = 5_000


@dataclass
class RunningBatch:
    batch: Batch
    future: Future[BatchResult]
    cancelled: threading.Event
    started_at: float


@dataclass
class LoopStats:
    """Totals since the loop started."""

    batches: int = 0
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    slip_throughs: int = 0
    injection_attempts: int = 0
    abandoned_batches: int = 0
    caught_up: bool = False
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class ConsumerLoop:
    def __init__(
        self,
        consumer: Any,
        processor: BatchProcessor,
        encode: Encoder,
        settings: KafkaSettings,
        stop: threading.Event,
        guard: InputGuard | None = None,
    ) -> None:
        self._consumer = consumer
        self._processor = processor
        self._encode = encode
        self._settings = settings
        self._stop = stop
        self._guard = guard
        self._builder = BatchBuilder(settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentinel-batch")
        self._running: RunningBatch | None = None
        self._retry_batch: Batch | None = None
        self._retry_at = 0.0
        self._retry_delay = settings.retry_initial_s
        self._pending_commit: dict[TopicPartition, int] = {}
        self._commit_at = 0.0
        self._commit_delay = settings.retry_initial_s
        self._poll_delay = settings.retry_initial_s
        self._assigned: set[TopicPartition] = set()
        self._caught_up_checked_at = 0.0
        self.stats = LoopStats()

    def run(self, *, until_caught_up: bool = False) -> LoopStats:
        """Consume until stopped (or, with `until_caught_up`, until no message is left to process)."""
        self._consumer.subscribe([self._settings.topic], listener=_Listener(self))
        logger.info("consuming topic=%s group=%s", self._settings.topic, self._settings.group_id)
        try:
            while not self._stop.is_set():
                self._step()
                if until_caught_up and self._is_caught_up():
                    logger.info("caught up: every assigned partition is processed and committed")
                    self.stats.caught_up = True
                    break
        finally:
            self._shut_down()
        return self.stats

    def _step(self) -> None:
        # 1. Poll, within the in-flight bound.
        messages = self._poll()

        # 2. Decode, validate and tokenize each message into the open batch.
        for message in messages:
            record = inbound_record(message, self._encode, self._settings.max_message_bytes, guard=self._guard)
            self._builder.add(record)

        # 3. Collect the finished batch: its offsets join those waiting to be committed.
        self._collect()

        # 4. Commit what is durable.
        self._commit()

        # 5. Hand the next batch to the worker when it is free.
        self._dispatch()

        # 6. Pause or resume partitions so that memory stays bounded.
        self._apply_backpressure()

    def _poll(self) -> list[Any]:
        busy = self._running is not None or len(self._builder) > 0
        room = self._settings.max_in_flight_messages - self._in_flight()
        try:
            records = self._consumer.poll(
                timeout_ms=BUSY_POLL_MS if busy else IDLE_POLL_MS,
                max_records=max(1, min(self._settings.max_poll_records, room)),
            )
        except KafkaError as exc:
            # The broker is unreachable or the group is being rebuilt. Nothing
            # polled is lost: uncommitted messages are read again later.
            logger.warning("poll failed, retrying in %.1f s: %r", self._poll_delay, exc)
            self._stop.wait(self._poll_delay)
            self._poll_delay = min(self._settings.retry_max_s, self._poll_delay * 2)
            return []
        self._poll_delay = self._settings.retry_initial_s
        return [message for partition_messages in records.values() for message in partition_messages]

    def _in_flight(self) -> int:
        running = len(self._running.batch) if self._running else 0
        retrying = len(self._retry_batch) if self._retry_batch else 0
        return len(self._builder) + running + retrying

    def _collect(self, wait_s: float = 0.0) -> None:
        running = self._running
        if running is None:
            return
        try:
            result = running.future.result(timeout=wait_s)
        except FutureTimeout:
            return
        except RetryCancelled as exc:
            logger.warning("batch of %d abandoned uncommitted: %s", len(running.batch), exc)
            self._running = None
            return
        except Exception:
            logger.exception(
                "unexpected error while processing a batch of %d messages; it is retried in %.1f s "
                "and its offsets stay uncommitted",
                len(running.batch),
                self._retry_delay,
            )
            self._running = None
            self._retry_batch = running.batch
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._settings.retry_max_s, self._retry_delay * 2)
            return
        self._running = None
        self._retry_delay = self._settings.retry_initial_s
        self._record(result, time.monotonic() - running.started_at)
        # A rebalance may have revoked partitions while the worker ran. Their
        # new owner reads those messages again, so their offsets are dropped.
        owned = {tp: offset for tp, offset in result.offsets.items() if tp in self._assigned}
        self._pending_commit = merge_offsets(self._pending_commit, owned)

    def _record(self, result: BatchResult, elapsed_s: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.messages += result.messages
        stats.stored += result.stored
        stats.duplicates += result.duplicates
        stats.dead_lettered += result.dead_lettered
        stats.slip_throughs += result.slip_throughs
        stats.injection_attempts += result.injection_attempts
        timings = " ".join(f"{name}={value:.3f}" for name, value in result.timings.items())
        logger.info(
            "batch done: messages=%d stored=%d duplicates=%d dead_lettered=%d slip_throughs=%d "
            "injection_attempts=%d tokens=%d wall_s=%.3f %s",
            result.messages, result.stored, result.duplicates, result.dead_lettered, result.slip_throughs,
            result.injection_attempts, result.tokens, elapsed_s, timings,
        )  # fmt: skip
        if elapsed_s > self._settings.processing_timeout_s:
            logger.warning(
                "batch took %.1f s, above kafka.processing_timeout_s=%.1f; a shutdown during such a batch "
                "abandons it. Lower kafka.batch_max_tokens or scoring.batch_max_tokens.",
                elapsed_s,
                self._settings.processing_timeout_s,
            )

    def _commit(self, force: bool = False) -> bool:
        if not self._pending_commit or (not force and time.monotonic() < self._commit_at):
            return not self._pending_commit
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._pending_commit.items()}
        try:
            self._consumer.commit(offsets=offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except CommitFailedError as exc:
            logger.warning(
                "offset commit rejected because the group rebalanced; %d partition(s) will be read again "
                "by their new owner and deduplicated by exchange id: %s",
                len(offsets),
                exc,
            )
            self._pending_commit = {}
            return False
        except KafkaError as exc:
            logger.warning("offset commit failed, retrying in %.1f s: %s", self._commit_delay, exc)
            self._commit_at = time.monotonic() + self._commit_delay
            self._commit_delay = min(self._settings.retry_max_s, self._commit_delay * 2)
            return False
        logger.debug("committed offsets %s", self._pending_commit)
        self.stats.committed.update(self._pending_commit)
        self._pending_commit = {}
        self._commit_delay = self._settings.retry_initial_s
        return True

    def _dispatch(self) -> None:
        if self._running is not None:
            return
        if self._retry_batch is not None:
            if time.monotonic() < self._retry_at:
                return
            batch, self._retry_batch = self._retry_batch, None
        elif self._builder.is_ready():
            batch = self._builder.take()
        else:
            return
        cancelled = threading.Event()
        future = self._executor.submit(self._processor.process, batch, cancelled)
        self._running = RunningBatch(batch, future, cancelled, time.monotonic())

    def _apply_backpressure(self) -> None:
        # The consumer's own pause state is read every time, because kafka-python 3
        # keeps a partition paused across a rebalance that gives it back to this member.
        in_flight = self._in_flight()
        limit = self._settings.max_in_flight_messages
        paused = self._consumer.paused()
        if in_flight >= limit:
            unpaused = self._consumer.assignment() - paused
            if unpaused:
                self._consumer.pause(*unpaused)
                logger.info("paused %d partition(s): %d messages in flight (limit %d)", len(unpaused), in_flight, limit)
        elif paused and in_flight <= limit // 2:
            self._consumer.resume(*paused)
            logger.info("resumed %d partition(s): %d messages in flight", len(paused), in_flight)

    def _is_caught_up(self) -> bool:
        if self._in_flight() or self._pending_commit or not self._assigned:
            return False
        now = time.monotonic()
        if now - self._caught_up_checked_at < CAUGHT_UP_CHECK_S:
            return False
        self._caught_up_checked_at = now
        try:
            ends = self._consumer.end_offsets(list(self._assigned))
            return all(self._consumer.position(tp) >= ends[tp] for tp in self._assigned)
        except KafkaError as exc:
            logger.warning("could not read end offsets to check progress: %s", exc)
            return False

    # Rebalance handling. kafka-python 3 calls these on its network thread
    # while the loop's thread waits inside poll() or close(). A blocking
    # consumer call there, such as commit(), raises RuntimeError, and a long
    # wait stops the heartbeats, so these only update the loop's own state.

    def on_revoked(self, partitions: Collection[TopicPartition]) -> None:
        if partitions:
            logger.info("partitions revoked: %s", sorted(f"{p.topic}-{p.partition}" for p in partitions))
        revoked = set(partitions)
        self._assigned -= revoked

        # 1. Offsets of revoked partitions are no longer this member's to commit.
        self._pending_commit = {tp: o for tp, o in self._pending_commit.items() if tp not in revoked}

        # 2. Forget what was polled from them. A batch waiting to be retried is read again entirely.
        dropped = self._builder.drop_partitions(revoked)
        if self._retry_batch is not None:
            dropped.extend(self._retry_batch.records)
            self._retry_batch = None
        self._rewind(dropped)
        if dropped:
            logger.info("dropped %d uncommitted message(s); they will be read again", len(dropped))

        # 3. The worker's batch runs on, and `_collect` keeps only the offsets of partitions still assigned.

    def _rewind(self, records: Sequence[InboundRecord]) -> None:
        # The dropped records were already returned by poll(), so seek back to
        # the first of them. kafka-python 3 keeps the position of a partition
        # that the next assignment gives back to this member, which would skip
        # them. A partition no longer assigned starts from its committed offset
        # wherever it goes next.
        first: dict[TopicPartition, int] = {}
        for record in records:
            partition = _partition_of(record)
            first[partition] = min(first.get(partition, record.position.offset), record.position.offset)
        assigned = self._consumer.assignment()
        for partition, offset in first.items():
            if partition in assigned:
                self._consumer.seek(partition, offset)

    def on_assigned(self, partitions: Collection[TopicPartition]) -> None:
        if partitions:
            logger.info("partitions assigned: %s", sorted(f"{p.topic}-{p.partition}" for p in partitions))
        self._assigned |= set(partitions)

    def _finish_running_batch(self) -> None:
        """Wait at most kafka.processing_timeout_s for the worker's batch, then abandon it uncommitted.

        A batch that is waiting to retry a database or dead-letter write is
        abandoned at once, because the outage may outlast any shutdown deadline.
        """
        running = self._running
        if running is None:
            return
        running.cancelled.set()
        self._collect(wait_s=self._settings.processing_timeout_s)
        if self._running is not running:
            return
        self._running = None
        self.stats.abandoned_batches += 1
        logger.warning(
            "batch of %d messages did not finish within kafka.processing_timeout_s=%.1f; "
            "it is abandoned uncommitted and will be read again",
            len(running.batch),
            self._settings.processing_timeout_s,
        )

    def _shut_down(self) -> None:
        # 1. Finish the batch the worker holds, unless it is waiting to retry a write.
        self._finish_running_batch()

        # 2. Commit everything that is durable.
        self._commit(force=True)
        if self._pending_commit:
            logger.warning("shutting down with uncommitted offsets %s; those messages will be read again", self._pending_commit)

        # 3. Leave the group and release the worker.
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._consumer.close(autocommit=False, timeout_ms=COMMIT_TIMEOUT_MS)
        logger.info(
            "consumer stopped: batches=%d messages=%d stored=%d duplicates=%d dead_lettered=%d",
            self.stats.batches, self.stats.messages, self.stats.stored, self.stats.duplicates,
            self.stats.dead_lettered,
        )  # fmt: skip


def _partition_of(record: InboundRecord) -> TopicPartition:
    return TopicPartition(record.position.topic, record.position.partition)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self._loop.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self._loop.on_assigned(assigned)
