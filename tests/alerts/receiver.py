"""A webhook receiver for tests: http.server in a thread on 127.0.0.1, verifying each request as docs/alerts.md shows."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A receiver rejects requests whose timestamp is further than this from its clock.
TOLERANCE_S = 300


def verify_signature(secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: int = TOLERANCE_S) -> bool:
    """Check X-Sentinel-Signature over "<timestamp>." + body, and that the timestamp is recent.

    `headers` has lower-case names, because HTTP header names are case-insensitive.
    """
    timestamp = headers.get("x-sentinel-timestamp", "")
    signature = headers.get("x-sentinel-signature", "")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    status: int

    @property
    def key(self) -> str:
        return self.headers["x-sentinel-alert-key"]

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A receiver that records every POST and returns 401 for a bad signature, else the next queued status or `default_status`."""

    def __init__(self, secret: str, *, delay_s: float = 0.0) -> None:
        self.secret = secret
        self.delay_s = delay_s
        self.default_status = 200
        self.requests: list[ReceivedRequest] = []
        self._statuses: list[int] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hooks/sentinel?token=do-not-log"

    def queue_statuses(self, *statuses: int) -> None:
        with self._lock:
            self._statuses.extend(statuses)

    def accepted(self) -> list[ReceivedRequest]:
        with self._lock:
            return [request for request in self.requests if request.status < 300]

    def all_requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.requests)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _respond(self, path: str, headers: dict[str, str], body: bytes) -> int:
        if self.delay_s:
            time.sleep(self.delay_s)  # a slow receiver, so that concurrent dispatchers overlap
        verified = verify_signature(self.secret, headers, body, now=time.time())
        with self._lock:
            if not verified:
                status = 401
            elif self._statuses:
                status = self._statuses.pop(0)
            else:
                status = self.default_status
            self.requests.append(ReceivedRequest(path, headers, body, verified, status))
        return status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server looks up
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status = receiver._respond(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler
