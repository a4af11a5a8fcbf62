"""Errors of the Kafka ingestion loop."""

from monitor.errors import SentinelMonitorError


class ConsumerError(SentinelMonitorError):
    """The consume, score, persist, commit loop failed."""


class BrokerUnavailableError(ConsumerError):
    """The Kafka cluster could not be reached; the caller retries with backoff."""


class DeadLetterError(ConsumerError):
    """A message could not be written to the dead-letter topic; its offset is not committed."""
