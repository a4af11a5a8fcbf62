"""The root of the project's exception hierarchy.

Every package raises subclasses of `SentinelMonitorError`. Errors from
third-party libraries (kafka-python, psycopg, SQLAlchemy, torch, transformers)
are translated where they enter the project, with `raise ... from exc`.
"""


class SentinelMonitorError(Exception):
    """Base class for every error raised by Sentinel Monitor."""


class ConfigError(SentinelMonitorError):
    """A setting is missing, malformed or inconsistent with another setting."""


class InvalidExchangeError(SentinelMonitorError):
    """A message is not a valid exchange in any accepted format.

    `reason` is a short machine-readable code (for the dead-letter header) and
    the message text says what was wrong and on which field.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(SentinelMonitorError):
    """The model or tokenizer could not be fetched, verified or loaded."""


class ScoringError(SentinelMonitorError):
    """A prompt could not be scored."""
