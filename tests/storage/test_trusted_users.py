from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import StorageError, translate_errors
from storage.models import TrustedUserRecord
from storage.trusted_users import (
    MAX_REASON_CHARS,
    MAX_TRUST_PERIOD,
    AllowlistError,
    active_trusted_user_ids,
    allow_user,
    entry_state,
    list_trusted_users,
    revoke_user,
)
from tests.storage.factories import NOW

pytestmark = pytest.mark.postgres

DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)


def _allow(
    factory: sessionmaker[Session],
    user_id: str = "red-team-1",
    *,
    now: datetime = NOW,
    expires_at: datetime | None = None,
    reason: str = "red-team exercise",
    approver: str = "alice",
) -> TrustedUserRecord:
    with factory() as session, session.begin():
        return allow_user(
            session, user_id, reason=reason, approver=approver, expires_at=expires_at or now + 30 * DAY, now=now
        )


def _active(factory: sessionmaker[Session], user_ids: list[str] | None, now: datetime) -> set[str]:
    with factory() as session:
        return active_trusted_user_ids(session, user_ids, now=now)


def _revoke(factory: sessionmaker[Session], user_id: str, now: datetime, by: str = "bob") -> int:
    with factory() as session, session.begin():
        return revoke_user(session, user_id, by=by, now=now)


def _entries(factory: sessionmaker[Session], now: datetime, *, include_inactive: bool = True) -> list[TrustedUserRecord]:
    with factory() as session:
        return list_trusted_users(session, include_inactive=include_inactive, now=now)


def test_allow_stores_entry(session_factory: sessionmaker[Session]) -> None:
    record = _allow(session_factory, reason="  red-team exercise  ", approver=" alice ")

    entries = _entries(session_factory, NOW)
    assert [entry.id for entry in entries] == [record.id]
    entry = entries[0]
    assert entry.user_id == "red-team-1"
    assert entry.reason == "red-team exercise"
    assert entry.approver == "alice"
    assert entry.created_at == NOW
    assert entry.expires_at == NOW + 30 * DAY
    assert entry.revoked_at is None
    assert entry.revoked_by is None


def test_expiry_boundaries(session_factory: sessionmaker[Session]) -> None:
    expires_at = NOW + DAY
    _allow(session_factory, expires_at=expires_at)

    assert _active(session_factory, None, NOW - TICK) == set()
    assert _active(session_factory, None, NOW) == {"red-team-1"}
    assert _active(session_factory, None, expires_at - TICK) == {"red-team-1"}
    assert _active(session_factory, None, expires_at) == set()
    [entry] = _entries(session_factory, expires_at)
    assert entry_state(entry, now=expires_at - TICK) == "active"
    assert entry_state(entry, now=expires_at) == "expired"


def test_active_ids_filter_users(session_factory: sessionmaker[Session]) -> None:
    _allow(session_factory, "alpha")
    _allow(session_factory, "beta")
    _allow(session_factory, "gamma", expires_at=NOW + DAY)

    later = NOW + 2 * DAY
    assert _active(session_factory, None, later) == {"alpha", "beta"}
    assert _active(session_factory, ["alpha", "gamma", "nobody"], later) == {"alpha"}
    assert _active(session_factory, ["gamma"], NOW) == {"gamma"}
    assert _active(session_factory, [], later) == set()


def test_revoke_ends_active_entries(session_factory: sessionmaker[Session]) -> None:
    expired = _allow(session_factory, now=NOW - 10 * DAY, expires_at=NOW - DAY)
    active = _allow(session_factory)
    revoked_at = NOW + DAY

    assert _revoke(session_factory, "red-team-1", revoked_at) == 1

    assert _active(session_factory, None, revoked_at) == set()
    assert _active(session_factory, None, revoked_at - TICK) == {"red-team-1"}
    by_id = {entry.id: entry for entry in _entries(session_factory, revoked_at)}
    assert by_id[active.id].revoked_at == revoked_at
    assert by_id[active.id].revoked_by == "bob"
    assert entry_state(by_id[active.id], now=revoked_at) == "revoked"
    assert by_id[expired.id].revoked_at is None
    assert entry_state(by_id[expired.id], now=revoked_at) == "expired"


def test_revoke_without_active_entry(session_factory: sessionmaker[Session]) -> None:
    _allow(session_factory, now=NOW - 10 * DAY, expires_at=NOW - DAY)

    assert _revoke(session_factory, "red-team-1", NOW) == 0
    assert _revoke(session_factory, "nobody", NOW) == 0


def test_revoke_twice_revokes_once(session_factory: sessionmaker[Session]) -> None:
    _allow(session_factory)

    assert _revoke(session_factory, "red-team-1", NOW + DAY, by="bob") == 1
    assert _revoke(session_factory, "red-team-1", NOW + 2 * DAY, by="carol") == 0

    [entry] = _entries(session_factory, NOW + 2 * DAY)
    assert entry.revoked_by == "bob"
    assert entry.revoked_at == NOW + DAY


