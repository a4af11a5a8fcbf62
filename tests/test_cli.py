"""The command line: durations, usage errors, and the users commands against PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.cli import parse_duration
from monitor.settings import DatabaseSettings
from storage.engine import transaction
from storage.exchanges import ExchangeRepository
from storage.migrate import head_revision
from tests.conftest import REPO_ROOT
from tests.conftest_db import database_engine, database_settings, session_factory
from tests.storage.factories import HIGH, LOW, SENTINELS, scored_exchange

__all__ = ["database_engine", "database_settings", "session_factory"]


def run_cli(
    database: DatabaseSettings | None, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    # A daemon started by `run` serves the HTTP API on a free port, never on one a local deployment uses.
    env["SENTINEL_API__PORT"] = "0"
    env.update(extra_env or {})
    if database is not None:
        env["SENTINEL_DATABASE__URL"] = database.url
    env["SENTINEL_SCORING__SENTINELS"] = json.dumps(
        [{"name": s.name, "text": s.text, "threshold": s.threshold} for s in SENTINELS]
    )
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)]
)
def test_parse_duration_units(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "24", "h", "-1h", "0m", "3y"])
def test_parse_duration_rejects_invalid(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["3651d", "200000w", "99999999999w", "9" * 400 + "s"])
def test_parse_duration_rejects_over_maximum(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="longer than the maximum of 3650d"):
        parse_duration(text)


def test_parse_duration_accepts_maximum() -> None:
    assert parse_duration("3650d") == timedelta(days=3650)


@pytest.mark.parametrize(
    "args",
    [
        ["users", "top", "--window", "200000w"],
        ["users", "top", "--window", "99999999999w"],
        ["overrides", "allow", "u", "--reason", "r", "--approver", "a", "--for", "99999999999999w"],
        ["overrides", "audit", "--since", "99999999999w"],
    ],
)
def test_huge_duration_is_usage_error(args: list[str]) -> None:
    result = run_cli(None, *args)
    assert result.returncode == 2
    assert "longer than the maximum of 3650d" in result.stderr
    assert "Traceback" not in result.stderr


def test_closed_stdout_exits_quietly() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "api", "token", "--role", "viewer"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    # Closing the read end before the command prints anything makes every write fail with EPIPE.
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.stderr.close()

    assert process.wait(timeout=60) == 141
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def test_invalid_setting_exits_with_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["SENTINEL_KAFKA__MAX_POLL_RECORDS"] = "lots"
    result = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "db", "current"], capture_output=True, text=True, cwd=REPO_ROOT,
        env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "kafka.max_poll_records='lots' is not a valid int" in result.stderr


def test_replay_rejects_rebase_time_for_csv() -> None:
    result = run_cli(None, "replay", str(REPO_ROOT), "--format", "xstest", "--rebase-time")
    assert result.returncode == 2
    assert "--rebase-time applies to --format jsonl" in result.stderr


@pytest.mark.postgres
def test_users_commands_read_stored_exchanges(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    now = datetime.now(timezone.utc)
    items = [scored_exchange(user_id="risky", probs=HIGH) for _ in range(4)]
    items += [scored_exchange(user_id="benign", probs=LOW) for _ in range(10)]
    items = [replace(item, exchange=replace(item.exchange, created_at=now - timedelta(minutes=i))) for i, item in enumerate(items)]
    repository = ExchangeRepository(sentinels=SENTINELS, store_raw_text=True)
    with transaction(session_factory, "seed") as session:
        repository.save_batch(session, items)

    flagged = run_cli(database_settings, "users", "flag", "--json")
    assert flagged.returncode == 0, flagged.stderr
    assert json.loads(flagged.stdout)["created"] == 1
    again = run_cli(database_settings, "users", "flag")
    assert "flags created 0, updated 0, unchanged 1" in again.stdout

    top = run_cli(database_settings, "users", "top", "--window", "1h", "--json")
    assert top.returncode == 0, top.stderr
    users = json.loads(top.stdout)["users"]
    assert [u["user_id"] for u in users] == ["risky"]
    assert users[0]["slip_throughs"] == 4
    assert users[0]["flag_status"] == "open"
    assert users[0]["risk"] > 0.9

    text = run_cli(database_settings, "users", "top", "--window", "1h")
    assert "risky" in text.stdout
    assert "open" in text.stdout

    shown = run_cli(database_settings, "users", "show", "risky", "--json")
    detail = json.loads(shown.stdout)
    assert detail["slip_throughs"] == 4
    assert len(detail["evidence"]) == 4
    assert all("reply" not in item and "messages" not in item for item in detail["evidence"])

    missing = run_cli(database_settings, "users", "show", "nobody")
    assert missing.returncode == 1
    assert "has no stored exchanges" in missing.stderr

    risk = run_cli(database_settings, "users", "risk", "risky", "--json")
    assert risk.returncode == 0, risk.stderr
    windows = json.loads(risk.stdout)["windows"]
    assert [window["window_s"] for window in windows] == [3600, 86400, 604800]
    assert windows[0]["answered"] == 4
    assert windows[0]["risk"] > 0.9
    assert len(windows[0]["evidence"]) == 8  # 4 exchanges x 2 sentinels

    calm = run_cli(database_settings, "users", "risk", "benign")
    assert calm.returncode == 0, calm.stderr
    assert "last 1h: risk 0.00" in calm.stdout

    no_risk = run_cli(database_settings, "users", "risk", "nobody")
    assert no_risk.returncode == 1
    assert "has no exchanges in the last 7d" in no_risk.stderr


@pytest.mark.postgres
def test_db_upgrade_is_idempotent(database_settings: DatabaseSettings) -> None:
    for _ in range(2):
        result = run_cli(database_settings, "db", "upgrade")
        assert result.returncode == 0, result.stderr
        assert f"schema at revision {head_revision()}" in result.stdout


def test_replay_rejects_non_positive_limit() -> None:
    result = run_cli(None, "replay", str(REPO_ROOT), "--format", "jsonl", "--limit", "-1")
    assert result.returncode == 2
    assert "invalid number '-1'" in result.stderr


def test_replay_of_binary_file_as_csv_is_an_input_error(tmp_path: Path) -> None:
    garbage = tmp_path / "xstest_v2_completions_garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 8)
    result = run_cli(None, "replay", str(garbage), "--format", "xstest")
    assert result.returncode == 2
    assert "is not a UTF-8 CSV file" in result.stderr


@pytest.mark.kafka
def test_replay_keeps_going_past_an_oversized_line(tmp_path: Path) -> None:
    from tests.consumers.harness import read_topic, require_kafka, unique_kafka_settings

    require_kafka()
    kafka = unique_kafka_settings()
    source = tmp_path / "in.jsonl"
    small = json.dumps({"user_id": "u", "id": "a"})
    huge = json.dumps({"user_id": "u", "id": "b", "pad": "x" * 2_000_000})
    source.write_text("\n".join([small, huge, "not json", small]) + "\n", encoding="utf-8")
    env = {"SENTINEL_KAFKA__TOPIC": kafka.topic, "SENTINEL_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic}

    result = run_cli(None, "replay", str(source), "--format", "jsonl", extra_env=env)

    assert result.returncode == 1
    assert "produced 3 message(s)" in result.stdout
    assert "1 message(s) were not sent" in result.stderr
    assert "1 line(s) were not JSON objects" in result.stderr
    assert len(read_topic(kafka.topic, expected=3)) == 3


def test_evaluate_save_metrics_needs_test_split(tmp_path: Path) -> None:
    labelled = tmp_path / "mine.jsonl"
    labelled.write_text('{"prompt": "hello", "label": "benign"}\n', encoding="utf-8")

    result = run_cli(None, "evaluate", "--input", str(labelled), "--save-metrics")

    assert result.returncode == 2
    assert "--save-metrics stores test-split metrics only" in result.stderr


def test_evaluate_save_metrics_needs_an_adapter() -> None:
    result = run_cli(None, "evaluate", "--save-metrics", extra_env={"SENTINEL_MODEL__ADAPTER": "none"})

    assert result.returncode == 2
    assert "model.adapter selects none" in result.stderr


def test_evaluate_input_errors_exit_2(tmp_path: Path) -> None:
    missing = run_cli(None, "evaluate", "--input", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr

    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00bad")
    undecodable = run_cli(None, "evaluate", "--input", str(binary))
    assert undecodable.returncode == 2
    assert "is not UTF-8 text" in undecodable.stderr


@pytest.mark.parametrize(
    ("option", "value"), [("--max-steps", "0"), ("--max-steps", "-1"), ("--epochs", "0"), ("--epochs", "nan"),
                          ("--batch-size", "0"), ("--push-down-weight", "-1")],
)  # fmt: skip
def test_train_rejects_invalid_numbers(tmp_path: Path, option: str, value: str) -> None:
    result = run_cli(None, "train-sentinels", "--output", str(tmp_path / "adapter"), option, value)
    assert result.returncode == 2
    assert "invalid number" in result.stderr


def test_train_refuses_to_overwrite(tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "README.md").write_text("mine", encoding="utf-8")

    result = run_cli(None, "train-sentinels", "--output", str(occupied), "--datasets", str(tmp_path))
    assert result.returncode == 2
    assert "already has files" in result.stderr
    assert (occupied / "README.md").read_text(encoding="utf-8") == "mine"

    a_file = tmp_path / "file.txt"
    a_file.write_text("x", encoding="utf-8")
    result = run_cli(None, "train-sentinels", "--output", str(a_file))
    assert result.returncode == 2
    assert "is a file" in result.stderr
