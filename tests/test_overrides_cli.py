"""The `overrides` commands, run through `monitor.cli.main` against the test database."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.cli import main
from monitor.settings import DatabaseSettings
from storage.engine import transaction
from storage.exchanges import ExchangeRepository
from storage.trusted_users import list_trusted_users
from tests.conftest_db import database_engine, database_settings, session_factory
from tests.storage.factories import SENTINELS, scored_exchange

__all__ = ["database_engine", "database_settings", "session_factory"]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


Runner = Callable[..., Result]


@pytest.fixture
def run(
    database_settings: DatabaseSettings,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Runner]:
    """Run `sentinel-monitor ARGS` in this process against empty tables, restoring the root logger after."""
    for name in list(os.environ):
        if name.startswith("SENTINEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SENTINEL_DATABASE__URL", database_settings.url)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run_command(*args: str) -> Result:
        code = main(["--log-level", "WARNING", *args])
        captured = capsys.readouterr()
        return Result(code=code, stdout=captured.out, stderr=captured.err)

    yield run_command
    root.handlers[:] = handlers
    root.setLevel(level)


def _entries(factory: sessionmaker[Session]) -> list[tuple[str, str, str | None]]:
    with factory() as session:
        records = list_trusted_users(session, include_inactive=True, now=datetime.now(timezone.utc))
    return [(record.user_id, record.approver, record.revoked_by) for record in records]


@pytest.mark.postgres
def test_allow_list_revoke(run: Runner, session_factory: sessionmaker[Session]) -> None:
    allowed = run("overrides", "allow", "red-1", "--reason", "red-team exercise", "--approver", "alice", "--for", "30d")
    assert allowed.code == 0, allowed.stderr
    assert "user 'red-1' trusted until" in allowed.stdout
    assert "approved by alice" in allowed.stdout

    listed = run("overrides", "list", "--json")
    assert listed.code == 0, listed.stderr
    [entry] = json.loads(listed.stdout)["entries"]
    assert entry["user_id"] == "red-1"
    assert entry["state"] == "active"
    assert entry["reason"] == "red-team exercise"
    expires_at = datetime.fromisoformat(entry["expires_at"])
    created_at = datetime.fromisoformat(entry["created_at"])
    assert expires_at - created_at == timedelta(days=30)

    text = run("overrides", "list")
    assert "red-1" in text.stdout
    assert "active" in text.stdout

    revoked = run("overrides", "revoke", "red-1", "--by", "bob")
    assert revoked.code == 0, revoked.stderr
    assert "revoked 1 allowlist entry of user 'red-1'" in revoked.stdout

    active = run("overrides", "list")
    assert "no active allowlist entries" in active.stdout
    every = run("overrides", "list", "--all", "--json")
    assert [item["state"] for item in json.loads(every.stdout)["entries"]] == ["revoked"]
    assert _entries(session_factory) == [("red-1", "alice", "bob")]


@pytest.mark.postgres
def test_allow_until_time(run: Runner, session_factory: sessionmaker[Session]) -> None:
    expiry = (datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0)
    until = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")

    result = run("overrides", "allow", "red-1", "--reason", "audit", "--approver", "alice", "--until", until)

    assert result.code == 0, result.stderr
    listed = json.loads(run("overrides", "list", "--json").stdout)["entries"]
    assert datetime.fromisoformat(listed[0]["expires_at"]) == expiry


@pytest.mark.postgres
def test_allow_again_reports_extension(run: Runner) -> None:
    run("overrides", "allow", "red-1", "--reason", "first", "--approver", "alice", "--for", "1d")

    again = run("overrides", "allow", "red-1", "--reason", "second", "--approver", "carol", "--for", "30d")

    assert again.code == 0, again.stderr
    assert "already had 1 allowlist entry active" in again.stdout
    revoked = run("overrides", "revoke", "red-1", "--by", "bob")
    assert "revoked 2 allowlist entries" in revoked.stdout


@pytest.mark.postgres
def test_revoke_without_entry_fails(run: Runner) -> None:
    result = run("overrides", "revoke", "nobody", "--by", "bob")

    assert result.code == 1
    assert "user 'nobody' has no active allowlist entry" in result.stderr


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reason", " ", "--approver", "alice", "--for", "1d"], "reason is empty"),
        (["--reason", "r", "--approver", "", "--for", "1d"], "approver is empty"),
        (["--reason", "r", "--approver", "alice", "--for", "400d"], "more than 365 days"),
        (["--reason", "r", "--approver", "alice", "--until", "2020-01-01T00:00Z"], "not after the current time"),
    ],
)
def test_allow_rejects_invalid_entry(
    run: Runner, session_factory: sessionmaker[Session], args: list[str], message: str
) -> None:
    result = run("overrides", "allow", "red-1", *args)

    assert result.code == 2
    assert "cannot allow user 'red-1'" in result.stderr
    assert message in result.stderr
    assert _entries(session_factory) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["allow", "u", "--reason", "r", "--approver", "a"], "one of the arguments --for --until is required"),
        (["allow", "u", "--reason", "r", "--approver", "a", "--for", "1d", "--until", "2030-01-01T00:00Z"], "not allowed with"),
        (["allow", "u", "--reason", "r", "--approver", "a", "--for", "soon"], "invalid duration 'soon'"),
        (["allow", "u", "--reason", "r", "--approver", "a", "--until", "2030-01-01"], "has no offset"),
        (["allow", "u", "--reason", "r", "--approver", "a", "--until", "next week"], "invalid time 'next week'"),
        (["allow", "u", "--approver", "a", "--for", "1d"], "--reason"),
        (["revoke", "u"], "--by"),
        (["audit", "--since", "yesterday"], "invalid --since 'yesterday'"),
        (["audit", "--limit", "0"], "invalid number '0'"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["overrides", *args])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.postgres
def test_audit_shows_overrides(run: Runner, session_factory: sessionmaker[Session]) -> None:
    now = datetime.now(timezone.utc)
    items = [
        scored_exchange(exchange_id="override-1", user_id="tester", override=True),
        scored_exchange(exchange_id="override-old", user_id="tester", override=True),
        scored_exchange(exchange_id="plain-1", user_id="red-1"),
    ]
    ages = {"override-1": timedelta(hours=1), "override-old": timedelta(days=10), "plain-1": timedelta(minutes=5)}
    items = [replace(i, exchange=replace(i.exchange, created_at=now - ages[i.exchange.id])) for i in items]
    with transaction(session_factory, "seed") as session:
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, items)
    run("overrides", "allow", "red-1", "--reason", "red-team exercise", "--approver", "alice", "--for", "7d")

    result = run("overrides", "audit", "--json")

    assert result.code == 0, result.stderr
    audit = json.loads(result.stdout)
    assert [item["id"] for item in audit["exchanges"]] == ["override-1"]
    assert audit["exchanges"][0]["slip_through"] is True
    assert [entry["user_id"] for entry in audit["allowlist"]] == ["red-1"]
    # plain-1 was made before red-1 was allowed; the flag job leaves it out because red-1 is trusted now.
    assert {user["user_id"]: user["excluded_slip_throughs"] for user in audit["users"]} == {"tester": 1, "red-1": 1}
    assert "pick a lock" not in result.stdout

    wider = json.loads(run("overrides", "audit", "--since", "30d", "--json").stdout)
    assert [item["id"] for item in wider["exchanges"]] == ["override-1", "override-old"]

    text = run("overrides", "audit", "--since", "30d", "--limit", "1")
    assert text.code == 0, text.stderr
    assert "override exchanges: 2, the newest 1 shown (--limit)" in text.stdout
    assert "override-1" in text.stdout
    assert "im_sorry=0.6*" in text.stdout
    assert "red-1" in text.stdout

    one_user = json.loads(run("overrides", "audit", "--user", "red-1", "--json").stdout)
    assert one_user["exchanges"] == []
    assert [user["allowlisted_slip_throughs"] for user in one_user["users"]] == [1]

    empty = run("overrides", "audit", "--since", "2030-01-01T00:00Z", "--until", "2029-01-01T00:00Z")
    assert empty.code == 2
    assert "audit period is empty" in empty.stderr
