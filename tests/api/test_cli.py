"""The `api token` and `flags` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from monitor.api.auth import find_principal, token_digest
from monitor.settings import DatabaseSettings, load_settings
from storage.engine import transaction
from storage.flags import MAX_REVIEW_NOTE_CHARS, FlagFinding, list_flags, upsert_flags
from tests.api.conftest import VIEWER_TOKEN, auth, settings_environment
from tests.conftest import REPO_ROOT
from tests.storage.factories import NOW


def run_cli(database: DatabaseSettings | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SENTINEL_")}
    if database is not None:
        env.update(settings_environment(database))
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", "--log-level", "WARNING", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120, check=False,
    )  # fmt: skip


def seed_flags(session_factory: sessionmaker[Session]) -> list[int]:
    findings = [
        FlagFinding(user_id=user, slip_through_count=3, max_prob=0.5, evidence={"exchange_ids": [f"ex-{user}"]})
        for user in ("a", "b")
    ]
    with transaction(session_factory, "seed flags") as session:
        upsert_flags(session, findings[:1], rule="slips", window_s=3600, now=NOW - timedelta(minutes=1))
        upsert_flags(session, findings[1:], rule="slips", window_s=3600, now=NOW)
        return [flag.id for flag in list_flags(session)]


def test_api_token_prints_a_working_entry() -> None:
    result = run_cli(None, "api", "token", "--name", "ops", "--role", "reviewer")
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[0].rsplit(" ", 1)[1]
    table = result.stdout[result.stdout.index("[[api.tokens]]") : result.stdout.index("\n\nor, in the environment")]
    entry = tomllib.loads(table)["api"]["tokens"][0]
    assert entry == {"name": "ops", "role": "reviewer", "sha256": token_digest(token)}
    environment_line = result.stdout.strip().splitlines()[-1]
    settings = load_settings(environ={"SENTINEL_API__TOKENS": f"[{environment_line}]"})
    principal = find_principal(settings.api.tokens, token)
    assert principal is not None
    assert principal.role == "reviewer"


@pytest.mark.parametrize(("args", "name", "role"), [([], "viewer-1", "viewer"), (["--role", "reviewer"], "reviewer-1", "reviewer")])
def test_api_token_default_name_follows_role(args: list[str], name: str, role: str) -> None:
    result = run_cli(None, "api", "token", *args)
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout.strip().splitlines()[-1])
    assert entry["name"] == name
    assert entry["role"] == role


def test_api_tokens_differ_each_time() -> None:
    first = run_cli(None, "api", "token").stdout.splitlines()[0]
    second = run_cli(None, "api", "token").stdout.splitlines()[0]
    assert first != second


@pytest.mark.postgres
def test_flags_list_json_equals_api(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session], client: TestClient
) -> None:
    seed_flags(session_factory)
    result = run_cli(database_settings, "flags", "list", "--status", "open", "--json")
    assert result.returncode == 0, result.stderr
    api = client.get("/v1/flags?status=open", headers=auth(VIEWER_TOKEN)).json()
    assert json.loads(result.stdout) == api
    assert [flag["user_id"] for flag in api["flags"]] == ["b", "a"]

    text = run_cli(database_settings, "flags", "list", "--user", "a")
    assert text.returncode == 0, text.stderr
    assert " a " in text.stdout
    assert " b " not in text.stdout
    none = run_cli(database_settings, "flags", "list", "--not-firing")
    assert none.stdout.strip() == "no flags match"


@pytest.mark.postgres
def test_flags_review_and_show(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session], client: TestClient
) -> None:
    flag_id = seed_flags(session_factory)[0]
    reviewed = run_cli(database_settings, "flags", "review", str(flag_id), "acknowledged", "--by", "sam", "--note", "looking")
    assert reviewed.returncode == 0, reviewed.stderr
    assert f"flag {flag_id} of user b is now acknowledged (reviewed by sam)" in reviewed.stdout

    shown = run_cli(database_settings, "flags", "show", str(flag_id), "--json")
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail == client.get(f"/v1/flags/{flag_id}", headers=auth(VIEWER_TOKEN)).json()
    assert detail["events"][-1]["actor"] == "sam"
    assert detail["events"][-1]["note"] == "looking"

    text = run_cli(database_settings, "flags", "show", str(flag_id))
    assert "reviewed by sam" in text.stdout
    assert "acknowledged by sam: looking" in text.stdout


@pytest.mark.postgres
def test_flags_review_note_limit_matches_api(
    database_settings: DatabaseSettings, session_factory: sessionmaker[Session]
) -> None:
    flag_id = seed_flags(session_factory)[0]
    too_long = run_cli(
        database_settings, "flags", "review", str(flag_id), "resolved", "--by", "sam", "--note", "x" * (MAX_REVIEW_NOTE_CHARS + 1)
    )
    assert too_long.returncode == 2
    assert f"the maximum is {MAX_REVIEW_NOTE_CHARS}" in too_long.stderr
    with session_factory() as session:
        assert [flag.status for flag in list_flags(session) if flag.id == flag_id] == ["open"]

    longest = run_cli(
        database_settings, "flags", "review", str(flag_id), "resolved", "--by", "sam", "--note", "x" * MAX_REVIEW_NOTE_CHARS
    )
    assert longest.returncode == 0, longest.stderr


@pytest.mark.postgres
def test_flags_commands_reject_bad_input(database_settings: DatabaseSettings) -> None:
    missing = run_cli(database_settings, "flags", "show", "999")
    assert missing.returncode == 1
    assert "flag 999 not found" in missing.stderr
    bad_status = run_cli(database_settings, "flags", "review", "1", "closed", "--by", "sam")
    assert bad_status.returncode == 2
    no_reviewer = run_cli(database_settings, "flags", "review", "1", "resolved")
    assert no_reviewer.returncode == 2
    assert "--by" in no_reviewer.stderr
    unknown = run_cli(database_settings, "flags", "review", "999", "resolved", "--by", "sam")
    assert unknown.returncode == 1
    assert "flag 999 not found" in unknown.stderr
