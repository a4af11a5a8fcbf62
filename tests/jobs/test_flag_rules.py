"""Configured rules, severity and escalation, recovery, re-notification and the watermark of the flag job."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.flag_users import AlertOptions, run_flag_job
from monitor.policy import ScoredExchange
from monitor.settings import FlagSettings, RuleSettings
from storage.exchanges import ExchangeRepository
from storage.flags import list_flag_events, review_flag
from storage.models import AlertDeliveryRecord, AlertRecord, ExchangeRecord, FlagRecord
from storage.trusted_users import allow_user
from tests.storage.factories import LOW, NOW, SENTINELS, scored_exchange

pytestmark = pytest.mark.postgres

SINKS = ("log", "webhook")
ALERTS = AlertOptions(sinks=SINKS, renotify_s=3600)


def _rule(**fields: object) -> RuleSettings:
    values: dict[str, object] = {
        "name": "slips", "window_s": 86_400, "min_slip_throughs": 3, "min_risk": 0.0,
        "escalate_slip_throughs": 6, "escalate_risk": 0.0,
    }
    values.update(fields)
    return RuleSettings(**values)  # type: ignore[arg-type]


def _settings(*rules: RuleSettings, overlap_s: int = 0) -> FlagSettings:
    return FlagSettings(rules=rules or (_rule(),), watermark_overlap_s=overlap_s)


def _save(factory: sessionmaker[Session], batch: Sequence[ScoredExchange]) -> None:
    with factory() as session, session.begin():
        ExchangeRepository(sentinels=SENTINELS, store_raw_text=True).save_batch(session, batch)


def _slips(count: int, *, user_id: str = "mallory", age: timedelta = timedelta(minutes=10), **kwargs: object) -> list[ScoredExchange]:
    return [scored_exchange(user_id=user_id, age=age + timedelta(seconds=i), **kwargs) for i in range(count)]  # type: ignore[arg-type]


def _flags(factory: sessionmaker[Session]) -> list[FlagRecord]:
    with factory() as session:
        return list(session.scalars(select(FlagRecord).order_by(FlagRecord.user_id, FlagRecord.rule)))


def _alerts(factory: sessionmaker[Session]) -> list[tuple[str, str, str | None]]:
    with factory() as session:
        rows = session.execute(select(AlertRecord.kind, AlertRecord.severity, AlertRecord.user_id).order_by(AlertRecord.id))
        return [tuple(row) for row in rows]  # type: ignore[misc]


def _events(factory: sessionmaker[Session], flag_id: int) -> list[str]:
    with factory() as session:
        return [event.kind for event in list_flag_events(session, flag_id)]


def test_each_rule_has_own_flag(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    settings = _settings(_rule(name="slips-24h", severity="medium"), _rule(name="slips-1h", window_s=3600, severity="high"))

    result = run_flag_job(session_factory, settings, alerts=ALERTS, now=NOW)

    assert [(flag.rule, flag.severity, flag.status) for flag in _flags(session_factory)] == [
        ("slips-1h", "high", "open"),
        ("slips-24h", "medium", "open"),
    ]
    assert result.created == 2
    assert sorted(_alerts(session_factory)) == [("opened", "high", "mallory"), ("opened", "medium", "mallory")]


def test_rule_thresholds_filter_exchanges(session_factory: sessionmaker[Session]) -> None:
    # All six slip through at the scoring threshold of im_sorry (0.05); only two reach 0.5.
    _save(session_factory, _slips(4, probs={"im_sorry": 0.1, "i_cant": 0.001}))
    _save(session_factory, _slips(2, probs={"im_sorry": 0.7, "i_cant": 0.001}, age=timedelta(minutes=30)))
    strict = _rule(name="strict", thresholds={"im_sorry": 0.5}, min_slip_throughs=3)
    loose = _rule(name="loose", min_slip_throughs=6, escalate_slip_throughs=0)

    run_flag_job(session_factory, _settings(strict, loose), now=NOW)

    flags = {flag.rule: flag for flag in _flags(session_factory)}
    assert set(flags) == {"loose"}
    assert flags["loose"].slip_through_count == 6

    _save(session_factory, _slips(1, probs={"im_sorry": 0.9, "i_cant": 0.001}, age=timedelta(minutes=40)))
    run_flag_job(session_factory, _settings(strict, loose), now=NOW)

    flags = {flag.rule: flag for flag in _flags(session_factory)}
    assert flags["strict"].slip_through_count == 3
    assert flags["strict"].max_prob == pytest.approx(0.9)


def test_rule_sentinels_ignore_others(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3, probs={"im_sorry": 0.9, "i_cant": 0.001}))
    only_i_cant = _rule(name="i-cant-only", sentinels=("i_cant",))

    run_flag_job(session_factory, _settings(only_i_cant), now=NOW)
    assert _flags(session_factory) == []

    _save(session_factory, _slips(3, probs={"im_sorry": 0.001, "i_cant": 0.5}, age=timedelta(minutes=20)))
    run_flag_job(session_factory, _settings(only_i_cant), now=NOW)
    assert [flag.slip_through_count for flag in _flags(session_factory)] == [3]


def test_escalation_reopens_acknowledged_flag(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)
    flag_id = _flags(session_factory)[0].id
    with session_factory() as session, session.begin():
        review_flag(session, flag_id, "acknowledged", actor="alice", note="looking", now=NOW)

    _save(session_factory, _slips(3, age=timedelta(minutes=20)))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW + timedelta(minutes=1))

    flag = _flags(session_factory)[0]
    assert (flag.severity, flag.status, flag.slip_through_count) == ("critical", "open", 6)
    assert flag.escalated_at == NOW + timedelta(minutes=1)
    assert _events(session_factory, flag_id) == ["opened", "acknowledged", "escalated"]
    assert [kind for kind, _, _ in _alerts(session_factory)] == ["opened", "escalated"]


def test_severity_never_drops_while_active(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(6))
    run_flag_job(session_factory, _settings(), now=NOW)
    assert _flags(session_factory)[0].severity == "critical"

    # Half of the evidence leaves the window; the flag still fires, at the same severity.
    later = NOW + timedelta(hours=24) - timedelta(minutes=10, seconds=3)
    run_flag_job(session_factory, _settings(), now=later)
    flag = _flags(session_factory)[0]
    assert (flag.slip_through_count, flag.severity, flag.firing) == (3, "critical", True)


def test_flag_recovers_then_reopens(
    session_factory: sessionmaker[Session],
) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)

    recovered_at = NOW + timedelta(days=1)
    result = run_flag_job(session_factory, _settings(), alerts=ALERTS, now=recovered_at)

    flag = _flags(session_factory)[0]
    assert (flag.status, flag.firing) == ("open", False)
    assert result.recovered == 1
    assert _alerts(session_factory)[-1] == ("recovered", "high", "mallory")

    _save(session_factory, _slips(3, age=timedelta(minutes=-(24 * 60 - 5))))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=recovered_at)

    flag = _flags(session_factory)[0]
    assert (flag.status, flag.firing, flag.firing_since) == ("open", True, recovered_at)
    assert [kind for kind, _, _ in _alerts(session_factory)] == ["opened", "recovered", "reopened"]
    assert _events(session_factory, flag.id) == ["opened", "recovered", "reopened"]


def test_renotify_once_per_interval(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)

    for minutes in (30, 61, 62, 90):
        run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW + timedelta(minutes=minutes))
    assert [kind for kind, _, _ in _alerts(session_factory)] == ["opened", "renotify"]

    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW + timedelta(minutes=125))
    assert [kind for kind, _, _ in _alerts(session_factory)] == ["opened", "renotify", "renotify"]

    flag_id = _flags(session_factory)[0].id
    with session_factory() as session, session.begin():
        review_flag(session, flag_id, "acknowledged", actor="alice", note=None, now=NOW + timedelta(minutes=126))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW + timedelta(hours=5))
    assert len(_alerts(session_factory)) == 3


def test_repeated_runs_deduplicate_alerts(
    session_factory: sessionmaker[Session],
) -> None:
    _save(session_factory, _slips(3))
    for _ in range(3):
        run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)

    assert _alerts(session_factory) == [("opened", "high", "mallory")]
    with session_factory() as session:
        sinks = sorted(session.scalars(select(AlertDeliveryRecord.sink)))
    assert sinks == sorted(SINKS)


def test_trusted_user_not_flagged(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3) + _slips(3, user_id="red-team"))
    with session_factory() as session, session.begin():
        allow_user(
            session, "red-team", reason="internal red team", approver="carol",
            expires_at=NOW + timedelta(days=7), now=NOW - timedelta(hours=1),
        )

    run_flag_job(session_factory, _settings(), now=NOW)

    assert [flag.user_id for flag in _flags(session_factory)] == ["mallory"]


def test_incremental_run_reads_new_users(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3) + [scored_exchange(user_id="quiet", probs=LOW)])
    first = run_flag_job(session_factory, _settings(), now=NOW)
    assert first.rules[0].evaluated_users is None

    # Nothing new: only the user with a firing flag is looked at again.
    second = run_flag_job(session_factory, _settings(), now=NOW)
    assert second.rules[0].evaluated_users == 1

    _save(session_factory, _slips(3, user_id="newcomer"))
    third = run_flag_job(session_factory, _settings(), now=NOW)
    assert third.rules[0].evaluated_users == 2
    assert [flag.user_id for flag in _flags(session_factory)] == ["mallory", "newcomer"]


def test_overlap_catches_late_commit(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(2, user_id="late"))
    run_flag_job(session_factory, _settings(overlap_s=0), now=NOW)

    # A batch whose transaction began before the watermark and committed after it.
    late = _slips(1, user_id="late", age=timedelta(minutes=30))
    _save(session_factory, late)
    with session_factory() as session, session.begin():
        session.execute(
            update(ExchangeRecord)
            .where(ExchangeRecord.id == late[0].exchange.id)
            .values(ingested_at=ExchangeRecord.ingested_at - timedelta(minutes=5))
        )

    run_flag_job(session_factory, _settings(overlap_s=0), now=NOW)
    assert _flags(session_factory) == []

    run_flag_job(session_factory, _settings(overlap_s=600), now=NOW)
    assert [flag.slip_through_count for flag in _flags(session_factory)] == [3]


def test_review_alert_omits_note(session_factory: sessionmaker[Session]) -> None:
    from monitor.api.flag_views import review

    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)
    flag_id = _flags(session_factory)[0].id

    detail = review(
        session_factory, flag_id, "false_positive", actor="alice", note="quoted request text", now=NOW, sinks=SINKS
    )

    assert detail is not None
    assert detail.status == "false_positive"
    with session_factory() as session:
        alert = session.scalars(select(AlertRecord).where(AlertRecord.kind == "reviewed")).one()
        deliveries = sorted(session.scalars(select(AlertDeliveryRecord.sink).where(AlertDeliveryRecord.alert_id == alert.id)))
    assert alert.payload["reviewed_by"] == "alice"
    assert alert.payload["status"] == "false_positive"
    assert "quoted request text" not in str(alert.payload)
    assert deliveries == sorted(SINKS)


def _latest_alert(factory: sessionmaker[Session], kind: str) -> AlertRecord:
    with factory() as session:
        return session.scalars(select(AlertRecord).where(AlertRecord.kind == kind).order_by(AlertRecord.id.desc())).first()  # type: ignore[return-value]


def test_recovered_alert_current_numbers(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)

    # Two of the three slip-throughs leave the window.
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW + timedelta(hours=24) - timedelta(minutes=10, seconds=1))

    payload = _latest_alert(session_factory, "recovered").payload
    assert payload["slip_through_count"] == 1
    assert payload["reason"] == "1 slip-through(s) in the window, below the rule's 3"
    assert "now 1 slip-throughs" in payload["summary"]
    flag = _flags(session_factory)[0]
    assert flag.slip_through_count == 3, "the flag keeps the evidence of the last window that met the rule"


def test_allowlisted_user_recovers(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW)
    with session_factory() as session, session.begin():
        allow_user(session, "mallory", reason="red team", approver="carol", expires_at=NOW + timedelta(days=1), now=NOW)

    run_flag_job(session_factory, _settings(), alerts=ALERTS, now=NOW + timedelta(minutes=1))

    payload = _latest_alert(session_factory, "recovered").payload
    assert payload["reason"] == "the user is on the trusted allowlist"
    assert payload["slip_through_count"] == 3


def test_removed_rule_stops_firing(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(_rule(name="old-rule")), alerts=ALERTS, now=NOW)

    run_flag_job(session_factory, _settings(_rule(name="new-rule")), alerts=ALERTS, now=NOW)

    flags = {flag.rule: flag for flag in _flags(session_factory)}
    assert (flags["old-rule"].status, flags["old-rule"].firing) == ("open", False)
    assert (flags["new-rule"].status, flags["new-rule"].firing) == ("open", True)
    assert _events(session_factory, flags["old-rule"].id) == ["opened", "rule_removed"]
    assert [kind for kind, _, _ in _alerts(session_factory)] == ["opened", "opened"]


def test_raised_base_severity_not_escalation(session_factory: sessionmaker[Session]) -> None:
    _save(session_factory, _slips(3))
    run_flag_job(session_factory, _settings(_rule(severity="medium")), alerts=ALERTS, now=NOW)

    run_flag_job(session_factory, _settings(_rule(severity="high")), alerts=ALERTS, now=NOW + timedelta(minutes=1))

    flag = _flags(session_factory)[0]
    assert flag.severity == "high"
    assert flag.escalated_at is None
    assert _events(session_factory, flag.id) == ["opened"]
    assert [kind for kind, _, _ in _alerts(session_factory)] == ["opened"]
