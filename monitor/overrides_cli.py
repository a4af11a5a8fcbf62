"""The `sentinel-monitor overrides` commands: manage the trusted-user allowlist and print the override audit.

- `allow USER --reason TEXT --approver NAME (--for 30d | --until TIME)` adds an entry;
- `revoke USER --by NAME` ends the user's active entries;
- `list [--all] [--user USER] [--json]` prints the active entries, or every entry;
- `audit [--since 7d|TIME] [--until TIME] [--user USER] [--limit N] [--json]`
  prints the allowlist entries in force, the override exchanges, and the
  slip-throughs left out of flags, per user.

Invalid input exits with status 2, and `revoke` of a user with no active
entry exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from monitor import durations
from monitor.overrides import AllowlistEntry, InvalidAuditQueryError, OverrideAudit, override_audit
from monitor.settings import Settings
from monitor.text_table import render_table
from storage.engine import SessionFactory
from storage.trusted_users import AllowlistError, allow_user, list_trusted_users, revoke_user

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_AUDIT_SINCE = timedelta(days=7)
DEFAULT_AUDIT_LIMIT = 50

# The text output cuts reasons to this many characters; --json prints them whole.
REASON_CHARS = 60


def add_overrides_command(commands: Any) -> None:
    """Add the `overrides` command and its actions to the `sentinel-monitor` subcommands."""
    # Imported here because monitor.cli imports this module at its top.
    from monitor.cli import parse_duration, positive_int

    overrides = commands.add_parser(
        "overrides", help="the trusted-user allowlist and the audit of overrides"
    ).add_subparsers(dest="action", required=True)

    allow = overrides.add_parser("allow", help="trust a user until an expiry: scored and stored, never flagged")
    allow.add_argument("user", metavar="USER", help="the user id as it appears in the exchanges")
    allow.add_argument("--reason", required=True, metavar="TEXT", help="why the user is trusted, for the audit")
    allow.add_argument("--approver", required=True, metavar="NAME", help="who approved the entry")
    expiry = allow.add_mutually_exclusive_group(required=True)
    expiry.add_argument("--for", dest="duration", type=parse_duration, help="how long, e.g. 12h, 30d, 2w (at most 365d)")
    expiry.add_argument(
        "--until", dest="expires_at", type=_aware_time, metavar="TIME",
        help="the expiry as an ISO 8601 time with an offset, e.g. 2027-01-31T00:00Z",
    )  # fmt: skip
    allow.set_defaults(handler=_allow)

    revoke = overrides.add_parser("revoke", help="end every active allowlist entry of a user")
    revoke.add_argument("user", metavar="USER")
    revoke.add_argument("--by", required=True, metavar="NAME", help="who revokes the entries")
    revoke.set_defaults(handler=_revoke)

    listing = overrides.add_parser("list", help="print the active allowlist entries")
    listing.add_argument("--all", action="store_true", help="also print expired and revoked entries")
    listing.add_argument("--user", metavar="USER", help="only this user's entries")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)

    audit = overrides.add_parser("audit", help="override exchanges, allowlist entries, and slip-throughs kept out of flags")
    audit.add_argument(
        "--since", type=_since, default=DEFAULT_AUDIT_SINCE, metavar="DURATION|TIME",
        help="start of the period: a duration before now such as 24h or 7d, or an ISO 8601 time (default 7d)",
    )  # fmt: skip
    audit.add_argument("--until", type=_aware_time, metavar="TIME", help="end of the period (default: now)")
    audit.add_argument("--user", metavar="USER", help="only this user's entries and exchanges")
    audit.add_argument(
        "--limit", type=positive_int, default=DEFAULT_AUDIT_LIMIT, metavar="N",
        help=f"items per list: entries, exchanges and users (default {DEFAULT_AUDIT_LIMIT})",
    )  # fmt: skip
    audit.add_argument("--json", action="store_true", help="print JSON, which never contains request text")
    audit.set_defaults(handler=_audit)


def _allow(args: argparse.Namespace, settings: Settings) -> int:
    from storage.engine import transaction

    now = _now()
    expires_at = args.expires_at or now + args.duration
    with _database(settings) as session_factory, transaction(session_factory, "allow a trusted user") as session:
        already = list_trusted_users(session, include_inactive=False, now=now, user_id=args.user)
        try:
            record = allow_user(
                session, args.user, reason=args.reason, approver=args.approver, expires_at=expires_at, now=now
            )
        except AllowlistError as exc:
            return _usage_error(f"cannot allow user {args.user!r}: {exc}")
        entry = AllowlistEntry.from_record(record, now=now)
    print(
        f"user {entry.user_id!r} trusted until {_short_time(entry.expires_at)}, "
        f"approved by {entry.approver} (entry {entry.id})"
    )
    if already:
        latest = max(record.expires_at for record in already)
        print(
            f"the user already had {_entries(len(already))} active until {_short_time(latest)}; "
            "the user stays trusted until the later of the expiries"
        )
    return EXIT_OK


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    from storage.engine import transaction

    with _database(settings) as session_factory, transaction(session_factory, "revoke a trusted user") as session:
        try:
            revoked = revoke_user(session, args.user, by=args.by, now=_now())
        except AllowlistError as exc:
            return _usage_error(f"cannot revoke user {args.user!r}: {exc}")
    if revoked == 0:
        print(
            f"sentinel-monitor: user {args.user!r} has no active allowlist entry, so nothing was revoked; "
            "`sentinel-monitor overrides list --all` shows the expired and revoked ones",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"revoked {_entries(revoked)} of user {args.user!r}")
    return EXIT_OK


def _list(args: argparse.Namespace, settings: Settings) -> int:
    now = _now()
    with _database(settings) as session_factory, session_factory() as session:
        records = list_trusted_users(session, include_inactive=args.all, now=now, user_id=args.user)
        entries = [AllowlistEntry.from_record(record, now=now) for record in records]
    if args.json:
        print(json.dumps({"now": now.isoformat(), "entries": [entry.as_json() for entry in entries]}, indent=2))
        return EXIT_OK
    if not entries:
        print("no allowlist entries" if args.all else "no active allowlist entries; --all also lists ended ones")
        return EXIT_OK
    print(_entries_table(entries))
    return EXIT_OK


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    now = _now()
    since = now - args.since if isinstance(args.since, timedelta) else args.since
    with _database(settings) as session_factory, session_factory() as session:
        try:
            audit = override_audit(session, since=since, until=args.until, user_id=args.user, limit=args.limit, now=now)
        except InvalidAuditQueryError as exc:
            return _usage_error(f"invalid audit query: {exc}")
    if args.json:
        print(json.dumps(audit.as_json(), indent=2))
        return EXIT_OK
    print(_format_audit(audit))
    return EXIT_OK


def _format_audit(audit: OverrideAudit) -> str:
    period = f"{_short_time(audit.since) if audit.since else 'the beginning'} to {_short_time(audit.until)}"
    lines = [f"override audit from {period}" + (f" for user {audit.user_id!r}" if audit.user_id else "")]
    lines.append(f"allowlist entries in force: {len(audit.allowlist)}")
    if audit.allowlist:
        lines.append(_entries_table(list(audit.allowlist)))
    lines.append(f"users with slip-throughs kept out of flags: {len(audit.users)}")
    if audit.users:
        lines.append(_users_table([user.as_json() for user in audit.users]))
    listed_count = len(audit.exchanges)
    more = f", the newest {listed_count} shown (--limit)" if listed_count < audit.override_exchange_count else ""
    lines.append(f"override exchanges: {audit.override_exchange_count}{more}")
    if audit.exchanges:
        lines.append(_exchanges_table(audit.as_json()["exchanges"]))
    return "\n".join(lines)


def _entries_table(entries: Sequence[AllowlistEntry]) -> str:
    table = [["entry", "user", "state", "created", "expires", "approver", "revoked by", "reason"]]
    for entry in entries:
        table.append([
            str(entry.id), entry.user_id, entry.state, _short_time(entry.created_at), _short_time(entry.expires_at),
            entry.approver, entry.revoked_by or "-", _cut(entry.reason),
        ])  # fmt: skip
    return render_table(table, right=(0,))


def _users_table(users: Sequence[dict[str, Any]]) -> str:
    table = [["user", "override exchanges", "override slip-throughs", "allowlisted slip-throughs", "trusted now"]]
    for user in users:
        table.append([
            user["user_id"], str(user["override_exchanges"]), str(user["override_slip_throughs"]),
            str(user["allowlisted_slip_throughs"]), "yes" if user["trusted_now"] else "no",
        ])  # fmt: skip
    return render_table(table, right=(1, 2, 3))


def _exchanges_table(exchanges: Sequence[dict[str, Any]]) -> str:
    table = [["exchange", "user", "created", "outcome", "probabilities (* = slipped through)", "reason"]]
    for exchange in exchanges:
        slipped = set(exchange["slip_through_sentinels"])
        probabilities = " ".join(
            f"{name}={prob:.3g}{'*' if name in slipped else ''}" for name, prob in sorted(exchange["probabilities"].items())
        )
        table.append([
            exchange["id"], exchange["user_id"], _short_time(datetime.fromisoformat(exchange["created_at"])),
            exchange["outcome"], probabilities or "-", _cut(exchange["override_reason"] or "-"),
        ])  # fmt: skip
    return render_table(table)


@contextmanager
def _database(settings: Settings) -> Iterator[SessionFactory]:
    from storage.engine import create_engine, create_session_factory

    engine = create_engine(settings=settings.database)
    try:
        yield create_session_factory(engine=engine)
    finally:
        engine.dispose()


def _aware_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}; use ISO 8601 with an offset, e.g. 2027-01-31T00:00Z"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"time {text!r} has no offset; add one, e.g. 2027-01-31T00:00Z for UTC or 2027-01-31T00:00+02:00"
        )
    return value


def _since(text: str) -> timedelta | datetime:
    try:
        return durations.parse_duration(text)
    except durations.DurationTooLongError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError:
        pass
    try:
        return _aware_time(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"invalid --since {text!r}; use a duration such as 24h or 7d, or an ISO 8601 time with an offset"
        ) from None


def _entries(count: int) -> str:
    return f"{count} allowlist {'entry' if count == 1 else 'entries'}"


def _usage_error(message: str) -> int:
    print(f"sentinel-monitor: {message}", file=sys.stderr)
    return EXIT_USAGE


def _cut(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= REASON_CHARS else flat[: REASON_CHARS - 1] + "…"


def _short_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _now() -> datetime:
    return datetime.now(timezone.utc)
