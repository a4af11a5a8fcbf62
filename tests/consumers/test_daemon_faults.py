"""Faults injected into a running `sentinel-monitor run` subprocess against the real Kafka and PostgreSQL.

Each test runs the daemon on a topic, dead-letter topic and consumer group of
its own, and injects one fault: SIGKILL, SIGTERM, a broker restart, a database
outage, malformed messages or a second replica. It then checks exact outcomes,
which are stored rows, unscored rows, committed offsets and dead-lettered messages.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy.orm import Session, sessionmaker

from consumers.dead_letter import REASON_HEADER
from consumers.loop import COMMIT_TIMEOUT_MS
from monitor.settings import DatabaseSettings, KafkaSettings
from monitor.wire import encode_exchange
from storage.exchanges import count_exchanges, count_unscored
from tests.consumers.harness import (
    BOOTSTRAP,
    REPO_ROOT,
    committed_total,
    daemon_environment,
    make_exchange,
    pipeline_settings,
    produce,
    produce_exchanges,
    read_topic,
    start_daemon,
    tail,
    unique_kafka_settings,
    wait_until,
)
from tests.scoring.factories import SENTINELS

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.usefixtures("kafka_available")]

# A dead member leaves the group after this, so a restarted daemon gets its
# partitions within seconds. 6 s is the broker's default group.min.session.timeout.ms.
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 1_000
START_TIMEOUT_S = 120.0
CATCH_UP_TIMEOUT_S = 180.0
SHUTDOWN_TIMEOUT_S = 30.0
# A healthy shutdown finishes a 10-message batch, commits and leaves the group.
CLEAN_SHUTDOWN_S = 20.0
# With the broker down, a commit in the loop, the final commit and leaving the
# group may each wait COMMIT_TIMEOUT_MS, and closing the producer up to 10 s.
BROKER_DOWN_SHUTDOWN_S = 3 * COMMIT_TIMEOUT_MS / 1000 + 10

_CLI = [sys.executable, "-m", "monitor.cli"]
_CAUGHT_UP_SUMMARY = re.compile(r"processed (\d+) message\(s\): stored (\d+), already stored (\d+), dead-lettered (\d+)")


class Daemon:
    """`sentinel-monitor run` subprocesses started one after another with one environment and one log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        assert self.process is None or self.process.poll() is not None, "the previous daemon is still running"
        self.process = start_daemon(self.env, self.log_path, *extra)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        return f"--- daemon log (last lines of {self.log_path}) ---\n{tail(self.log_path, 60)}"

    def running(self) -> subprocess.Popen[bytes]:
        process = self.process
        assert process is not None, "no daemon was started"
        code = process.poll()
        assert code is None, f"the daemon exited with status {code}\n{self.tail()}"
        return process

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `condition` until it holds, and fail at once, with the log, if the daemon exits meanwhile."""

        def check() -> bool:
            self.running()
            return condition()

        try:
            wait_until(check, timeout_s, what, interval_s=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def kill(self) -> None:
        process = self.running()
        process.kill()
        process.wait(timeout=SHUTDOWN_TIMEOUT_S)

    def terminate(self) -> tuple[int, float]:
        """Send SIGTERM and return the exit status and how many seconds the daemon took to exit."""
        process = self.running()
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"the daemon did not exit within {SHUTDOWN_TIMEOUT_S:.0f} s of SIGTERM\n{self.tail()}")
        return code, time.monotonic() - started

    def run_until_caught_up(self) -> tuple[int, int, int, int]:
        """Run `--until-caught-up` to the end and return (processed, stored, already stored, dead-lettered)."""
        before = len(self.log())
        self.start("--until-caught-up")
        assert self.process is not None
        try:
            code = self.process.wait(timeout=CATCH_UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"--until-caught-up did not finish within {CATCH_UP_TIMEOUT_S:.0f} s\n{self.tail()}")
        assert code == 0, f"--until-caught-up exited with status {code}\n{self.tail()}"
        summary = _CAUGHT_UP_SUMMARY.search(self.log()[before:])
        assert summary is not None, f"--until-caught-up printed no summary line\n{self.tail()}"
        processed, stored, duplicates, dead_lettered = (int(value) for value in summary.groups())
        return processed, stored, duplicates, dead_lettered

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)


@pytest.fixture
def daemon_factory(
    tiny_model_dir: Path, database_settings: DatabaseSettings, tmp_path: Path
) -> Iterator[Callable[..., tuple[Daemon, KafkaSettings]]]:
    """Build daemons on fresh topics and a fresh group. Any left running are killed afterwards."""
    daemons: list[Daemon] = []

    def build(extra_env: dict[str, str] | None = None, **kafka_overrides: Any) -> tuple[Daemon, KafkaSettings]:
        kafka = unique_kafka_settings(**kafka_overrides)
        settings = pipeline_settings(kafka, database_settings, SENTINELS)
        env = daemon_environment(settings, tiny_model_dir)
        env["SENTINEL_KAFKA__SESSION_TIMEOUT_MS"] = str(SESSION_TIMEOUT_MS)
        env["SENTINEL_KAFKA__HEARTBEAT_INTERVAL_MS"] = str(HEARTBEAT_INTERVAL_MS)
        env.update(extra_env or {})
        daemon = Daemon(env, tmp_path / f"daemon-{len(daemons)}.log")
        daemons.append(daemon)
        return daemon, kafka

    yield build
    for daemon in daemons:
        daemon.close()


def stored(factory: sessionmaker[Session]) -> tuple[int, int]:
    """Return (stored exchanges, stored exchanges without a score)."""
    with factory() as session:
        return count_exchanges(session), count_unscored(session)


def rows(factory: sessionmaker[Session]) -> int:
    return stored(factory)[0]


def topic_size(topic: str) -> int:
    """Return how many messages `topic` holds: the sum of its partitions' end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, number) for number in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


