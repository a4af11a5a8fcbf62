"""Serving with uvicorn: `api serve` in a subprocess, and the daemon's background server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.api.server import ApiServerError, bind_socket, start_background_server
from monitor.settings import ApiSettings, DatabaseSettings, Settings
from tests.api.conftest import REVIEWER_TOKEN, auth, settings_environment
from tests.conftest import REPO_ROOT

LISTENING = re.compile(r"API listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 60


def wait_for_url(process: subprocess.Popen[str]) -> str:
    """Read the server's log until it names its URL, or fail with what it printed."""
    assert process.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        match = LISTENING.search(line)
        if match:
            return match.group(1)
    pytest.fail(f"api serve did not report its URL; it printed:\n{''.join(lines)}")


@pytest.mark.postgres
def test_api_serve_answers_and_stops(database_settings: DatabaseSettings) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SENTINEL_")}
    env.update(settings_environment(database_settings))
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "--log-level", "INFO", "api", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        url = wait_for_url(process)
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        assert httpx.get(f"{url}/v1/flags", timeout=10, headers=auth(REVIEWER_TOKEN)).json() == {"flags": []}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


@pytest.mark.postgres
def test_background_server_starts_and_stops(api_settings: Settings, session_factory: sessionmaker[Session]) -> None:
    settings = Settings(
        database=api_settings.database, scoring=api_settings.scoring, api=ApiSettings(port=0, tokens=api_settings.api.tokens)
    )
    server = start_background_server(settings, session_factory)
    try:
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{server.url}/v1/flags", timeout=10).status_code == 401
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_port_in_use_is_a_clear_error() -> None:
    occupied = bind_socket("127.0.0.1", 0)
    try:
        port = occupied.getsockname()[1]
        with pytest.raises(ApiServerError, match=f"cannot listen on 127.0.0.1:{port}.*choose another api.port"):
            bind_socket("127.0.0.1", port)
    finally:
        occupied.close()


def test_unknown_host_is_a_clear_error() -> None:
    with pytest.raises(ApiServerError, match="cannot resolve api.host='no-such-host.invalid'"):
        bind_socket("no-such-host.invalid", 0)


def test_bind_socket_listens() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname()[:2], timeout=5):
            pass
    finally:
        sock.close()
