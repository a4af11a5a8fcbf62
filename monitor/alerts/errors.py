"""Errors of alert delivery."""

from monitor.errors import SentinelMonitorError


class AlertError(SentinelMonitorError):
    """An alert could not be stored, sent or managed."""


class SinkError(AlertError):
    """A sink failed to deliver an alert.

    The message is stored as the delivery's last error, so it must not contain a secret.
    """


class SinkNotFoundError(AlertError):
    """An operator named an alert sink that has no row in alert_sinks."""
