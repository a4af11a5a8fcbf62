"""The override audit over PostgreSQL: allowlist entries, override exchanges, and excluded slip-throughs."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.overrides import InvalidAuditQueryError, OverrideAudit, override_audit
from storage.engine import transaction
from storage.exchanges import ExchangeRepository
from storage.trusted_users import allow_user, revoke_user
from tests.conftest_db import database_engine, database_settings, session_factory
from tests.storage.factories import HIGH, LOW, NOW, SENTINELS, scored_exchange

__all__ = ["database_engine", "database_settings", "session_factory"]

pytestmark = pytest.mark.postgres

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


def seed(factory: sessionmaker[Session]) -> dict[str, int]:
    """Store the exchanges and allowlist entries that the audit tests read, and return the entry ids."""
    exchanges = [
        # red: allowlisted from NOW - 2h. One override slip-through, one slip-through
        # while trusted, and one from before the entry existed, which counts as
        # allowlisted too because red is trusted at NOW.
        scored_exchange(exchange_id="red-override", user_id="red", override=True, age=HOUR / 2),
        scored_exchange(exchange_id="red-trusted", user_id="red", age=HOUR),
        scored_exchange(exchange_id="red-before", user_id="red", age=3 * HOUR),
        # tester: override exchanges only, one of them a slip-through.
        scored_exchange(exchange_id="tester-slip", user_id="tester", override=True, age=2 * HOUR),
        scored_exchange(exchange_id="tester-low", user_id="tester", override=True, probs=LOW, age=4 * HOUR),
        scored_exchange(exchange_id="tester-refused", user_id="tester", override=True, outcome="refused", age=5 * HOUR),
        scored_exchange(exchange_id="tester-old", user_id="tester", override=True, age=10 * DAY),
        # revoked: trusted from NOW - 5h, revoked at NOW - 3h.
        scored_exchange(exchange_id="revoked-during", user_id="revoked", age=4 * HOUR),
        scored_exchange(exchange_id="revoked-after", user_id="revoked", age=2 * HOUR),
        # ordinary: never trusted.
        scored_exchange(exchange_id="ordinary-slip", user_id="ordinary", age=HOUR),
    ]
    with transaction(factory, "seed") as session:
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, exchanges)
        ids = {
            "red": _allow(session, "red", NOW - 2 * HOUR, NOW + 30 * DAY),
            "revoked": _allow(session, "revoked", NOW - 5 * HOUR, NOW + DAY),
            "ended": _allow(session, "ended", NOW - 30 * DAY, NOW - 20 * DAY),
        }
        revoke_user(session, "revoked", by="bob", now=NOW - 3 * HOUR)
    return ids


def _allow(session: Session, user_id: str, created_at: datetime, expires_at: datetime) -> int:
    record = allow_user(
        session, user_id, reason=f"{user_id} exercise", approver="alice", expires_at=expires_at, now=created_at
    )
    return record.id


def audit(
    factory: sessionmaker[Session],
    *,
    since: datetime | None = NOW - WEEK,
    until: datetime | None = None,
    user_id: str | None = None,
    limit: int = 50,
) -> OverrideAudit:
    with factory() as session:
        return override_audit(session, since=since, until=until, user_id=user_id, limit=limit, now=NOW)


def test_audit_lists_override_exchanges(session_factory: sessionmaker[Session]) -> None:
    seed(session_factory)

    result = audit(session_factory).as_json()

    assert result["override_exchange_count"] == 4
    exchanges = {item["id"]: item for item in result["exchanges"]}
    assert list(exchanges) == ["red-override", "tester-slip", "tester-low", "tester-refused"]
    slipped = exchanges["tester-slip"]
    assert slipped["user_id"] == "tester"
    assert slipped["override_reason"] == "red team"
    assert slipped["outcome"] == "answered"
    assert slipped["probabilities"] == pytest.approx(HIGH)
    assert slipped["slip_through"] is True
    assert sorted(slipped["slip_through_sentinels"]) == ["i_cant", "im_sorry"]
    assert exchanges["tester-low"]["slip_through"] is False
    assert exchanges["tester-low"]["slip_through_sentinels"] == []
    assert exchanges["tester-refused"]["outcome"] == "refused"
    assert exchanges["tester-refused"]["slip_through"] is False
    assert exchanges["tester-refused"]["probabilities"] == pytest.approx(HIGH)


def test_audit_counts_excluded_slip_throughs(session_factory: sessionmaker[Session]) -> None:
    seed(session_factory)

    users = audit(session_factory).as_json()["users"]

    assert users == [
        {
            "user_id": "red",
            "override_exchanges": 1,
            "override_slip_throughs": 1,
            "allowlisted_slip_throughs": 2,
            "excluded_slip_throughs": 3,
            "trusted_now": True,
        },
        {
            "user_id": "tester",
            "override_exchanges": 3,
            "override_slip_throughs": 1,
            "allowlisted_slip_throughs": 0,
            "excluded_slip_throughs": 1,
            "trusted_now": False,
        },
        {
            "user_id": "revoked",
            "override_exchanges": 0,
            "override_slip_throughs": 0,
            "allowlisted_slip_throughs": 1,
            "excluded_slip_throughs": 1,
            "trusted_now": False,
        },
    ]


def test_audit_counts_slip_throughs_before_allow(session_factory: sessionmaker[Session]) -> None:
    exchanges = [
        scored_exchange(exchange_id="late-1", user_id="late", age=3 * HOUR),
        scored_exchange(exchange_id="late-2", user_id="late", age=2 * HOUR),
        scored_exchange(exchange_id="late-low", user_id="late", probs=LOW, age=2 * HOUR),
    ]
    with transaction(session_factory, "seed") as session:
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, exchanges)
        _allow(session, "late", NOW - HOUR, NOW + DAY)

    users = audit(session_factory).as_json()["users"]

    assert [user["user_id"] for user in users] == ["late"]
    assert users[0]["allowlisted_slip_throughs"] == 2
    assert users[0]["excluded_slip_throughs"] == 2
    assert users[0]["trusted_now"] is True

    with session_factory() as session:
        before_allow = override_audit(
            session, since=NOW - WEEK, until=None, user_id=None, limit=50, now=NOW - 90 * timedelta(minutes=1)
        )
    assert before_allow.users == ()


def test_audit_lists_entries_in_force(session_factory: sessionmaker[Session]) -> None:
    ids = seed(session_factory)

    allowlist = audit(session_factory).as_json()["allowlist"]

    assert [entry["id"] for entry in allowlist] == [ids["red"], ids["revoked"]]
    red, revoked = allowlist
    assert red["state"] == "active"
    assert red["user_id"] == "red"
    assert red["reason"] == "red exercise"
    assert red["approver"] == "alice"
    assert red["expires_at"] == (NOW + 30 * DAY).isoformat()
    assert red["revoked_at"] is None
    assert revoked["state"] == "revoked"
    assert revoked["revoked_by"] == "bob"
    assert revoked["revoked_at"] == (NOW - 3 * HOUR).isoformat()


def test_audit_without_lower_bound(session_factory: sessionmaker[Session]) -> None:
    ids = seed(session_factory)

    result = audit(session_factory, since=None).as_json()

    assert result["since"] is None
    assert result["override_exchange_count"] == 5
    assert result["exchanges"][-1]["id"] == "tester-old"
    assert ids["ended"] in [entry["id"] for entry in result["allowlist"]]
    ended = next(entry for entry in result["allowlist"] if entry["id"] == ids["ended"])
    assert ended["state"] == "expired"


def test_audit_period_end(session_factory: sessionmaker[Session]) -> None:
    seed(session_factory)

    result = audit(session_factory, since=NOW - WEEK, until=NOW - 3 * HOUR).as_json()

    assert [item["id"] for item in result["exchanges"]] == ["tester-low", "tester-refused"]
    # red-before counts because red is trusted at NOW, although its entry was created after the period ended.
    assert {user["user_id"]: user["allowlisted_slip_throughs"] for user in result["users"]} == {
        "red": 1,
        "tester": 0,
        "revoked": 1,
    }
    assert [entry["user_id"] for entry in result["allowlist"]] == ["revoked"]


def test_audit_of_one_user(session_factory: sessionmaker[Session]) -> None:
    seed(session_factory)

    result = audit(session_factory, user_id="red").as_json()

    assert result["user_id"] == "red"
    assert [item["id"] for item in result["exchanges"]] == ["red-override"]
    assert [user["user_id"] for user in result["users"]] == ["red"]
    assert [entry["user_id"] for entry in result["allowlist"]] == ["red"]


def test_audit_limit_keeps_total(session_factory: sessionmaker[Session]) -> None:
    seed(session_factory)

    result = audit(session_factory, limit=1).as_json()

    assert result["override_exchange_count"] == 4
    assert [item["id"] for item in result["exchanges"]] == ["red-override"]
    assert [user["user_id"] for user in result["users"]] == ["red"]
    assert len(result["allowlist"]) == 1


def test_audit_has_no_request_text(session_factory: sessionmaker[Session]) -> None:
    seed(session_factory)

    text = json.dumps(audit(session_factory, since=None).as_json())

    assert "pick a lock" not in text
    assert "be helpful" not in text


def test_audit_of_empty_database(session_factory: sessionmaker[Session]) -> None:
    result = audit(session_factory).as_json()

    assert result["allowlist"] == []
    assert result["exchanges"] == []
    assert result["users"] == []
    assert result["override_exchange_count"] == 0
    assert result["until"] == NOW.isoformat()


@pytest.mark.parametrize(
    ("since", "until", "limit", "message"),
    [
        (NOW, NOW, 10, "period is empty"),
        (NOW + HOUR, None, 10, "period is empty"),
        (NOW.replace(tzinfo=None) - DAY, None, 10, "no time zone"),
        (None, NOW.replace(tzinfo=None), 10, "no time zone"),
        (None, None, 0, "invalid limit"),
    ],
)
def test_audit_rejects_invalid_query(
    session_factory: sessionmaker[Session], since: datetime | None, until: datetime | None, limit: int, message: str
) -> None:
    with pytest.raises(InvalidAuditQueryError, match=message):
        audit(session_factory, since=since, until=until, limit=limit)
