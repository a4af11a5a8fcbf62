"""Kafka clients built from settings, with kafka-python's errors translated where they enter."""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from consumers.errors import BrokerUnavailableError
from monitor.settings import KafkaSettings

logger = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
# How long a new client waits for its first metadata before raising. The
# daemon retries with backoff, so a short wait keeps it responsive to SIGTERM
# while the broker is down; kafka-python's own default is 30 s.
BOOTSTRAP_TIMEOUT_MS = 5_000


def build_consumer(settings: KafkaSettings) -> KafkaConsumer:
    """Build a consumer-group member with manual commits (subscription happens in the loop)."""
    try:
        return KafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers.split(","),
            client_id=settings.client_id,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_poll_records=settings.max_poll_records,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            request_timeout_ms=settings.request_timeout_ms,
            reconnect_backoff_max_ms=_reconnect_backoff_max_ms(settings),
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
            fetch_max_bytes=max(52_428_800, settings.max_message_bytes * 2),
            max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes + 1024),
            allow_auto_create_topics=False,
        )
    except KafkaError as exc:
        raise BrokerUnavailableError(f"could not create a Kafka consumer for {settings.bootstrap_servers}: {exc!r}") from exc


def build_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """Build a producer that waits for every in-sync replica and retries on its own."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "acks": "all",
        "retries": 5,
        "linger_ms": 5,
        "request_timeout_ms": settings.request_timeout_ms,
        "max_request_size": max(1_048_576, settings.max_message_bytes + 4096),
        "reconnect_backoff_max_ms": _reconnect_backoff_max_ms(settings),
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }
    options.update(overrides)
    try:
        return KafkaProducer(**options)
    except KafkaError as exc:
        raise BrokerUnavailableError(f"could not create a Kafka producer for {settings.bootstrap_servers}: {exc!r}") from exc


def _reconnect_backoff_max_ms(settings: KafkaSettings) -> int:
    # The clients' reconnect delay doubles up to kafka.retry_max_s too, instead
    # of up to kafka-python's own cap of 30 s.
    return int(settings.retry_max_s * 1000)


def ensure_topics(settings: KafkaSettings, partitions: int = DEFAULT_PARTITIONS) -> None:
    """Create the exchanges and dead-letter topics if they do not exist yet."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers.split(","),
            client_id=f"{settings.client_id}-admin",
            request_timeout_ms=settings.request_timeout_ms,
            bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        )
    except KafkaError as exc:
        raise BrokerUnavailableError(f"could not connect to Kafka at {settings.bootstrap_servers}: {exc!r}") from exc
    try:
        existing = set(admin.list_topics())
        wanted = [settings.topic, settings.dead_letter_topic]
        missing = [NewTopic(name, partitions, 1) for name in wanted if name not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another replica created it between the listing and the request
            logger.info("created topics %s with %d partitions", [t.name for t in missing], partitions)
    except KafkaError as exc:
        raise BrokerUnavailableError(f"could not list or create topics at {settings.bootstrap_servers}: {exc}") from exc
    finally:
        admin.close()
