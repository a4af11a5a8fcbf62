"""Tests of scripts/services, its Kafka probe, scripts/bootstrap and docker-compose.yml."""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from monitor.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = REPO_ROOT / "scripts" / "services"
SHELL_SCRIPTS = [
    SERVICES,
    REPO_ROOT / "scripts" / "kafka" / "service.sh",
    REPO_ROOT / "scripts" / "postgres" / "service.sh",
    REPO_ROOT / "scripts" / "bootstrap",
    REPO_ROOT / ".ci" / "run",
]
KAFKA_PORT = int(os.environ.get("SENTINEL_KAFKA_PORT", "19092"))


def load_probe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafka_probe", REPO_ROOT / "scripts" / "kafka" / "probe.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kafka_string(text: str | None) -> bytes:
    if text is None:
        return struct.pack(">h", -1)
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def metadata_response(correlation_id: int, brokers: list[tuple[int, str, int]], cluster_id: str | None) -> bytes:
    body = struct.pack(">ii", correlation_id, 0)  # correlation id, throttle_time_ms
    body += struct.pack(">i", len(brokers))
    for node_id, host, port in brokers:
        body += struct.pack(">i", node_id) + kafka_string(host) + struct.pack(">i", port) + kafka_string(None)
    body += kafka_string(cluster_id) + struct.pack(">i", 1)  # controller id
    return body + struct.pack(">i", 0)  # no topics


def run_services(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVICES), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def require_services() -> None:
    if os.environ.get("SENTINEL_SKIP_SERVICES") == "1":
        pytest.skip("SENTINEL_SKIP_SERVICES=1")


def test_probe_parses_metadata_response() -> None:
    probe = load_probe()
    response = metadata_response(probe.CORRELATION_ID, [(1, "127.0.0.1", 19092)], "cluster-a")

    brokers, cluster_id = probe.read_brokers(response)

    assert brokers == ["1@127.0.0.1:19092"]
    assert cluster_id == "cluster-a"


def test_probe_rejects_foreign_correlation_id() -> None:
    probe = load_probe()
    response = metadata_response(probe.CORRELATION_ID + 1, [(1, "127.0.0.1", 19092)], None)

    with pytest.raises(ValueError, match="correlation id"):
        probe.read_brokers(response)


def test_probe_request_is_metadata_v4() -> None:
    probe = load_probe()
    request = probe.build_metadata_request()

    (size,) = struct.unpack_from(">i", request)
    api_key, api_version = struct.unpack_from(">hh", request, 4)
    assert size == len(request) - 4
    assert api_key == 3
    assert api_version == 4


def test_probe_fails_on_closed_port(capsys: pytest.CaptureFixture[str]) -> None:
    probe = load_probe()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        closed_port = listener.getsockname()[1]

    status = probe.main(["probe.py", "127.0.0.1", str(closed_port), "1"])

    assert status == 1
    assert f"127.0.0.1:{closed_port} failed" in capsys.readouterr().err


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_shell_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr


def test_services_rejects_unknown_service() -> None:
    result = run_services("start", "redis")

    assert result.returncode == 2
    assert "unknown service" in result.stderr


def test_services_rejects_unknown_command() -> None:
    result = run_services("launch")

    assert result.returncode == 2
    assert "Usage: scripts/services" in result.stderr


def test_services_rejects_non_numeric_port() -> None:
    result = run_services("status", "kafka", env={"SENTINEL_KAFKA_PORT": "kafka"})

    assert result.returncode == 1
    assert "SENTINEL_KAFKA_PORT=kafka is not a whole number" in result.stderr


@pytest.mark.kafka
def test_probe_answers_local_broker(capsys: pytest.CaptureFixture[str]) -> None:
    require_services()
    probe = load_probe()

    status = probe.main(["probe.py", "127.0.0.1", str(KAFKA_PORT)])

    assert status == 0, capsys.readouterr().err
    assert f"1@127.0.0.1:{KAFKA_PORT}" in capsys.readouterr().out


@pytest.mark.kafka
@pytest.mark.postgres
def test_status_reports_running_services_healthy() -> None:
    require_services()

    result = run_services("status")

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("postgres") and "healthy" in line for line in lines), result.stdout
    assert any(line.startswith("kafka") and "healthy" in line for line in lines), result.stdout


@pytest.mark.kafka
def test_start_of_running_broker_keeps_it() -> None:
    require_services()
    before = run_services("status", "kafka")
    assert before.returncode == 0, before.stdout + before.stderr

    result = run_services("start", "kafka")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "already running" in result.stdout
    assert run_services("status", "kafka").stdout.split()[2:4] == before.stdout.split()[2:4]


def test_compose_file_runs_migrations_before_daemon() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]

    assert set(services) == {"kafka", "postgres", "migrate", "model-pull", "monitor"}
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["monitor"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["monitor"]["environment"]["SENTINEL_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["monitor"]["environment"]["SENTINEL_DATABASE__URL"].startswith("postgresql+psycopg://")


def test_compose_file_publishes_the_api_on_loopback() -> None:
    yaml = pytest.importorskip("yaml")
    monitor = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["monitor"]
    environment = monitor["environment"]

    assert monitor["ports"] == ["127.0.0.1:8686:8686"]
    # Compose substitutes the default when SENTINEL_API__TOKENS is unset; the settings must accept it.
    tokens = environment["SENTINEL_API__TOKENS"].removeprefix("${SENTINEL_API__TOKENS:-").removesuffix("}")
    settings = load_settings(None, environ={"SENTINEL_API__HOST": environment["SENTINEL_API__HOST"], "SENTINEL_API__TOKENS": tokens})
    assert (settings.api.host, settings.api.port, settings.api.tokens) == ("0.0.0.0", 8686, ())
