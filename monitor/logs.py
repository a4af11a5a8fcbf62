"""Logging configuration, done once by the CLI."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LIBRARIES = (
    "urllib3",
    "filelock",
    "apscheduler.executors",
    "apscheduler.scheduler",
    "alembic.runtime.plugins",
    "alembic.runtime.migration",
    "transformers",
    "httpx",
)


def configure_logging(level: str) -> None:
    """Send logs to stderr at `level`, keeping third-party libraries at WARNING unless DEBUG is asked for."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    library_level = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    # kafka-python logs every failed connection attempt at ERROR, several lines
    # per second during a broker outage. The loop logs each failed poll, commit
    # or write itself with its backoff, so the library is heard only at DEBUG.
    logging.getLogger("kafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
