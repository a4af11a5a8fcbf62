"""Durations written as a number and a unit: 90s, 15m, 24h, 7d, 2w."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# The maximum duration accepted, about 10 years. Longer ones overflow timedelta or
# move `now - duration` before year 1, and no window or expiry needs them.
MAX_DURATION = timedelta(days=3650)


class DurationTooLongError(ValueError):
    """A well-formed duration longer than MAX_DURATION."""


def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '24h', '7d' or '2w' into a timedelta, raising ValueError for anything else.

    A duration longer than MAX_DURATION raises DurationTooLongError, a ValueError.
    """
    match = _DURATION.match(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"invalid duration {text!r}; use a positive number and s, m, h, d or w")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise DurationTooLongError(
            f"invalid duration {text!r}: it is longer than the maximum of "
            f"{format_duration(MAX_DURATION.total_seconds())} (about 10 years); use a shorter one"
        )
    return timedelta(seconds=seconds)


def format_duration(seconds: float) -> str:
    """Format whole seconds in the largest of d, h and m that divides them exactly: 604800 -> '7d', 5400 -> '90m'."""
    whole = int(seconds)
    if whole != seconds or whole <= 0:
        return f"{seconds:g}s"
    for unit in ("d", "h", "m"):
        if whole % _UNIT_SECONDS[unit] == 0:
            return f"{whole // _UNIT_SECONDS[unit]}{unit}"
    return f"{whole}s"
