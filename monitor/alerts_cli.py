"""The `sentinel-monitor alerts` commands: list alerts and sink health, enable a sink, send a test alert, dispatch now."""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from monitor.errors import ConfigError
from monitor.settings import Settings
from monitor.text_table import render_table

EXIT_OK = 0
EXIT_FAILURE = 1
SEVERITY_CHOICES = ("low", "medium", "high", "critical")

T = TypeVar("T")


def add_alerts_command(commands: Any) -> None:
    """Add the `alerts` command and its actions to the `sentinel-monitor` subcommands."""
    # Imported here because monitor.cli imports this module at its top.
    from monitor.cli import positive_int

    alerts = commands.add_parser("alerts", help="alerts and their delivery to the sinks").add_subparsers(
        dest="action", required=True
    )
    listing = alerts.add_parser("list", help="the newest alerts with their delivery status per sink")
    listing.add_argument("--limit", type=positive_int, default=20, help="alerts to list (default 20)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)

    sinks = alerts.add_parser("sinks", help="each sink's health: enabled, consecutive failures, pending deliveries")
    sinks.add_argument("--json", action="store_true", help="print JSON")
    sinks.set_defaults(handler=_sinks)

    enable = alerts.add_parser("enable", help="enable a disabled sink; its pending deliveries become due now")
    enable.add_argument("sink", metavar="SINK", help="sink name: log, kafka or webhook")
    enable.set_defaults(handler=_enable)

    test = alerts.add_parser("test", help="store a test alert for every configured sink")
    test.add_argument("--severity", choices=SEVERITY_CHOICES, default="low", help="severity of the test alert")
    test.add_argument("--dispatch", action="store_true", help="deliver due alerts right away, as `alerts dispatch`")
    test.set_defaults(handler=_test)

    dispatch = alerts.add_parser("dispatch", help="deliver the due alerts once now; exit 1 if a delivery failed")
    dispatch.add_argument("--json", action="store_true", help="print JSON")
    dispatch.set_defaults(handler=_dispatch)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from storage.alerts import list_alerts

    alerts = _with_session(settings, lambda session: list_alerts(session, limit=args.limit))
    rows = [
        {
            "id": item.alert.id,
            "created_at": item.alert.created_at.isoformat(),
            "kind": item.alert.kind,
            "severity": item.alert.severity,
            "flag_id": item.alert.flag_id,
            "user_id": item.alert.user_id,
            "rule": item.alert.rule,
            "dedup_key": item.alert.dedup_key,
            "summary": item.alert.payload.get("summary", ""),
            "deliveries": [
                {
                    "sink": d.sink,
                    "status": d.status,
                    "attempts": d.attempts,
                    "next_attempt_at": d.next_attempt_at.isoformat(),
                    "last_error": d.last_error,
                    "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
                }
                for d in item.deliveries
            ],
        }
        for item in alerts
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no alerts stored")
        return EXIT_OK
    table = [["id", "created", "kind", "severity", "user", "deliveries", "summary"]]
    for row in rows:
        table.append([
            str(row["id"]), _short_time(row["created_at"]), row["kind"], row["severity"], row["user_id"] or "-",
            " ".join(_delivery_text(d) for d in row["deliveries"]) or "-", row["summary"],
        ])  # fmt: skip
    print(render_table(table))
    return EXIT_OK


def _sinks(args: argparse.Namespace, settings: Settings) -> int:
    from storage.alerts import list_sink_health

    configured = settings.alerts.sink_names()
    health = _with_session(settings, list_sink_health)
    rows: list[dict[str, Any]] = []
    for item in health:
        state = item.state
        rows.append({
            "sink": item.name,
            "configured": item.name in configured,
            "enabled": state.enabled if state else True,
            "consecutive_failures": state.consecutive_failures if state else 0,
            "disabled_at": state.disabled_at.isoformat() if state and state.disabled_at else None,
            "last_error": state.last_error if state else None,
            "pending": item.pending,
            "oldest_pending_at": item.oldest_pending_at.isoformat() if item.oldest_pending_at else None,
        })  # fmt: skip
    for name in configured:
        if not any(row["sink"] == name for row in rows):
            rows.append({
                "sink": name, "configured": True, "enabled": True, "consecutive_failures": 0, "disabled_at": None,
                "last_error": None, "pending": 0, "oldest_pending_at": None,
            })  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = [["sink", "configured", "state", "failures", "pending", "oldest pending", "last error"]]
    for row in rows:
        state_text = "enabled" if row["enabled"] else f"DISABLED since {_short_time(row['disabled_at'])}"
        table.append([
            row["sink"], "yes" if row["configured"] else "no", state_text, str(row["consecutive_failures"]),
            str(row["pending"]), _short_time(row["oldest_pending_at"]) if row["oldest_pending_at"] else "-",
            row["last_error"] or "-",
        ])  # fmt: skip
    print(render_table(table))
    return EXIT_OK


def _enable(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.alerts.errors import SinkNotFoundError
    from storage.alerts import enable_sink, read_sinks

    now = datetime.now(timezone.utc)
    enabled, known = _with_session(
        settings, lambda session: (enable_sink(session, args.sink, now=now), [s.name for s in read_sinks(session)])
    )
    if not enabled:
        raise SinkNotFoundError(
            f"alert sink {args.sink!r} not found; known sinks: {', '.join(known) or 'none yet'}. A sink is "
            "registered by the first dispatch after it is configured."
        )
    print(f"alert sink {args.sink} enabled; its pending deliveries are due now")
    return EXIT_OK


def _test(args: argparse.Namespace, settings: Settings) -> int:
    from storage.alerts import AlertDraft, enqueue_alert

    sinks = settings.alerts.sink_names()
    if not sinks:
        raise ConfigError(
            "no alert sink is configured; turn one on with alerts.log, alerts.kafka_topic or alerts.webhook_url"
        )
    now = datetime.now(timezone.utc)
    draft = AlertDraft(
        dedup_key=f"test:{now.isoformat()}:{secrets.token_hex(4)}",
        kind="test",
        severity=args.severity,
        flag_id=None,
        user_id=None,
        rule=None,
        payload={"summary": f"Test alert from sentinel-monitor on {socket.gethostname()}", "test": True},
    )
    _with_session(settings, lambda session: enqueue_alert(session, draft, sinks=sinks, now=now))
    print(f"test alert {draft.dedup_key} stored for {', '.join(sinks)}")
    if args.dispatch:
        return _dispatch(argparse.Namespace(json=False), settings)
    print("the daemon delivers it within alerts.interval_s, or run `sentinel-monitor alerts dispatch`")
    return EXIT_OK


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.alerts.dispatcher import run_alert_dispatch
    from monitor.alerts.sinks import build_sinks
    from storage.engine import create_engine, create_session_factory

    sinks = build_sinks(settings.alerts, settings.kafka)
    engine = create_engine(settings=settings.database)
    try:
        result = run_alert_dispatch(create_session_factory(engine=engine), settings.alerts, sinks)
    finally:
        for sink in sinks.values():
            sink.close()
        engine.dispose()
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(
            f"{result.claimed} delivery(ies) due: {result.delivered} delivered, {result.failed} failed, "
            f"{result.released} left for the next run"
        )
        for name in result.disabled_sinks:
            print(f"alert sink {name} is now disabled; see `sentinel-monitor alerts sinks`", file=sys.stderr)
    return EXIT_FAILURE if result.failed else EXIT_OK


def _with_session(settings: Settings, action: Callable[[Session], T]) -> T:
    """Run `action` in one transaction, committed when it returns."""
    from storage.engine import create_engine, create_session_factory, transaction

    engine = create_engine(settings=settings.database)
    try:
        with transaction(create_session_factory(engine=engine), "run the alerts command") as session:
            return action(session)
    finally:
        engine.dispose()


def _delivery_text(delivery: dict[str, Any]) -> str:
    if delivery["status"] == "pending" and delivery["attempts"]:
        return f"{delivery['sink']}=pending({delivery['attempts']} attempts)"
    return f"{delivery['sink']}={delivery['status']}"


def _short_time(value: str | None) -> str:
    if value is None:
        return "-"
    return datetime.fromisoformat(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
