"""Process one batch: dead-letter, score, decide outcomes, persist. Runs on the worker thread."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence, TypeVar

from kafka import TopicPartition

from consumers.batch import Batch
from consumers.dead_letter import DeadLetterWriter
from consumers.errors import DeadLetterError
from consumers.offsets import next_offsets
from consumers.records import InboundRecord
from consumers.retry import retry_transient
from monitor.errors import ScoringError
from monitor.outcome import detect_outcome
from monitor.policy import ScoredExchange, assess
from monitor.scores import PromptScore
from monitor.scoring.scorer import Scorer
from monitor.settings import KafkaSettings
from storage.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

Persist = Callable[[Sequence[ScoredExchange]], int]
T = TypeVar("T")


@dataclass(frozen=True)
class BatchResult:
    """Counts and timings of a processed batch, and the offsets that may now be committed."""

    offsets: dict[TopicPartition, int]
    messages: int
    stored: int
    duplicates: int
    dead_lettered: int
    slip_throughs: int
    tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    injection_attempts: int = 0


class BatchProcessor:
    def __init__(self, scorer: Scorer, persist: Persist, dead_letters: DeadLetterWriter, settings: KafkaSettings) -> None:
        self._scorer = scorer
        self._persist = persist
        self._dead_letters = dead_letters
        self._settings = settings

    def process(self, batch: Batch, cancelled: threading.Event) -> BatchResult:
        """Handle every record of the batch durably, then return the offsets to commit.

        Raises RetryCancelled when `cancelled` is set during a retry; nothing
        of the batch may be committed then.
        """
        timings: dict[str, float] = {}
        started = time.monotonic()

        # 1. Score the valid records; a record the model cannot score joins the invalid ones.
        valid, unscorable, scores = self._score(batch.valid)
        timings["score_s"] = time.monotonic() - started

        # 2. Dead-letter the invalid records and wait for the broker's acknowledgement.
        mark = time.monotonic()
        invalid = batch.invalid + unscorable
        self._retry(lambda: self._dead_letters.write(invalid), DeadLetterError, "dead-letter write", cancelled)
        timings["dead_letter_s"] = time.monotonic() - mark

        # 3. Decide each outcome and persist everything in one transaction.
        mark = time.monotonic()
        scored = [self._assess(record, score) for record, score in zip(valid, scores)]
        stored = self._retry(lambda: self._persist(scored), DatabaseUnavailableError, "database write", cancelled)
        timings["persist_s"] = time.monotonic() - mark

        # 4. Every record is now durable somewhere: its offset may be committed.
        timings["total_s"] = time.monotonic() - started
        return BatchResult(
            offsets=next_offsets(r.position for r in batch.records),
            messages=len(batch),
            stored=stored,
            duplicates=len(scored) - stored,
            dead_lettered=len(invalid),
            slip_throughs=sum(1 for s in scored if s.slip_throughs),
            tokens=batch.tokens,
            timings=timings,
            injection_attempts=sum(len(s.injection_findings) for s in scored),
        )

    def _score(
        self, records: list[InboundRecord]
    ) -> tuple[list[InboundRecord], list[InboundRecord], list[PromptScore]]:
        prompts = [r.prompt for r in records if r.prompt is not None]
        try:
            return records, [], self._scorer.score_encoded(prompts)
        except (ScoringError, RuntimeError) as exc:
            # Find the record(s) at fault by scoring one at a time; the others still go through.
            logger.warning("batch of %d failed to score, retrying one by one: %s", len(records), exc)
        good: list[InboundRecord] = []
        bad: list[InboundRecord] = []
        scores: list[PromptScore] = []
        for record in records:
            assert record.prompt is not None
            try:
                scores.extend(self._scorer.score_encoded([record.prompt]))
                good.append(record)
            except (ScoringError, RuntimeError) as exc:
                bad.append(replace(record, exchange=None, prompt=None, reason="scoring_failed", error=str(exc)))
        return good, bad, scores

    def _assess(self, record: InboundRecord, score: PromptScore) -> ScoredExchange:
        assert record.exchange is not None
        sentinels = self._scorer.sentinels
        outcome = detect_outcome(record.exchange, sentinels)
        return assess(
            record.exchange, score, outcome, sentinels, position=record.position, injection_findings=record.findings
        )

    def _retry(
        self, action: Callable[[], T], transient: type[Exception], what: str, cancelled: threading.Event
    ) -> T:
        return retry_transient(
            action,
            transient=(transient,),
            cancelled=cancelled,
            what=what,
            initial_s=self._settings.retry_initial_s,
            max_s=self._settings.retry_max_s,
        )
