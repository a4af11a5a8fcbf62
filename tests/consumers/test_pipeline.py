"""The consume, score, persist, commit loop against the real Kafka and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from consumers.dead_letter import REASON_HEADER
from consumers.loop import LoopStats
from monitor.daemon import build_pipeline
from monitor.model_store import load_scorer
from monitor.settings import DatabaseSettings, KafkaSettings, ModelSettings, Settings
from storage.exchanges import count_exchanges, count_unscored
from tests.consumers.harness import (
    REPO_ROOT,
    committed_total,
    make_exchange,
    pipeline_settings,
    produce,
    produce_exchanges,
    read_topic,
    unique_kafka_settings,
    wait_until,
)
from tests.scoring.factories import SENTINELS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.usefixtures("kafka_available")]

SAMPLE = REPO_ROOT / "monitor" / "samples" / "exchanges.jsonl"


def run_until_caught_up(settings: Settings, model_dir: Path, factory: sessionmaker[Session]) -> LoopStats:
    model_settings = ModelSettings(path=str(model_dir), device="cpu")
    scorer = load_scorer(model_settings, settings)
    loop, producer = build_pipeline(settings, scorer, factory, threading.Event())
    try:
        return loop.run(until_caught_up=True)
    finally:
        producer.close(timeout=5)


def stored(factory: sessionmaker[Session]) -> tuple[int, int]:
    with factory() as session:
        return count_exchanges(session), count_unscored(session)


def settings_for(kafka: KafkaSettings, database: DatabaseSettings) -> Settings:
    return pipeline_settings(kafka, database, SENTINELS)


def test_sample_stored_once_and_malformed_dead_lettered(
    tiny_model_dir: Path, database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    kafka = unique_kafka_settings()
    settings = settings_for(kafka, database_settings)
    lines = [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]
    invalid_utf8 = b'{"schema": "exchange/v1", "id": "bad-\xff-bytes"}'
    values = lines + [invalid_utf8, None]
    produce(settings.kafka, values, [b"sample"] * len(values))

    stats = run_until_caught_up(settings, tiny_model_dir, session_factory)

    assert stats.messages == len(lines) + 2
    assert stored(session_factory) == (len(lines) - 3, 0)
    dead = read_topic(kafka.dead_letter_topic, expected=5)
    reasons = sorted(dict(r.headers)[REASON_HEADER].decode() for r in dead)
    assert reasons == ["empty", "invalid_json", "invalid_utf8", "missing_field", "nul_character"]
    assert invalid_utf8 in {r.value for r in dead}, "the original bytes must reach the dead-letter topic intact"
    assert committed_total(kafka) == len(lines) + 2


def test_replaying_the_same_messages_adds_no_rows(
    tiny_model_dir: Path, database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    kafka = unique_kafka_settings()
    settings = settings_for(kafka, database_settings)
    exchanges = [make_exchange(i) for i in range(40)]
    produce_exchanges(kafka, exchanges)
    first = run_until_caught_up(settings, tiny_model_dir, session_factory)

    produce_exchanges(kafka, exchanges)
    second = run_until_caught_up(settings, tiny_model_dir, session_factory)

    assert first.stored == 40
    assert second.messages == 40
    assert second.stored == 0
    assert second.duplicates == 40
    assert stored(session_factory) == (40, 0)


def test_crash_after_database_commit_replays_without_duplicates(
    tiny_model_dir: Path, database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    # A member that stores its batches but never gets to commit the offsets,
    # as if it died between the two: the next member reads everything again.
    kafka = unique_kafka_settings()
    settings = settings_for(kafka, database_settings)
    produce_exchanges(kafka, [make_exchange(i) for i in range(25)])
    scorer = load_scorer(ModelSettings(path=str(tiny_model_dir), device="cpu"), settings)
    stop = threading.Event()
    loop, producer = build_pipeline(settings, scorer, session_factory, stop)
    loop._commit = lambda force=False: False  # type: ignore[method-assign]

    thread = threading.Thread(target=loop.run)
    thread.start()
    wait_until(lambda: stored(session_factory)[0] == 25, timeout_s=60, what="25 stored exchanges")
    stop.set()
    thread.join(timeout=60)
    producer.close(timeout=5)
    assert committed_total(kafka) == 0

    stats = run_until_caught_up(settings, tiny_model_dir, session_factory)
    assert stats.messages == 25
    assert stats.duplicates == 25
    assert stored(session_factory) == (25, 0)
    assert committed_total(kafka) == 25


def test_backpressure_pauses_partitions(
    tiny_model_dir: Path, database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    kafka = unique_kafka_settings(batch_max_messages=5, max_in_flight_messages=10, max_poll_records=5)
    settings = settings_for(kafka, database_settings)
    produce_exchanges(kafka, [make_exchange(i) for i in range(60)])
    scorer = load_scorer(ModelSettings(path=str(tiny_model_dir), device="cpu"), settings)
    loop, producer = build_pipeline(settings, scorer, session_factory, threading.Event())

    observed: dict[str, int] = {"max_in_flight": 0, "paused_polls": 0}
    slow_process = loop._processor.process

    def slow(batch: Any, cancelled: threading.Event) -> Any:
        time.sleep(0.3)
        return slow_process(batch, cancelled)

    original_step = loop._step

    def watched_step() -> None:
        original_step()
        observed["max_in_flight"] = max(observed["max_in_flight"], loop._in_flight())
        if loop._consumer.paused():
            observed["paused_polls"] += 1

    loop._processor.process = slow  # type: ignore[method-assign]
    loop._step = watched_step  # type: ignore[method-assign]
    stats = loop.run(until_caught_up=True)
    producer.close(timeout=5)

    assert stats.stored == 60
    assert observed["paused_polls"] > 0, "the consumer never paused although the scorer was slower"
    assert observed["max_in_flight"] <= 10 + 5, observed


def test_default_batch_limits_respected(
    tiny_model_dir: Path, database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    kafka = unique_kafka_settings(batch_max_messages=7)
    settings = settings_for(kafka, database_settings)
    produce_exchanges(kafka, [make_exchange(i) for i in range(30)])
    stats = run_until_caught_up(settings, tiny_model_dir, session_factory)
    assert stats.stored == 30
    assert stats.batches >= 30 // 7
