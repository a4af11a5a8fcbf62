"""Helpers for tests against the real local Kafka and PostgreSQL: topics, producers, daemons, polling."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from monitor.exchange import ChatMessage, Exchange
from monitor.settings import DatabaseSettings, KafkaSettings, Settings
from monitor.wire import encode_exchange

BOOTSTRAP = os.environ.get("SENTINEL_TEST_KAFKA", "127.0.0.1:19092")
REPO_ROOT = Path(__file__).resolve().parents[2]


def require_kafka() -> None:
    try:
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=5000)
    except Exception as exc:  # kafka-python raises several unrelated types when nothing listens
        message = f"Kafka at {BOOTSTRAP} is unreachable: {exc!r}"
        if os.environ.get("SENTINEL_SKIP_SERVICES") == "1":
            pytest.skip(f"{message} (SENTINEL_SKIP_SERVICES=1)")
        pytest.fail(f"{message}\nRun `scripts/services start kafka`.", pytrace=False)
    admin.close()


def unique_kafka_settings(**overrides: Any) -> KafkaSettings:
    """Settings on a topic, dead-letter topic and group of this test alone, with short waits."""
    suffix = secrets.token_hex(4)
    base = KafkaSettings(
        bootstrap_servers=BOOTSTRAP,
        topic=f"test.exchanges.{suffix}",
        dead_letter_topic=f"test.exchanges.{suffix}.dead-letter",
        group_id=f"test-group-{suffix}",
        batch_max_wait_s=0.3,
        retry_initial_s=0.2,
        retry_max_s=2.0,
    )
    return replace(base, **overrides)


def make_exchange(index: int, user: str | None = None, prompt: str | None = None, reply: str = "Sure, here you go.") -> Exchange:
    return Exchange(
        id=f"ex-{index:05d}",
        user_id=user or f"user-{index % 7}",
        model="test-model",
        created_at=datetime.now(timezone.utc) - timedelta(seconds=index),
        messages=(ChatMessage("user", prompt or f"Question number {index} about bread and ovens?"),),
        reply=reply,
    )


def produce(settings: KafkaSettings, values: Iterable[bytes | None], keys: Iterable[bytes | None] | None = None) -> int:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    values = list(values)
    keys = list(keys) if keys is not None else [None] * len(values)
    for key, value in zip(keys, values):
        producer.send(settings.topic, value=value, key=key)
    producer.flush(timeout=60)
    producer.close()
    return len(values)


def produce_exchanges(settings: KafkaSettings, exchanges: Iterable[Exchange]) -> int:
    items = list(exchanges)
    return produce(settings, [encode_exchange(e) for e in items], [e.user_id.encode() for e in items])


def read_topic(topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Read `topic` from the beginning until `expected` records arrived or the deadline passed."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def committed_total(settings: KafkaSettings) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=settings.group_id, enable_auto_commit=False)
    partitions = consumer.partitions_for_topic(settings.topic) or set()
    total = 0
    for number in partitions:
        offset = consumer.committed(TopicPartition(settings.topic, number))
        total += offset or 0
    consumer.close()
    return total


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def daemon_environment(settings: Settings, model_path: Path) -> dict[str, str]:
    """Environment for a `sentinel-monitor run` subprocess using these test settings."""
    kafka = settings.kafka
    env = {key: value for key, value in os.environ.items() if not key.startswith("SENTINEL_")}
    env.update(
        {
            "SENTINEL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "SENTINEL_KAFKA__TOPIC": kafka.topic,
            "SENTINEL_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
            "SENTINEL_KAFKA__GROUP_ID": kafka.group_id,
            "SENTINEL_KAFKA__BATCH_MAX_MESSAGES": str(kafka.batch_max_messages),
            "SENTINEL_KAFKA__BATCH_MAX_WAIT_S": str(kafka.batch_max_wait_s),
            "SENTINEL_KAFKA__MAX_IN_FLIGHT_MESSAGES": str(kafka.max_in_flight_messages),
            "SENTINEL_KAFKA__RETRY_INITIAL_S": str(kafka.retry_initial_s),
            "SENTINEL_KAFKA__RETRY_MAX_S": str(kafka.retry_max_s),
            "SENTINEL_DATABASE__URL": settings.database.url,
            "SENTINEL_MODEL__PATH": str(model_path),
            "SENTINEL_MODEL__DEVICE": "cpu",
            # Each replica serves the HTTP API on a free port, so replicas on one host do not collide.
            "SENTINEL_API__PORT": "0",
            "SENTINEL_SCORING__SENTINELS": json.dumps(
                [{"name": s.name, "text": s.text, "threshold": s.threshold} for s in settings.scoring.sentinels]
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_daemon(env: dict[str, str], log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "run", "--no-scheduler", *extra],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
    process.send_signal(sig)
    return process.wait(timeout=timeout_s)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def pipeline_settings(kafka: KafkaSettings, database: DatabaseSettings, sentinels: Any) -> Settings:
    from monitor.settings import ScoringSettings

    return Settings(kafka=kafka, database=database, scoring=ScoringSettings(sentinels=sentinels))
