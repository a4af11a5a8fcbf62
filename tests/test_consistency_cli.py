"""The consistency command: the report over PostgreSQL, and the offline report over a file of paraphrase groups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.consistency import group_similar, measure_agreement
from monitor.settings import DatabaseSettings
from storage.engine import transaction
from storage.exchanges import ExchangeRepository
from tests.conftest import REPO_ROOT
from tests.conftest_db import database_engine, database_settings, session_factory
from tests.storage.factories import HIGH, LOW, SENTINELS, scored_exchange

__all__ = ["database_engine", "database_settings", "session_factory"]

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "paraphrase_groups.jsonl"


def run_consistency(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING", "consistency", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=full_env, timeout=300, check=False,
    )  # fmt: skip


def sentinels_env() -> dict[str, str]:
    sentinels = [{"name": s.name, "text": s.text, "threshold": s.threshold} for s in SENTINELS]
    return {"SENTINEL_SCORING__SENTINELS": json.dumps(sentinels)}


def database_env(database: DatabaseSettings) -> dict[str, str]:
    return {"SENTINEL_DATABASE__URL": database.url, **sentinels_env()}


def model_env(model_dir: Path) -> dict[str, str]:
    return {"SENTINEL_MODEL__PATH": str(model_dir), **sentinels_env()}


def store_paraphrases(factory: sessionmaker[Session]) -> None:
    now = datetime.now(timezone.utc)
    items = [
        scored_exchange(exchange_id="bread-1", text="How do I bake sourdough bread at home?", probs=LOW),
        scored_exchange(exchange_id="bread-2", text="how do i bake sourdough bread at home", probs=HIGH),
        scored_exchange(exchange_id="poem", text="Write a poem about the sea", probs=LOW),
        scored_exchange(exchange_id="old", text="How do I bake sourdough bread at home", probs=LOW),
    ]
    ages = {"bread-1": timedelta(minutes=5), "bread-2": timedelta(minutes=4), "poem": timedelta(minutes=3),
            "old": timedelta(days=3)}  # fmt: skip
    items = [replace(i, exchange=replace(i.exchange, created_at=now - ages[i.exchange.id])) for i in items]
    with transaction(factory, "store test exchanges") as session:
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, items)


@pytest.mark.postgres
def test_json_report_from_database(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    store_paraphrases(session_factory)

    result = run_consistency("--window", "24h", "--json", env=database_env(database_settings))

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["exchanges_read"] == 3
    assert report["requests"] == 3
    assert report["skipped_without_text"] == 0
    assert report["truncated"] is False
    assert report["flipping_groups"] == 1
    assert [member["id"] for member in report["groups"][0]["members"]] == ["bread-1", "bread-2"]
    assert [member["decision"] for member in report["groups"][0]["members"]] == ["allow", "refuse"]
    assert "sourdough" not in result.stdout


@pytest.mark.postgres
def test_text_report_shows_text_only_when_asked(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    store_paraphrases(session_factory)
    env = database_env(database_settings)

    plain = run_consistency("--window", "7d", env=env)
    with_text = run_consistency("--window", "7d", "--show-text", env=env)

    assert plain.returncode == 0, plain.stderr
    assert "1 flip the refuse decision" in plain.stdout
    assert "old bread-1 bread-2" in plain.stdout
    assert "sourdough" not in plain.stdout
    assert with_text.returncode == 0, with_text.stderr
    assert "sourdough" in with_text.stdout


@pytest.mark.postgres
def test_limit_truncation_is_reported(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    store_paraphrases(session_factory)

    result = run_consistency("--window", "24h", "--limit", "2", "--json", env=database_env(database_settings))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["truncated"] is True
    assert "only the newest 2 were read" in result.stderr


def test_input_report_with_tiny_model(tiny_model_dir: Path) -> None:
    result = run_consistency("--input", str(FIXTURE), "--json", env=model_env(tiny_model_dir))

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    assert {group["group"] for group in report["input_groups"]} == {row["group"] for row in rows}
    for group in report["input_groups"]:
        assert set(group["spreads"]) == {"im_sorry", "i_cant"}
        assert group["size"] == len(group["members"])
        for spread in group["spreads"].values():
            assert 0.0 <= spread["min"] <= spread["max"] <= 1.0
            assert spread["spread"] >= 0.0
        assert all(member["decision"] in {"refuse", "allow"} for member in group["members"])
    found = report["found"]
    assert found["requests"] == len(rows)
    assert all(group["size"] >= 2 and group["input_groups"] for group in found["groups"])
    expected = measure_agreement(
        [row["group"] for row in rows], group_similar([row["prompt"] for row in rows], similarity=0.8)
    )
    assert report["agreement"] == pytest.approx(expected.as_json())
    assert "sourdough bread" not in result.stdout  # prompt text; the group name is sourdough_bread


def test_input_text_report(tiny_model_dir: Path) -> None:
    result = run_consistency("--input", str(FIXTURE), "--top", "3", env=model_env(tiny_model_dir))

    assert result.returncode == 0, result.stderr
    assert "groups in the input: 27" in result.stdout
    assert "pairwise precision" in result.stdout
    assert "sourdough bread" not in result.stdout


def test_input_rejects_database_options(tmp_path: Path) -> None:
    result = run_consistency("--input", str(FIXTURE), "--window", "7d", env={})

    assert result.returncode == 2
    assert "--window" in result.stderr


def test_input_reports_invalid_line(tmp_path: Path) -> None:
    source = tmp_path / "groups.jsonl"
    source.write_text(json.dumps({"group": "g", "prompt": "hello"}) + "\n{broken\n", encoding="utf-8")

    result = run_consistency("--input", str(source), env={})

    assert result.returncode == 2
    assert "line 2" in result.stderr


def test_input_rejects_repeated_ids(tmp_path: Path) -> None:
    source = tmp_path / "groups.jsonl"
    lines = [json.dumps({"id": "same", "group": "g", "prompt": text}) for text in ("hello", "hello there")]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = run_consistency("--input", str(source), env={})

    assert result.returncode == 2
    assert "id 'same' is also on line 1" in result.stderr


def test_similarity_out_of_range_is_a_usage_error() -> None:
    result = run_consistency("--similarity", "1.5", env={})

    assert result.returncode == 2
    assert "invalid similarity" in result.stderr
