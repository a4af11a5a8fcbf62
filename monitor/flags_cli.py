"""The `sentinel-monitor flags` commands: list flags, show one with its history, and review one.

`--json` prints the same JSON as the HTTP API's flag routes.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

from monitor.settings import Settings
from storage.flags import MAX_REVIEW_NOTE_CHARS
from storage.models import FLAG_STATUSES, SEVERITIES

EXIT_OK = 0
EXIT_FAILURE = 1


def add_flags_commands(commands: Any) -> None:
    """Add `flags list`, `flags show` and `flags review` to the `sentinel-monitor` subcommands."""
    # Imported here because monitor.cli imports this module at its top.
    from monitor.cli import positive_int

    flags = commands.add_parser("flags", help="list, show and review flags").add_subparsers(dest="action", required=True)

    listing = flags.add_parser("list", help="flags matching every filter given, most recently updated first")
    listing.add_argument("--status", choices=FLAG_STATUSES)
    listing.add_argument("--rule")
    listing.add_argument("--user", dest="user_id", metavar="USER")
    listing.add_argument("--severity", choices=SEVERITIES)
    firing = listing.add_mutually_exclusive_group()
    firing.add_argument("--firing", dest="firing", action="store_const", const=True, help="the user meets the rule now")
    firing.add_argument("--not-firing", dest="firing", action="store_const", const=False, help="the user has recovered")
    listing.add_argument("--limit", type=positive_int, default=100, help="flags to list (default 100)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list, firing=None)

    show = flags.add_parser("show", help="one flag with its evidence and history")
    show.add_argument("flag_id", type=positive_int, metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_show)

    review = flags.add_parser("review", help="set a flag's status and record who did it and why")
    review.add_argument("flag_id", type=positive_int, metavar="ID")
    review.add_argument("status", choices=FLAG_STATUSES, metavar="STATUS", help=f"one of {', '.join(FLAG_STATUSES)}")
    review.add_argument("--by", required=True, help="the reviewer's name, recorded with the event")
    review.add_argument(
        "--note", type=_review_note, default=None,
        help=f"why; recorded with the event (at most {MAX_REVIEW_NOTE_CHARS} characters)",
    )  # fmt: skip
    review.add_argument("--json", action="store_true", help="print the flag as JSON")
    review.set_defaults(handler=_review)


def _review_note(text: str) -> str:
    if len(text) > MAX_REVIEW_NOTE_CHARS:
        raise argparse.ArgumentTypeError(
            f"the note has {len(text)} characters; the maximum is {MAX_REVIEW_NOTE_CHARS}, so shorten it"
        )
    return text


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.api.flag_views import find_flags

    with _session_factory(settings) as factory, factory() as session:
        flags = find_flags(
            session, status=args.status, rule=args.rule, user_id=args.user_id, severity=args.severity,
            firing=args.firing, limit=args.limit,
        )  # fmt: skip
    if args.json:
        print(json.dumps({"flags": [flag.model_dump(mode="json") for flag in flags]}, indent=2))
        return EXIT_OK
    if not flags:
        print("no flags match")
        return EXIT_OK
    print(_format_flags([flag.model_dump(mode="json") for flag in flags]))
    return EXIT_OK


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.api.flag_views import flag_detail

    with _session_factory(settings) as factory, factory() as session:
        detail = flag_detail(session, args.flag_id)
    if detail is None:
        print(f"sentinel-monitor: flag {args.flag_id} not found", file=sys.stderr)
        return EXIT_FAILURE
    body = detail.model_dump(mode="json")
    print(json.dumps(body, indent=2) if args.json else _format_detail(body))
    return EXIT_OK


def _review(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.api.flag_views import review
    from monitor.errors import ConfigError

    if not args.by.strip():
        raise ConfigError("--by is empty; give the reviewer's name")
    with _session_factory(settings) as factory:
        detail = review(
            factory,
            args.flag_id,
            args.status,
            actor=args.by,
            note=args.note,
            now=datetime.now(timezone.utc),
            sinks=settings.alerts.sink_names(),
        )
    if detail is None:
        print(f"sentinel-monitor: flag {args.flag_id} not found", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(detail.model_dump(mode="json"), indent=2))
    else:
        print(f"flag {detail.id} of user {detail.user_id} is now {detail.status} (reviewed by {detail.reviewed_by})")
    return EXIT_OK


def _session_factory(settings: Settings) -> Any:
    from contextlib import contextmanager
    from typing import Iterator

    from storage.engine import create_engine, create_session_factory

    @contextmanager
    def scope() -> Iterator[Any]:
        engine = create_engine(settings=settings.database)
        try:
            yield create_session_factory(engine=engine)
        finally:
            engine.dispose()

    return scope()


def _format_flags(flags: list[dict[str, Any]]) -> str:
    from monitor.cli import _short_time
    from monitor.text_table import render_table

    table = [["id", "user", "rule", "status", "severity", "firing", "slip-throughs", "max prob", "updated"]]
    for flag in flags:
        table.append([
            str(flag["id"]), flag["user_id"], flag["rule"], flag["status"], flag["severity"],
            "yes" if flag["firing"] else "no", str(flag["slip_through_count"]), f"{flag['max_prob']:.3g}",
            _short_time(flag["updated_at"]),
        ])  # fmt: skip
    return render_table(table, right=(0, 6, 7))


def _format_detail(flag: dict[str, Any]) -> str:
    from monitor.cli import _short_time

    lines = [
        f"flag {flag['id']} [{flag['status']}, {flag['severity']}] user {flag['user_id']}, rule {flag['rule']}",
        f"  {flag['slip_through_count']} slip-through(s) in a {flag['window_s']} s window, max probability "
        f"{flag['max_prob']:.3g}, {'firing' if flag['firing'] else 'not firing'}",
        f"  opened {_short_time(flag['opened_at'])}, updated {_short_time(flag['updated_at'])}",
    ]
    if flag["reviewed_by"]:
        note = f": {flag['review_note']}" if flag["review_note"] else ""
        lines.append(f"  reviewed by {flag['reviewed_by']} at {_short_time(flag['reviewed_at'])}{note}")
    exchange_ids = flag["evidence"].get("exchange_ids", [])
    lines.append(f"  evidence: {' '.join(map(str, exchange_ids)) or 'none'}")
    lines.append("history:")
    for event in flag["events"]:
        note = f": {event['note']}" if event["note"] else ""
        lines.append(f"  {_short_time(event['at'])}  {event['kind']} by {event['actor']}{note}")
    if not flag["events"]:
        lines.append("  no events")
    return "\n".join(lines)

