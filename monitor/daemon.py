"""The daemon: the Kafka consumer and the scheduler, wired together in one process."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from kafka import KafkaProducer

from consumers.clients import build_consumer, build_producer, ensure_topics
from consumers.dead_letter import DeadLetterWriter
from consumers.errors import BrokerUnavailableError
from consumers.loop import ConsumerLoop, LoopStats
from consumers.processor import BatchProcessor
from monitor.alerts.dispatcher import run_alert_dispatch
from monitor.alerts.sinks import build_sinks
from monitor.api.server import BackgroundApiServer, start_background_server
from monitor.errors import ConfigError, SentinelMonitorError
from monitor.exchange import Exchange
from monitor.guard import InputGuard, sentinel_token_ids
from monitor.jobs.flag_users import AlertOptions, run_flag_job
from monitor.jobs.scheduler import build_scheduler
from monitor.model_store import load_scorer
from monitor.scoring.prompts import EncodedPrompt
from monitor.scoring.scorer import Scorer
from monitor.policy import ScoredExchange
from monitor.settings import Settings
from storage.engine import SessionFactory, create_engine, create_session_factory, transaction
from storage.errors import DatabaseUnavailableError
from storage.exchanges import ExchangeRepository
from storage.migrate import current_revision, head_revision

logger = logging.getLogger(__name__)

T = TypeVar("T")
EXIT_ON_SECOND_SIGNAL = 130


class ShutdownRequested(SentinelMonitorError):
    """A stop signal arrived before the daemon finished starting."""


@dataclass(frozen=True)
class DaemonOptions:
    until_caught_up: bool = False
    with_scheduler: bool = True
    # Serve the HTTP API on a background thread; the CLI sets it from api.enabled.
    with_api: bool = False


def make_persist(session_factory: SessionFactory, settings: Settings) -> Callable[[Sequence[ScoredExchange]], int]:
    repository = ExchangeRepository(sentinels=settings.scoring.sentinels, store_raw_text=settings.database.store_raw_text)

    def persist(scored: Sequence[ScoredExchange]) -> int:
        with transaction(session_factory, f"store a batch of {len(scored)} exchanges") as session:
            return repository.save_batch(session, scored)

    return persist


def build_pipeline(
    settings: Settings, scorer: Scorer, session_factory: SessionFactory, stop: threading.Event
) -> tuple[ConsumerLoop, KafkaProducer]:
    """Create the topics if needed and wire consumer, scorer, storage and dead-letter producer."""
    kafka = settings.kafka
    _wait_for(lambda: ensure_topics(kafka), BrokerUnavailableError, "Kafka", stop, settings)
    producer = _wait_for(lambda: build_producer(kafka), BrokerUnavailableError, "Kafka", stop, settings)
    consumer = _wait_for(lambda: build_consumer(kafka), BrokerUnavailableError, "Kafka", stop, settings)
    dead_letters = DeadLetterWriter(producer, kafka.dead_letter_topic, timeout_s=kafka.request_timeout_ms / 1000)
    processor = BatchProcessor(scorer, make_persist(session_factory, settings), dead_letters, kafka)
    guard = InputGuard(scorer.sentinels, sentinel_token_ids(scorer.loaded.tokenizer, scorer.sentinels))

    def encode(exchange: Exchange) -> EncodedPrompt:
        return scorer.encode(exchange.messages)

    loop = ConsumerLoop(consumer, processor, encode, kafka, stop, guard=guard)
    return loop, producer


def run_daemon(settings: Settings, options: DaemonOptions, stop: threading.Event | None = None) -> LoopStats:
    """Run until SIGTERM/SIGINT (or until caught up); shut down in phases; return the consumer's totals."""
    stop = stop or threading.Event()
    _install_signal_handlers(stop)

    # 1. The database must be reachable and at the current schema.
    engine = create_engine(settings=settings.database)
    session_factory = create_session_factory(engine=engine)
    _wait_for(lambda: _check_schema(settings), DatabaseUnavailableError, "PostgreSQL", stop, settings)

    # 2. The model, loaded once for the life of the process.
    scorer = load_scorer(settings.model, settings)

    # 3. Kafka: topics, the dead-letter producer and the consumer.
    loop, producer = build_pipeline(settings, scorer, session_factory, stop)

    # 4. The scheduler runs beside the consumer.
    scheduler = build_scheduler(settings, session_factory) if options.with_scheduler else None
    if scheduler is not None:
        scheduler.start()

    logger.info(
        "daemon started: topic=%s group=%s model=%s",
        settings.kafka.topic,
        settings.kafka.group_id,
        scorer.identity.model_id,
    )
    api: BackgroundApiServer | None = None
    try:
        # 5. The HTTP API runs on a thread of its own.
        if options.with_api:
            api = start_background_server(settings, session_factory)
        stats = loop.run(until_caught_up=options.until_caught_up)
        if options.until_caught_up and options.with_scheduler and not stop.is_set():
            # The scheduled run may have happened before the last batch; flag on everything stored.
            run_flag_job(
                session_factory, settings.flags, risk=settings.risk, alerts=AlertOptions.from_settings(settings.alerts)
            )
            _deliver_alerts_once(settings, session_factory)
        return stats
    finally:
        # Shutdown phases: the consumer has finished its batch and left the group;
        # now stop the API and the scheduler, then close the producer and the database pool.
        if api is not None:
            api.stop()
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        producer.close(timeout=10)
        engine.dispose()
        logger.info("daemon stopped")


def _deliver_alerts_once(settings: Settings, session_factory: SessionFactory) -> None:
    """Deliver the alerts of the final flag run before exiting, so that a one-shot run does not leave them pending."""
    sinks = build_sinks(settings.alerts, settings.kafka)
    if not sinks:
        return
    try:
        result = run_alert_dispatch(session_factory, settings.alerts, sinks)
        logger.info("delivered %d alert(s) before exiting, %d failed", result.delivered, result.failed)
    finally:
        for sink in sinks.values():
            sink.close()


def _check_schema(settings: Settings) -> None:
    current = current_revision(settings.database)
    head = head_revision()
    if current != head:
        raise ConfigError(
            f"the database schema is at revision {current or 'none'}, expected {head}; "
            "run `sentinel-monitor db upgrade`"
        )


def _wait_for(
    action: Callable[[], T], transient: type[Exception], service: str, stop: threading.Event, settings: Settings
) -> T:
    """Run `action` until it succeeds, retrying transient failures with backoff until a stop is requested."""
    delay = settings.kafka.retry_initial_s
    while not stop.is_set():
        try:
            return action()
        except transient as exc:
            if stop.is_set():
                break
            logger.warning("%s is unavailable, retrying in %.1f s: %s", service, delay, exc)
        if stop.wait(delay):
            break
        delay = min(settings.kafka.retry_max_s, delay * 2)
    raise ShutdownRequested(f"stopped while waiting for {service}")


def _install_signal_handlers(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            # Nothing is committed before it is durable, so exiting at once loses
            # no message: the uncommitted ones are read again by the next run.
            logger.warning("received %s again: exiting now without waiting for the current batch", name)
            os._exit(EXIT_ON_SECOND_SIGNAL)
        logger.info("received %s: finishing the current batch, committing and stopping", name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
