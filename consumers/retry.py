"""Retry with capped exponential backoff for transient faults (broker or database unavailable)."""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, TypeVar

from consumers.errors import ConsumerError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetryCancelled(ConsumerError):
    """Retrying stopped because the work was cancelled (shutdown or partitions revoked)."""


def retry_transient(
    action: Callable[[], T],
    *,
    transient: tuple[type[BaseException], ...],
    cancelled: threading.Event,
    what: str,
    initial_s: float,
    max_s: float,
) -> T:
    """Run `action` until it succeeds, waiting longer after each transient failure.

    Other exceptions propagate at once. Raises RetryCancelled when `cancelled`
    is set while waiting.
    """
    delay = initial_s
    attempt = 1
    while True:
        try:
            return action()
        except transient as exc:
            logger.warning("%s failed (attempt %d), retrying in %.1f s: %s", what, attempt, delay, exc)
        if cancelled.wait(delay * random.uniform(0.8, 1.2)):
            raise RetryCancelled(f"{what} was cancelled after {attempt} attempt(s)")
        delay = min(max_s, delay * 2)
        attempt += 1
