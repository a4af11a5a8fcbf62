"""Offline scoring: JSON lines in, one line out per input, in order, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from monitor.settings import DEFAULT_SENTINELS
from tests.conftest import REPO_ROOT


def run_score(tiny_model_dir: Path, stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["SENTINEL_MODEL__PATH"] = str(tiny_model_dir)
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING", "score", *args],
        input=stdin, capture_output=True, cwd=REPO_ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip


def exchange_line(identifier: str, text: str) -> str:
    return json.dumps(
        {
            "schema": "exchange/v1", "id": identifier, "user_id": "u", "model": "m",
            "created_at": "2026-12-01T00:00:00Z",
            "request": {"messages": [{"role": "user", "content": text}]},
            "response": {"content": "ok"},
        }
    )  # fmt: skip


def test_score_writes_one_line_per_input_in_order(tiny_model_dir: Path) -> None:
    lines = [json.dumps({"id": f"p{i}", "prompt": "word " * (i * 37 % 90 + 1)}) for i in range(30)]
    lines.insert(5, exchange_line("ex-a", "How do I bake bread?"))
    result = run_score(tiny_model_dir, ("\n".join(lines) + "\n").encode())
    assert result.returncode == 0, result.stderr.decode()
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [row["id"] for row in rows] == [json.loads(line)["id"] for line in lines]
    for row in rows:
        assert set(row) == {"id", "sentinels", "truncated"}
        assert set(row["sentinels"]) == {s.name for s in DEFAULT_SENTINELS}
        for value in row["sentinels"].values():
            assert value["logprob"] <= 0.0
            assert 0.0 <= value["prob"] <= 1.0


def test_score_reports_bad_lines_and_keeps_going(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    output = tmp_path / "out.jsonl"
    source.write_text(
        "\n".join([json.dumps({"id": "ok-1", "prompt": "hello"}), "{broken", json.dumps({"id": "empty", "prompt": ""}),
                   json.dumps({"id": "ok-2", "prompt": "bye"})]) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    result = run_score(tiny_model_dir, b"", "--input", str(source), "--output", str(output))
    assert result.returncode == 1
    assert b"2 line(s) could not be scored" in result.stderr
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [row.get("id") for row in rows] == ["ok-1", None, "empty", "ok-2"]
    assert rows[1]["line"] == 2
    assert "not valid JSON" in rows[1]["error"]
    assert "non-empty" in rows[2]["error"]
    assert "sentinels" in rows[3]


def test_score_missing_input_file_is_a_usage_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = run_score(tiny_model_dir, b"", "--input", str(tmp_path / "absent.jsonl"))
    assert result.returncode == 2
    assert b"cannot read --input" in result.stderr


def test_score_without_pulled_model_says_how_to_fix(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env["SENTINEL_MODEL__CACHE_DIR"] = str(tmp_path / "empty-cache")
    result = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "score"], input=b"{}\n", capture_output=True, cwd=REPO_ROOT,
        env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert b"sentinel-monitor model pull" in result.stderr
