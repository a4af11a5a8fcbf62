"""The alert sinks: the log, a Kafka topic and a signed HTTP webhook.

A sink's `send` returns once the receiver has the alert, and raises
`SinkError` otherwise; the dispatcher then retries the delivery later. Every
sink sends the alert's dedup key (the Kafka record key, the webhook's
`X-Sentinel-Alert-Key` header) so that a receiver can drop the repeats that
at-least-once delivery allows.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, Literal, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError

from monitor import __version__
from monitor.alerts.errors import SinkError
from monitor.alerts.payloads import alert_message, encode_message, sign, slack_message
from monitor.settings import AlertSettings, KafkaSettings
from storage.alerts import StoredAlert

# Alerts themselves go to this logger; the dispatcher's own messages use the module loggers.
ALERT_LOGGER = "monitor.alerts"
KEY_HEADER = "X-Sentinel-Alert-Key"
TIMESTAMP_HEADER = "X-Sentinel-Timestamp"
SIGNATURE_HEADER = "X-Sentinel-Signature"
# How much of a webhook's error response goes into last_error.
ERROR_BODY_CHARS = 200
# The dedup key goes into a header as ASCII: other characters are percent-encoded.
_KEY_SAFE_CHARS = ":/@._-+=,;~!*'()"

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """A destination of alerts. `timeout_s` bounds how long one `send` may block."""

    name: str
    timeout_s: float

    def send(self, alert: StoredAlert) -> None:
        """Deliver one alert, or raise `SinkError` with a message that contains no secret."""

    def close(self) -> None:
        """Release connections; the sink may be used again afterwards."""


class LogSink:
    """Writes each alert as one line to the `monitor.alerts` logger: WARNING for high and critical, INFO otherwise."""

    name = "log"
    timeout_s = 0.0

    def __init__(self) -> None:
        self._logger = logging.getLogger(ALERT_LOGGER)

    def send(self, alert: StoredAlert) -> None:
        level = logging.WARNING if alert.severity in ("high", "critical") else logging.INFO
        self._logger.log(
            level,
            "alert %d %s severity=%s flag=%s user=%s rule=%s key=%s: %s",
            alert.id, alert.kind, alert.severity, alert.flag_id, alert.user_id, alert.rule, alert.dedup_key,
            alert.payload.get("summary", ""),
        )  # fmt: skip

    def close(self) -> None:
        return None


class KafkaSink:
    """Produces each alert to a topic with acks=all, keyed by its dedup key, and waits for the acknowledgement.

    The producer is created on the first send, so a broker outage fails
    deliveries (which are retried) instead of the start of the process.
    """

    name = "kafka"

    def __init__(
        self,
        topic: str,
        kafka: KafkaSettings,
        *,
        timeout_s: float,
        producer_factory: Callable[..., Any] = KafkaProducer,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self._kafka = kafka
        self._producer_factory = producer_factory
        self._producer: Any = None

    def send(self, alert: StoredAlert) -> None:
        value = encode_message(alert_message(alert))
        headers = [("sentinel-alert-kind", alert.kind.encode("utf-8"))]
        try:
            producer = self._connected_producer()
            future = producer.send(self.topic, key=alert.dedup_key.encode("utf-8"), value=value, headers=headers)
            future.get(timeout=self.timeout_s)
        except KafkaError as exc:
            # A producer can be left unusable by some errors, so the next send starts a new one.
            self.close()
            raise SinkError(
                f"Kafka did not acknowledge alert {alert.id} on topic {self.topic} at "
                f"{self._kafka.bootstrap_servers} within {self.timeout_s:g} s: {exc!r}"
            ) from exc

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=self.timeout_s)
            except KafkaError as exc:
                logger.warning("closing the Kafka producer of the alert sink failed: %r", exc)

    def _connected_producer(self) -> Any:
        if self._producer is None:
            timeout_ms = int(self.timeout_s * 1000)
            self._producer = self._producer_factory(
                bootstrap_servers=self._kafka.bootstrap_servers.split(","),
                client_id=f"{self._kafka.client_id}-alerts",
                acks="all",
                linger_ms=0,
                max_block_ms=timeout_ms,
                request_timeout_ms=min(self._kafka.request_timeout_ms, timeout_ms),
                delivery_timeout_ms=timeout_ms,
                bootstrap_timeout_ms=timeout_ms,
            )
        return self._producer


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Treats a redirect as the response: a webhook that redirects a signed POST is misconfigured."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSink:
    """POSTs each alert to a URL, signed with HMAC-SHA256; any status outside 2xx is a failure.

    Error messages name the URL's host and port only, because webhook URLs
    often carry a token in their path.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        message_format: Literal["json", "slack"],
        timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.timeout_s = timeout_s
        self._url = url
        self._secret = secret
        self._format = message_format
        self._clock = clock
        parsed = urllib.parse.urlsplit(url)
        self._where = f"{parsed.scheme}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}"
        self._opener = urllib.request.build_opener(_NoRedirects)

    def send(self, alert: StoredAlert) -> None:
        request = self.build_request(alert)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                detail = _error_body(exc)
            raise SinkError(f"webhook {self._where} returned HTTP {exc.code} for alert {alert.id}{detail}") from exc
        except urllib.error.URLError as exc:
            raise SinkError(f"webhook {self._where} is unreachable for alert {alert.id}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise SinkError(
                f"webhook {self._where} did not respond to alert {alert.id} within {self.timeout_s:g} s"
            ) from exc
        except OSError as exc:
            raise SinkError(f"webhook {self._where} failed for alert {alert.id}: {exc!r}") from exc

    def build_request(self, alert: StoredAlert) -> urllib.request.Request:
        """Build the signed POST for one alert."""
        message = slack_message(alert) if self._format == "slack" else alert_message(alert)
        body = encode_message(message)
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": f"sentinel-monitor/{__version__}",
            KEY_HEADER: urllib.parse.quote(alert.dedup_key, safe=_KEY_SAFE_CHARS),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        return urllib.request.Request(self._url, data=body, headers=headers, method="POST")

    def close(self) -> None:
        return None


def build_sinks(alerts: AlertSettings, kafka: KafkaSettings) -> dict[str, Sink]:
    """Build the sinks that `alerts` turns on, by name, in the order of `alerts.sink_names()`."""
    sinks: dict[str, Sink] = {}
    if alerts.log:
        sinks["log"] = LogSink()
    if alerts.kafka_topic:
        sinks["kafka"] = KafkaSink(alerts.kafka_topic, kafka, timeout_s=alerts.kafka_timeout_s)
    if alerts.webhook_url:
        sinks["webhook"] = WebhookSink(
            alerts.webhook_url,
            alerts.webhook_secret,
            message_format=alerts.webhook_format,
            timeout_s=alerts.webhook_timeout_s,
        )
    return sinks


def _error_body(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(ERROR_BODY_CHARS * 4).decode("utf-8", errors="replace")
    except OSError:
        return ""
    text = " ".join(text.split())[:ERROR_BODY_CHARS]
    return f": {text}" if text else ""
