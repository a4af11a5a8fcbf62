"""The `sentinel-monitor` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from monitor import __version__, durations
from monitor.alerts_cli import add_alerts_command
from monitor.api_cli import add_api_commands
from monitor.consistency_cli import add_consistency_command
from monitor.errors import ConfigError, InvalidExchangeError, SentinelMonitorError
from monitor.flags_cli import add_flags_commands
from monitor.logs import configure_logging
from monitor.overrides_cli import add_overrides_command
from monitor.probe import add_probe_command
from monitor.replay import ReplayInputError
from monitor.scenario import ScenarioError
from monitor.scenario_cli import add_scenario_command
from monitor.training.commands import add_training_commands, datasets_default
from monitor.training.data import DatasetError
from monitor.settings import Settings, load_settings
from monitor.text_table import render_table

logger = logging.getLogger("monitor.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

def parse_duration(text: str) -> timedelta:
    """Parse '90s', '15m', '24h', '7d' or '2w' into a timedelta."""
    try:
        return durations.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; use a positive whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}; it must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel-monitor",
        description="Score refusal sentinels for logged chat exchanges, store them, and flag users.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", metavar="PATH", help="TOML settings file (default: $SENTINEL_CONFIG)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log_level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = commands.add_parser("model", help="manage the scoring model").add_subparsers(dest="action", required=True)
    pull = model.add_parser("pull", help="fetch, verify and cache the embedded default model")
    pull.add_argument("--force", action="store_true", help="download and convert again even if cached")
    pull.set_defaults(handler=_model_pull)
    info = model.add_parser("info", help="print the configured model's identity and sentinel token ids")
    info.set_defaults(handler=_model_info)

    score = commands.add_parser("score", help="score JSON lines offline, without Kafka or PostgreSQL")
    score.add_argument("--input", default="-", metavar="PATH|-", help="JSON lines to read (default: stdin)")
    score.add_argument("--output", default="-", metavar="PATH|-", help="where to write scores (default: stdout)")
    score.set_defaults(handler=_score)

    db = commands.add_parser("db", help="manage the PostgreSQL schema").add_subparsers(dest="action", required=True)
    upgrade = db.add_parser("upgrade", help="apply migrations up to REVISION")
    upgrade.add_argument("revision", nargs="?", default="head")
    upgrade.set_defaults(handler=_db_upgrade)
    current = db.add_parser("current", help="print the schema revision")
    current.set_defaults(handler=_db_current)
    stats = db.add_parser("stats", help="print how many exchanges and scores are stored")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_db_stats)

    _add_users_commands(commands)
    _add_replay_command(commands)
    _add_run_command(commands)
    add_training_commands(commands)
    add_consistency_command(commands)
    add_probe_command(commands)
    add_scenario_command(commands, datasets_default())
    add_api_commands(commands)
    add_flags_commands(commands)
    add_alerts_command(commands)
    add_overrides_command(commands)
    return parser


def _add_users_commands(commands: Any) -> None:
    users = commands.add_parser("users", help="per-user risk from PostgreSQL").add_subparsers(dest="action", required=True)
    top = users.add_parser("top", help="users with the most slip-throughs in the window")
    top.add_argument("--window", type=parse_duration, default=timedelta(hours=24), help="e.g. 1h, 24h, 7d (default 24h)")
    top.add_argument("--limit", type=positive_int, default=20, help="users to list (default 20)")
    top.add_argument("--json", action="store_true", help="print JSON")
    top.set_defaults(handler=_users_top)
    show = users.add_parser("show", help="one user's counts, flags and evidence")
    show.add_argument("user", metavar="USER")
    show.add_argument("--window", type=parse_duration, default=timedelta(days=7), help="default 7d")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_users_show)
    flag = users.add_parser("flag", help="run the flag job once now")
    flag.add_argument("--json", action="store_true", help="print JSON")
    flag.set_defaults(handler=_users_flag)
    risk = users.add_parser("risk", help="one user's risk score per window, with the numbers and exchanges behind it")
    risk.add_argument("user", metavar="USER")
    risk.add_argument("--json", action="store_true", help="print JSON")
    risk.set_defaults(handler=_users_risk)


def _add_replay_command(commands: Any) -> None:
    from monitor.replay import FORMATS

    replay = commands.add_parser("replay", help="produce public request/response files to the exchanges topic")
    replay.add_argument("path", metavar="PATH", help="a file, or a folder searched for files of the format")
    replay.add_argument("--format", required=True, choices=FORMATS, dest="replay_format")
    replay.add_argument("--users", type=positive_int, default=50, help="number of simulated users (default 50)")
    replay.add_argument("--limit", type=positive_int, default=None, help="produce at most this many messages")
    replay.add_argument(
        "--rebase-time",
        action="store_true",
        help="jsonl only: shift timestamps so the newest message is now, keeping their spacing",
    )
    replay.set_defaults(handler=_replay)


def _add_run_command(commands: Any) -> None:
    run = commands.add_parser("run", help="run the daemon: consume, score, store, flag")
    run.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit once every message on the topic is processed, after one flag-job run",
    )
    run.add_argument("--no-scheduler", action="store_true", help="consume only; do not run scheduled jobs")
    run.add_argument("--no-api", action="store_true", help="do not serve the HTTP API (see also api.enabled)")
    run.set_defaults(handler=_run)


# The status after the reader of stdout closed it early, as in `... --json | head`:
# 128 + SIGPIPE (13), the status a shell reports for a program killed by SIGPIPE,
# so `set -o pipefail` scripts can tell it apart from a failed command.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status."""
    try:
        try:
            return _main(argv)
        finally:
            # Flush here, also after --help and usage errors, so that a closed stdout
            # raises inside this try and not at interpreter exit.
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at the null device, so the flush at interpreter exit cannot raise BrokenPipeError again."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, descriptor)
    os.close(null)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"sentinel-monitor: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level or settings.log_level)
    try:
        handler: Callable[[argparse.Namespace, Settings], int] = args.handler
        return handler(args, settings)
    except (ConfigError, InvalidExchangeError, ReplayInputError, DatasetError, ScenarioError) as exc:
        print(f"sentinel-monitor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SentinelMonitorError as exc:
        logger.debug("command failed", exc_info=True)
        print(f"sentinel-monitor: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("sentinel-monitor: interrupted", file=sys.stderr)
        return 130


def _model_pull(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.model_store import pull_default_model

    path = pull_default_model(Path(settings.model.cache_dir), force=args.force)
    print(f"default model ready at {path}")
    return EXIT_OK


def _model_info(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.model_store import load_scorer

    scorer = load_scorer(settings.model, settings)
    identity = scorer.identity
    info = {
        "model_id": identity.model_id,
        "template_sha256": identity.template_sha256,
        "tokenizer_sha256": identity.tokenizer_sha256,
        "sentinels": {
            s.name: {"text": s.text, "token_ids": list(ids), "threshold": s.threshold, "severity": s.severity}
            for s, ids in zip(scorer.sentinels, scorer.sentinel_token_ids)
        },
    }
    print(json.dumps(info, indent=2))
    return EXIT_OK


def _score(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.model_store import load_scorer
    from monitor.offline import count_lines, score_stream

    with ExitStack() as stack:
        source = _open_input(args.input, stack)
        sink = _open_output(args.output, stack)
        total = count_lines(args.input) if args.input != "-" else None
        scorer = load_scorer(settings.model, settings)
        summary = score_stream(scorer, source, sink, total=total, show_progress=sys.stderr.isatty())
    logger.info("scored %d line(s), %d could not be scored", summary.scored, summary.failed)
    if summary.failed:
        print(
            f"sentinel-monitor: {summary.failed} line(s) could not be scored; their output lines carry an 'error'",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _open_input(path: str, stack: ExitStack) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    if Path(path).is_dir():
        raise ConfigError(f"cannot read --input {path}: it is a folder; give a JSON lines file or - for stdin")
    try:
        return stack.enter_context(open(path, "rb"))
    except OSError as exc:
        raise ConfigError(f"cannot read --input {path}: {exc.strerror}") from exc


def _open_output(path: str, stack: ExitStack) -> IO[str]:
    if path == "-":
        return sys.stdout
    try:
        return stack.enter_context(open(path, "w", encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write --output {path}: {exc.strerror}") from exc


def _db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from storage.migrate import current_revision, upgrade

    upgrade(settings.database, args.revision)
    print(f"schema at revision {current_revision(settings.database)}")
    return EXIT_OK


def _db_current(args: argparse.Namespace, settings: Settings) -> int:
    from storage.migrate import current_revision, head_revision

    print(f"current: {current_revision(settings.database) or 'none'}  head: {head_revision()}")
    return EXIT_OK


def _db_stats(args: argparse.Namespace, settings: Settings) -> int:
    from storage.exchanges import count_exchanges, count_scores, count_unscored

    with _session(settings) as session:
        stats = {
            "exchanges": count_exchanges(session),
            "scores": count_scores(session),
            "unscored_exchanges": count_unscored(session),
        }
    if args.json:
        print(json.dumps(stats))
    else:
        print("  ".join(f"{name}={value}" for name, value in stats.items()))
    return EXIT_OK


def _users_top(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.users import top_users, top_users_json

    with _session(settings) as session:
        users = top_users(session, window=args.window, now=_now(), limit=args.limit, risk=settings.risk)
    if args.json:
        print(json.dumps(top_users_json(args.window, users), indent=2))
        return EXIT_OK
    if not users:
        print(f"no slip-throughs in the last {_format_window(args.window)}")
        return EXIT_OK
    print(_format_top(users, args.window))
    return EXIT_OK


def _users_show(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.users import show_user

    with _session(settings) as session:
        detail = show_user(session, args.user, window=args.window, now=_now())
    if detail is None:
        print(f"sentinel-monitor: user {args.user!r} has no stored exchanges", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(detail.as_json(), indent=2) if args.json else _format_detail(detail.as_json()))
    return EXIT_OK


def _users_risk(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.user_risk import format_user_risk, user_risk, user_risk_json

    with _session(settings) as session:
        windows = user_risk(session, args.user, settings.risk, now=_now())
    if all(window.exchanges == 0 for window in windows):
        longest = timedelta(seconds=max(settings.risk.windows_s))
        print(f"sentinel-monitor: user {args.user!r} has no exchanges in the last {_format_window(longest)}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(user_risk_json(args.user, windows), indent=2))
    else:
        print(format_user_risk(args.user, windows))
    return EXIT_OK


def _users_flag(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.jobs.flag_users import AlertOptions, run_flag_job
    from storage.engine import create_engine, create_session_factory

    engine = create_engine(settings=settings.database)
    try:
        result = run_flag_job(
            create_session_factory(engine=engine),
            settings.flags,
            risk=settings.risk,
            alerts=AlertOptions.from_settings(settings.alerts),
            now=_now(),
        )
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(result.as_json()))
    elif result.status == "skipped":
        print(f"flag job skipped: another replica holds the lock for rule {result.rule}")
    else:
        print(
            f"rule {result.rule}: {result.users_over_threshold} user(s) over the threshold; "
            f"flags created {result.created}, updated {result.updated}, unchanged {result.unchanged}, "
            f"recovered {result.recovered}"
        )
    return EXIT_OK


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.clients import build_producer, ensure_topics
    from consumers.producer import produce_messages

    if args.rebase_time and args.replay_format != "jsonl":
        raise ConfigError("--rebase-time applies to --format jsonl; the other formats are stamped at replay time")
    files, messages = _replay_messages(Path(args.path), args.replay_format, args.users, args.limit, args.rebase_time)
    ensure_topics(settings.kafka)
    producer = build_producer(settings.kafka)
    try:
        summary = produce_messages(
            producer, settings.kafka.topic, messages, show_progress=sys.stderr.isatty(),
        )  # fmt: skip
    finally:
        producer.close(timeout=10)
    print(f"produced {summary.sent} message(s) from {len(files)} file(s) to {settings.kafka.topic}")
    if summary.not_json:
        print(
            f"sentinel-monitor: {summary.not_json} line(s) were not JSON objects; they were sent unchanged "
            "and the daemon will dead-letter them",
            file=sys.stderr,
        )
    if summary.failed:
        print(
            f"sentinel-monitor: {summary.failed} message(s) were not sent; see the error above "
            "(a message over the broker's size limit, or the broker unreachable)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _replay_messages(
    path: Path, replay_format: str, users: int, limit: int | None, rebase: bool
) -> tuple[list[Path], Iterator[Any]]:
    from itertools import islice

    from monitor.replay import (
        ReplayMessage,
        find_files,
        read_jsonl,
        read_refusal_direction,
        read_xstest,
        rebase_times,
        replay_start_time,
    )
    from monitor.wire import encode_exchange

    files = find_files(path, replay_format)  # type: ignore[arg-type]
    start = replay_start_time()

    def generate() -> Iterator[ReplayMessage]:
        for file in files:
            if replay_format == "jsonl":
                lines = list(read_jsonl(file))
                yield from (rebase_times(lines, start) if rebase else lines)
                continue
            reader = read_xstest if replay_format == "xstest" else read_refusal_direction
            for exchange in reader(file, users, start):
                yield ReplayMessage(key=exchange.user_id, value=encode_exchange(exchange))

    return files, islice(generate(), limit)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.daemon import DaemonOptions, ShutdownRequested, run_daemon

    options = DaemonOptions(
        until_caught_up=args.until_caught_up,
        with_scheduler=not args.no_scheduler,
        with_api=settings.api.enabled and not args.no_api,
    )
    try:
        stats = run_daemon(settings, options)
    except ShutdownRequested as exc:
        print(f"sentinel-monitor: {exc}", file=sys.stderr)
        return EXIT_FAILURE if args.until_caught_up else EXIT_OK
    if args.until_caught_up and not stats.caught_up:
        print(
            f"sentinel-monitor: stopped before catching up; processed {stats.messages} message(s), "
            "the rest stay on the topic for the next run",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.until_caught_up:
        print(
            f"processed {stats.messages} message(s): stored {stats.stored}, already stored {stats.duplicates}, "
            f"dead-lettered {stats.dead_lettered}, slip-throughs {stats.slip_throughs}"
        )
    return EXIT_OK


def _session(settings: Settings) -> Any:
    from contextlib import contextmanager

    from storage.engine import create_engine, create_session_factory

    @contextmanager
    def scope() -> Iterator[Any]:
        engine = create_engine(settings=settings.database)
        try:
            with create_session_factory(engine=engine)() as session:
                yield session
        finally:
            engine.dispose()

    return scope()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _format_window(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _format_top(users: Sequence[Any], window: timedelta) -> str:
    rows = [u.as_json() for u in users]
    table = [["user", "exchanges", "slip-throughs", "risk", "flag", "max probability among slip-throughs"]]
    for row in rows:
        maxima = row.get("max_prob_by_sentinel") or {}
        probabilities = " ".join(f"{name}={value:.3g}" for name, value in sorted(maxima.items())) or "-"
        risk = "-" if row.get("risk") is None else f"{row['risk']:.2f}"
        table.append(
            [row["user_id"], str(row["exchanges"]), str(row["slip_throughs"]), risk, row.get("flag_status") or "-", probabilities]
        )
    return f"users by slip-throughs in the last {_format_window(window)}:\n" + render_table(table, right=(1, 2, 3))


def _format_detail(detail: dict[str, Any]) -> str:
    lines = [
        f"user {detail['user_id']}: {detail['exchanges']} exchange(s), {detail['slip_throughs']} slip-through(s), "
        f"{detail['overrides']} override(s) from {_short_time(detail['window_start'])} "
        f"to {_short_time(detail['window_end'])}",
    ]
    for flag in detail["flags"]:
        lines.append(
            f"flag {flag['id']} [{flag['status']}] {flag['rule']}: {flag['slip_through_count']} slip-through(s), "
            f"max probability {flag['max_prob']:.3g}, opened {_short_time(flag['opened_at'])}"
        )
    if not detail["flags"]:
        lines.append("no flags")
    if not detail["evidence"]:
        return "\n".join(lines)
    lines.append("slip-throughs (* = at or above the sentinel's threshold):")
    table = [["exchange", "created", "outcome", "probabilities"]]
    for item in detail["evidence"]:
        slipped = set(item["slip_through_sentinels"])
        probabilities = " ".join(
            f"{name}={value:.3g}{'*' if name in slipped else ''}" for name, value in sorted(item["probabilities"].items())
        )
        table.append([item["id"], _short_time(item["created_at"]), item["outcome"], probabilities])
    return "\n".join(lines) + "\n" + render_table(table)


def _short_time(value: str) -> str:
    """Format an ISO timestamp to the second, in UTC: 2026-12-04 21:56:07Z."""
    moment = datetime.fromisoformat(value).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