def services(action: str, service: str) -> None:
    """Run `scripts/services ACTION SERVICE` and fail with its output unless it succeeds."""
    command = [str(REPO_ROOT / "scripts" / "services"), action, service]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command[-3:])} failed: {result.stdout}{result.stderr}"


@contextmanager
def restored(service: str) -> Iterator[None]:
    """Start `service` when the block ends, even when it fails, so later tests find it healthy."""
    try:
        yield
    finally:
        services("start", service)


@pytest.mark.slow
def test_sigkill_mid_run_loses_nothing(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    total = 300
    daemon, kafka = daemon_factory(batch_max_messages=10)
    produce_exchanges(kafka, [make_exchange(i) for i in range(total)])

    # 1. Kill right after the first rows are stored, when offsets may still be uncommitted.
    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
    daemon.kill()
    first_kill = rows(session_factory)
    assert 0 < first_kill < total, f"the first SIGKILL did not land mid-run: {first_kill} rows\n{daemon.tail()}"

    # 2. Restart and kill again once the new process has stored rows of its own.
    daemon.start()
    daemon.wait_for(
        lambda: rows(session_factory) >= first_kill + 20, START_TIMEOUT_S, f"{first_kill + 20} stored rows"
    )
    daemon.kill()
    second_kill = rows(session_factory)
    assert second_kill < total, f"the second SIGKILL did not land mid-run: {second_kill} rows\n{daemon.tail()}"

    # 3. A clean run finishes the rest.
    processed, _, _, dead_lettered = daemon.run_until_caught_up()

    assert stored(session_factory) == (total, 0), daemon.tail()
    assert committed_total(kafka) == total, daemon.tail()
    assert dead_lettered == 0, daemon.tail()
    assert processed >= total - second_kill, daemon.tail()


def test_sigterm_commits_stored_then_exits(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    total = 300
    daemon, kafka = daemon_factory(batch_max_messages=10)
    produce_exchanges(kafka, [make_exchange(i) for i in range(total)])

    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
    code, elapsed_s = daemon.terminate()
    first_run = rows(session_factory)

    assert code == 0, daemon.tail()
    assert elapsed_s < CLEAN_SHUTDOWN_S, f"SIGTERM took {elapsed_s:.1f} s to stop the daemon\n{daemon.tail()}"
    assert "received SIGTERM" in daemon.log(), daemon.tail()
    assert 0 < first_run < total, f"SIGTERM did not land mid-run: {first_run} rows\n{daemon.tail()}"
    # Every message is valid, so each committed offset stands for exactly one stored row.
    assert committed_total(kafka) == first_run, daemon.tail()

    processed, stored_now, duplicates, dead_lettered = daemon.run_until_caught_up()

    assert processed == total - first_run, daemon.tail()
    assert stored_now == total - first_run, daemon.tail()
    assert duplicates == 0, daemon.tail()
    assert dead_lettered == 0, daemon.tail()
    assert stored(session_factory) == (total, 0), daemon.tail()
    assert committed_total(kafka) == total, daemon.tail()


@pytest.mark.slow
def test_broker_restart_mid_run_catches_up(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    before, after = 200, 100
    total = before + after
    daemon, kafka = daemon_factory(batch_max_messages=10)
    produce_exchanges(kafka, [make_exchange(i) for i in range(before)])

    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
    with restored("kafka"):
        services("restart", "kafka")
    daemon.running()
    produce_exchanges(kafka, [make_exchange(i) for i in range(before, total)])

    daemon.wait_for(
        lambda: rows(session_factory) == total and committed_total(kafka) == total,
        CATCH_UP_TIMEOUT_S,
        f"{total} stored rows and committed offsets",
    )
    assert stored(session_factory) == (total, 0), daemon.tail()
    code, _ = daemon.terminate()
    assert code == 0, daemon.tail()


@pytest.mark.slow
def test_sigterm_during_broker_outage_exits(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    total = 200
    daemon, kafka = daemon_factory(batch_max_messages=10)
    produce_exchanges(kafka, [make_exchange(i) for i in range(total)])

    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
    with restored("kafka"):
        services("stop", "kafka")
        daemon.wait_for(lambda: "offset commit failed" in daemon.log(), 60, "a failed offset commit")
        code, elapsed_s = daemon.terminate()

    assert code == 0, daemon.tail()
    assert elapsed_s < BROKER_DOWN_SHUTDOWN_S, f"SIGTERM took {elapsed_s:.1f} s to stop the daemon\n{daemon.tail()}"
    daemon.run_until_caught_up()
    assert stored(session_factory) == (total, 0), daemon.tail()
    assert committed_total(kafka) == total, daemon.tail()


@pytest.mark.slow
def test_database_outage_retried_then_stored(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    before, during = 200, 100
    total = before + during
    daemon, kafka = daemon_factory(batch_max_messages=10)
    produce_exchanges(kafka, [make_exchange(i) for i in range(before)])

    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
    with restored("postgres"):
        services("stop", "postgres")
        produce_exchanges(kafka, [make_exchange(i) for i in range(before, total)])
        # Five failed attempts take about 3 s with retry_initial_s=0.2 doubling up to retry_max_s=2.
        daemon.wait_for(
            lambda: daemon.log().count("database write failed") >= 5, 60, "five retries of the database write"
        )
        services("start", "postgres")

    daemon.wait_for(
        lambda: rows(session_factory) == total and committed_total(kafka) == total,
        CATCH_UP_TIMEOUT_S,
        f"{total} stored rows and committed offsets",
    )
    assert stored(session_factory) == (total, 0), daemon.tail()
    retry_delays = re.findall(r"database write failed \(attempt \d+\), retrying in ([\d.]+) s", daemon.log())
    assert [float(delay) for delay in retry_delays[:5]] == [0.2, 0.4, 0.8, 1.6, 2.0], daemon.tail()
    code, _ = daemon.terminate()
    assert code == 0, daemon.tail()


@pytest.mark.slow
def test_sigterm_during_database_outage_exits(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    total = 200
    daemon, kafka = daemon_factory(batch_max_messages=10)
    produce_exchanges(kafka, [make_exchange(i) for i in range(total)])

    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
    with restored("postgres"):
        services("stop", "postgres")
        daemon.wait_for(lambda: "database write failed" in daemon.log(), 60, "a failed database write")
        code, elapsed_s = daemon.terminate()

    assert code == 0, daemon.tail()
    # The batch retrying its write must not hold the shutdown for kafka.processing_timeout_s (240 s).
    assert elapsed_s < CLEAN_SHUTDOWN_S, f"SIGTERM took {elapsed_s:.1f} s to stop the daemon\n{daemon.tail()}"
    assert "abandoned uncommitted" in daemon.log(), daemon.tail()
    daemon.run_until_caught_up()
    assert stored(session_factory) == (total, 0), daemon.tail()
    assert committed_total(kafka) == total, daemon.tail()


MAX_MESSAGE_BYTES = 4096


def poison_messages() -> dict[str, tuple[bytes | None, str]]:
    """Malformed messages keyed by name, each with the reason the dead-letter header must carry."""
    valid = json.loads(encode_exchange(make_exchange(9000)))
    without_created_at = {key: value for key, value in valid.items() if key != "created_at"}
    escaped_nul = json.loads(encode_exchange(make_exchange(9001, prompt="split\u0000here")))
    raw_nul = encode_exchange(make_exchange(9002)).replace(b"bread", b"br\x00ead")
    too_large = encode_exchange(make_exchange(9003, prompt="long " * MAX_MESSAGE_BYTES))
    openai_without_user = {
        "request": {"model": "test-model", "messages": [{"role": "user", "content": "Hi?"}]},
        "response": {
            "id": "chatcmpl-1",
            "model": "test-model",
            "created": 1_700_000_000,
            "choices": [{"message": {"role": "assistant", "content": "Hello."}}],
        },
    }
    return {
        "invalid-json": (b'{"schema": "exchange/v1", "id": ', "invalid_json"),
        "invalid-utf8": (b'{"schema": "exchange/v1", "id": "bad-\xff-bytes"}', "invalid_utf8"),
        "missing-field": (json.dumps(without_created_at).encode(), "missing_field"),
        "nul-byte": (raw_nul, "nul_character"),
        "nul-escape": (json.dumps(escaped_nul).encode(), "nul_character"),
        "too-large": (too_large, "too_large"),
        "openai-without-user": (json.dumps(openai_without_user).encode(), "missing_user"),
        "tombstone": (None, "empty"),
        "json-array": (b"[1, 2, 3]", "not_an_object"),
        "unknown-schema": (b'{"schema": "exchange/v9", "id": "x"}', "unsupported_schema"),
    }


def openai_log(index: int) -> bytes:
    document = {
        "request": {"model": "test-model", "user": f"user-{index % 7}", "messages": [{"role": "user", "content": "Hi?"}]},
        "response": {
            "id": f"chatcmpl-{index:05d}",
            "model": "test-model",
            "created": 1_700_000_000 + index,
            "choices": [{"message": {"role": "assistant", "content": "Hello."}}],
        },
    }
    return json.dumps(document).encode()


def test_poison_messages_dead_lettered(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]], session_factory: sessionmaker[Session]
) -> None:
    daemon, kafka = daemon_factory(
        {"SENTINEL_KAFKA__MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES)}, batch_max_messages=10
    )
    poison = poison_messages()
    valid: list[tuple[bytes, bytes]] = [(e.user_id.encode(), encode_exchange(e)) for e in map(make_exchange, range(60))]
    valid += [(f"user-{i % 7}".encode(), openai_log(i)) for i in range(10)]
    messages: list[tuple[bytes, bytes | None]] = list(valid)
    for slot, (name, (value, _)) in enumerate(poison.items()):
        messages.insert(slot * 7, (f"poison-{name}".encode(), value))
    produce(kafka, [value for _, value in messages], [key for key, _ in messages])

    daemon.start()
    daemon.wait_for(
        lambda: committed_total(kafka) == len(messages), CATCH_UP_TIMEOUT_S, f"{len(messages)} committed offsets"
    )

    assert stored(session_factory) == (len(valid), 0), daemon.tail()
    assert topic_size(kafka.dead_letter_topic) == len(poison), daemon.tail()
    dead = {record.key.decode(): record for record in read_topic(kafka.dead_letter_topic, expected=len(poison))}
    assert sorted(dead) == sorted(f"poison-{name}" for name in poison), daemon.tail()
    for name, (value, reason) in poison.items():
        record = dead[f"poison-{name}"]
        headers = dict(record.headers)
        assert headers[REASON_HEADER].decode() == reason, f"{name}: {headers}"
        assert record.value == value, f"{name}: the dead-letter copy differs from the original bytes"
        assert headers["sentinel-source-topic"].decode() == kafka.topic, name
    daemon.running()
    code, _ = daemon.terminate()
    assert code == 0, daemon.tail()


@pytest.mark.slow
def test_second_replica_joins_mid_run(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]],
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    # The first replica takes longer over these messages than the second takes
    # to start (about 20 s against 7 s on a 2-core CPU), so the second joins
    # mid-run. A small in-flight bound keeps the first replica pausing and
    # resuming its partitions, so the rebalance also finds some of them paused.
    total = 2000
    first, kafka = daemon_factory(batch_max_messages=10, max_in_flight_messages=50)
    second = Daemon(first.env, tmp_path / "second-replica.log")
    produce_exchanges(kafka, [make_exchange(i) for i in range(total)])

    first.start()
    try:
        first.wait_for(lambda: rows(session_factory) > 0, START_TIMEOUT_S, "the first stored rows")
        second.start()
        second.wait_for(
            lambda: "partitions assigned: ['" in second.log(), START_TIMEOUT_S, "partitions for the second replica"
        )
        joined_at = rows(session_factory)
        first.running()

        first.wait_for(
            lambda: rows(session_factory) == total and committed_total(kafka) == total,
            CATCH_UP_TIMEOUT_S,
            f"{total} stored rows and committed offsets",
        )
        second.running()
        assert joined_at < total, f"the second replica joined after the work was done\n{first.tail()}"
        assert stored(session_factory) == (total, 0), first.tail()
        for replica in (first, second):
            code, _ = replica.terminate()
            assert code == 0, replica.tail()
    finally:
        second.close()


@pytest.mark.slow
@pytest.mark.datasets
def test_public_replay_survives_sigkill(
    daemon_factory: Callable[..., tuple[Daemon, KafkaSettings]],
    session_factory: sessionmaker[Session],
    public_datasets: Path,
) -> None:
    # The public XSTest and refusal-direction files, replayed by the real
    # `replay` command, then a SIGKILL mid-run: each exchange still ends up
    # stored and scored exactly once.
    daemon, kafka = daemon_factory(batch_max_messages=20)
    sources = [
        (public_datasets / "xstest", "xstest"),
        (public_datasets / "refusal_direction" / "runs", "refusal-direction"),
    ]
    for path, replay_format in sources:
        result = subprocess.run(
            [*_CLI, "replay", str(path), "--format", replay_format, "--limit", "150"],
            cwd=REPO_ROOT, env=daemon.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "produced 150 message(s)" in result.stdout
    total = 300

    daemon.start()
    daemon.wait_for(lambda: rows(session_factory) >= 40, START_TIMEOUT_S, "40 stored rows")
    daemon.kill()
    at_kill = rows(session_factory)
    assert at_kill < total, f"the SIGKILL did not land mid-run: {at_kill} rows\n{daemon.tail()}"

    processed, stored_now, duplicates, dead_lettered = daemon.run_until_caught_up()
    assert dead_lettered == 0
    assert stored(session_factory) == (total, 0), daemon.tail()
    assert committed_total(kafka) == total
    assert stored_now + at_kill == total
    assert processed == stored_now + duplicates