def test_allow_after_revoke(session_factory: sessionmaker[Session]) -> None:
    first = _allow(session_factory)
    _revoke(session_factory, "red-team-1", NOW + DAY)

    second = _allow(session_factory, now=NOW + 2 * DAY, reason="second exercise")

    later = NOW + 3 * DAY
    assert _active(session_factory, None, later) == {"red-team-1"}
    states = {entry.id: entry_state(entry, now=later) for entry in _entries(session_factory, later)}
    assert states == {first.id: "revoked", second.id: "active"}


def test_allow_again_extends_trust(session_factory: sessionmaker[Session]) -> None:
    _allow(session_factory, expires_at=NOW + DAY)
    _allow(session_factory, now=NOW + DAY / 2, expires_at=NOW + 10 * DAY)

    assert _active(session_factory, None, NOW + DAY) == {"red-team-1"}
    assert _active(session_factory, None, NOW + 10 * DAY - TICK) == {"red-team-1"}
    assert _active(session_factory, None, NOW + 10 * DAY) == set()
    assert _revoke(session_factory, "red-team-1", NOW + DAY / 2) == 2


def test_list_active_and_all(session_factory: sessionmaker[Session]) -> None:
    old = _allow(session_factory, "old", now=NOW - 10 * DAY, expires_at=NOW - DAY)
    revoked = _allow(session_factory, "revoked", now=NOW - 2 * DAY)
    _revoke(session_factory, "revoked", NOW - DAY)
    current = _allow(session_factory, "current", now=NOW - DAY / 2)
    _allow(session_factory, "future", now=NOW + DAY)

    assert [entry.id for entry in _entries(session_factory, NOW, include_inactive=False)] == [current.id]
    assert [entry.id for entry in _entries(session_factory, NOW)] == [current.id, revoked.id, old.id]
    with session_factory() as session:
        only_old = list_trusted_users(session, include_inactive=True, now=NOW, user_id="old")
    assert [entry.id for entry in only_old] == [old.id]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("user_id", "", "user id is empty"),
        ("user_id", "   ", "user id is empty"),
        ("reason", "", "reason is empty"),
        ("reason", " \n\t", "reason is empty"),
        ("approver", "", "approver is empty"),
        ("reason", "x" * (MAX_REASON_CHARS + 1), "over the maximum"),
        ("approver", "al\x00ice", "NUL character"),
    ],
)
def test_allow_rejects_invalid_text(
    session_factory: sessionmaker[Session], field: str, value: str, message: str
) -> None:
    arguments = {"user_id": "red-team-1", "reason": "red-team exercise", "approver": "alice"}
    arguments[field] = value

    with session_factory() as session, pytest.raises(AllowlistError, match=message):
        allow_user(
            session,
            arguments["user_id"],
            reason=arguments["reason"],
            approver=arguments["approver"],
            expires_at=NOW + DAY,
            now=NOW,
        )

    assert _entries(session_factory, NOW) == []


@pytest.mark.parametrize(
    ("expires_at", "message"),
    [
        (NOW, "not after the current time"),
        (NOW - DAY, "not after the current time"),
        (NOW + MAX_TRUST_PERIOD + TICK, "more than 365 days"),
        (NOW.replace(tzinfo=None) + DAY, "no time zone"),
    ],
)
def test_allow_rejects_invalid_expiry(
    session_factory: sessionmaker[Session], expires_at: datetime, message: str
) -> None:
    with session_factory() as session, pytest.raises(AllowlistError, match=message):
        allow_user(session, "red-team-1", reason="red-team exercise", approver="alice", expires_at=expires_at, now=NOW)


def test_allow_accepts_longest_period(session_factory: sessionmaker[Session]) -> None:
    record = _allow(session_factory, expires_at=NOW + MAX_TRUST_PERIOD)

    assert record.expires_at == NOW + MAX_TRUST_PERIOD


def test_revoke_rejects_blank_name(session_factory: sessionmaker[Session]) -> None:
    _allow(session_factory)

    with session_factory() as session, pytest.raises(AllowlistError, match="revoker is empty"):
        revoke_user(session, "red-team-1", by="  ", now=NOW)

    assert _active(session_factory, None, NOW) == {"red-team-1"}


def test_schema_rejects_expiry_before_creation(session_factory: sessionmaker[Session]) -> None:
    row = {"user_id": "u", "reason": "r", "approver": "a", "created_at": NOW, "expires_at": NOW}

    with session_factory() as session, pytest.raises(StorageError, match="expiry_after_creation"):
        with translate_errors("insert an invalid entry", session):
            session.execute(insert(TrustedUserRecord).values(**row))
