"""Serve the API with uvicorn: in the foreground (`sentinel-monitor api serve`) or on a thread of the daemon.

The listening socket is bound here, before uvicorn starts, so that a port in
use fails with a clear `ApiServerError` instead of uvicorn exiting its thread.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from monitor.api.app import create_app
from monitor.errors import SentinelMonitorError
from monitor.settings import ApiSettings, Settings
from storage.engine import SessionFactory

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often the foreground server checks that its thread is still running, in seconds.
WAIT_STEP_S = 0.5
# Seconds uvicorn waits for open connections to finish after a stop is asked.
GRACEFUL_SHUTDOWN_S = 5


class ApiServerError(SentinelMonitorError):
    """The API server could not listen or did not start."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Open a listening TCP socket on host:port (port 0 picks a free one)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except socket.gaierror as exc:
        raise ApiServerError(f"cannot resolve api.host={host!r}: {exc.strerror}; give an IP address or a host name") from exc
    except OSError as exc:
        raise ApiServerError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another api.port (or --port), "
            "or stop the process that uses it"
        ) from exc


def build_server(app: FastAPI) -> uvicorn.Server:
    # log_config=None keeps the logging set up by the CLI; the access log is off
    # because the metrics count requests and paths carry user ids.
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
    return uvicorn.Server(config)


def listening_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def warn_without_tokens(settings: ApiSettings) -> None:
    if not settings.tokens:
        logger.warning(
            "no API tokens are configured, so every /v1 request is rejected with 401; "
            "create one with `sentinel-monitor api token`"
        )


def serve_foreground(settings: Settings, session_factory: SessionFactory, *, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully and return.

    uvicorn runs on a thread, as in the daemon, because in the main thread it
    re-raises the stop signal after shutting down, which would kill the
    process before the caller cleans up.
    """
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda signum, frame: stop.set()) for signum in STOP_SIGNALS}
    try:
        sock = bind_socket(host, port)
        warn_without_tokens(settings.api)
        server = BackgroundApiServer(create_app(settings, session_factory), sock)
        server.start()
        while not stop.wait(WAIT_STEP_S) and server.is_alive():
            pass
        server.stop()
        if not stop.is_set():
            raise ApiServerError(f"the API server on {server.url} stopped unexpectedly; the log above has the error")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class BackgroundApiServer:
    """The API served by uvicorn on a daemon thread, started and stopped by the daemon."""

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self._sock = sock
        self._server = build_server(app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="sentinel-api", daemon=True
        )
        self.url = listening_url(sock)

    def start(self) -> None:
        """Start serving, and return once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise ApiServerError(f"the API server on {self.url} stopped while starting; the log above has the error")
            if time.monotonic() > deadline:
                self.stop()
                raise ApiServerError(f"the API server on {self.url} did not start within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.01)
        logger.info("API listening on %s", self.url)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop accepting requests, let running ones finish for a few seconds, and close the socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the API server did not stop within %.0f s; closing its connections", STOP_TIMEOUT_S)
            self._server.force_exit = True
            self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()
        logger.info("API stopped")


def start_background_server(settings: Settings, session_factory: SessionFactory) -> BackgroundApiServer:
    """Bind api.host:api.port and serve the API on a thread; raises `ApiServerError` when that fails."""
    sock = bind_socket(settings.api.host, settings.api.port)
    warn_without_tokens(settings.api)
    server = BackgroundApiServer(create_app(settings, session_factory), sock)
    server.start()
    return server
