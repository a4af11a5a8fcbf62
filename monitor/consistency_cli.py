"""The `sentinel-monitor consistency` command: near-duplicate requests whose refusal probabilities disagree.

Two modes:

- over PostgreSQL: the newest exchanges of a window, grouped by their last
  user turn, as the scheduled job does;
- offline, with `--input FILE.jsonl`: lines `{"group": ..., "prompt": ...}`
  or exchanges (with an optional top-level `"group"`), scored with the
  configured model. The report covers each group named in the input, and the
  automatic grouping of the same requests with its pairwise precision and
  recall against those groups.

JSON output never contains request text. The text output prints the start of
a group's first request only with `--show-text`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from monitor.consistency import (
    ConsistencyReport,
    GroupingAgreement,
    RequestGroup,
    ScoredRequest,
    build_report,
    group_similar,
    inconsistency_key,
    measure_agreement,
    summarize_group,
)
from monitor.errors import ConfigError, InvalidExchangeError
from monitor.exchange import ChatMessage
from monitor.sentinels import Sentinel
from monitor.settings import Settings
from monitor.text_table import render_table

EXIT_OK = 0

# The text output shows at most this many exchange ids per group, and this many
# characters of a request with --show-text.
IDS_SHOWN = 5
EXCERPT_CHARS = 60


@dataclass(frozen=True)
class _InputRequest:
    """One line of an --input file: its id, its group, its last user turn and the conversation to score."""

    id: str
    group: str | None
    text: str
    messages: tuple[ChatMessage, ...]


def add_consistency_command(commands: Any) -> None:
    """Add the `consistency` command to the `sentinel-monitor` subcommands."""
    # Imported here because monitor.cli imports this module at its top.
    from monitor.cli import parse_duration, positive_int

    parser = commands.add_parser(
        "consistency", help="group near-duplicate requests and show where their refusal probabilities disagree"
    )
    parser.add_argument(
        "--window", type=parse_duration, default=None, help="e.g. 24h, 7d (default: consistency.window_s)"
    )
    parser.add_argument(
        "--similarity",
        type=_similarity,
        default=None,
        help="cosine similarity, above 0 and at most 1, at which two requests are near-duplicates "
        "(default: consistency.similarity)",
    )
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="read at most this many of the newest exchanges (default: consistency.max_exchanges)",
    )
    parser.add_argument("--model", default=None, help="only exchanges served by this model")
    parser.add_argument(
        "--min-group-size",
        type=_group_size,
        default=None,
        help="smallest group to report (default: consistency.min_group_size)",
    )
    parser.add_argument(
        "--input",
        metavar="PATH",
        default=None,
        help="score a JSON lines file of paraphrase groups offline with the configured model, instead of "
        "reading PostgreSQL",
    )
    parser.add_argument(
        "--top",
        type=positive_int,
        default=20,
        help="found groups to print as text (default 20); every group named in --input is printed",
    )
    parser.add_argument(
        "--show-text", action="store_true", help="text output only: print the start of each group's first request"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, which never contains request text")
    parser.set_defaults(handler=_consistency)


def _consistency(args: argparse.Namespace, settings: Settings) -> int:
    if args.json and args.show_text:
        raise ConfigError("--show-text applies to the text output; the JSON output never contains request text")
    if args.input is None:
        return _report_stored(args, settings)
    database_options = [name for name in ("window", "limit", "model") if getattr(args, name) is not None]
    if database_options:
        raise ConfigError(
            f"--{', --'.join(database_options)} select exchanges in PostgreSQL and do not apply to --input"
        )
    return _report_input(args, settings)


def _report_stored(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.jobs.consistency_report import report_stored_requests
    from storage.activity import TimeWindow
    from storage.engine import create_engine, create_session_factory

    config = settings.consistency
    window = TimeWindow.ending(datetime.now(timezone.utc), args.window or timedelta(seconds=config.window_s))
    engine = create_engine(settings=settings.database)
    try:
        with create_session_factory(engine=engine)() as session:
            stored = report_stored_requests(
                session,
                settings.scoring.sentinels,
                window=window,
                similarity=args.similarity or config.similarity,
                limit=args.limit or config.max_exchanges,
                min_group_size=args.min_group_size or config.min_group_size,
                model=args.model,
            )
    finally:
        engine.dispose()

    if stored.recent.truncated:
        print(
            f"sentinel-monitor: the window contains more than {stored.recent.exchanges_read} exchanges; only the newest "
            f"{stored.recent.exchanges_read} were read. Raise --limit (consistency.max_exchanges) or shorten --window.",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(stored.as_json(), indent=2))
        return EXIT_OK
    texts = {request.id: request.text for request in stored.recent.requests} if args.show_text else {}
    print(_format_stored(stored.counts_json(), stored.report.groups, args.top, texts))
    return EXIT_OK


def _report_input(args: argparse.Namespace, settings: Settings) -> int:
    from monitor.model_store import load_scorer

    items = _read_input(Path(args.input))
    config = settings.consistency
    similarity = args.similarity or config.similarity
    min_group_size = args.min_group_size or config.min_group_size
    sentinels = settings.scoring.sentinels

    scorer = load_scorer(settings.model, settings)
    scores = scorer.score_messages([item.messages for item in items])
    requests = [
        ScoredRequest(id=item.id, text=item.text, probabilities={name: s.prob for name, s in score.sentinels.items()})
        for item, score in zip(items, scores)
    ]

    labels = [item.group for item in items]
    input_groups = _input_groups(requests, labels, sentinels)
    found = build_report(requests, sentinels, similarity=similarity, min_group_size=min_group_size)
    agreement = measure_agreement(labels, group_similar([r.text for r in requests], similarity=similarity))

    result = {
        "input": str(args.input),
        "model_id": scorer.identity.model_id,
        "input_groups": [{"group": label, **group.as_json()} for label, group in input_groups],
        "found": _found_json(found, items),
        "agreement": agreement.as_json(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    texts = {request.id: request.text for request in requests} if args.show_text else {}
    print(_format_input(result, input_groups, found.groups, agreement, args.top, texts))
    return EXIT_OK


def _input_groups(
    requests: Sequence[ScoredRequest], labels: Sequence[str | None], sentinels: Sequence[Sentinel]
) -> list[tuple[str, RequestGroup]]:
    members: dict[str, list[ScoredRequest]] = {}
    for request, label in zip(requests, labels):
        if label is not None:
            members.setdefault(label, []).append(request)
    groups = [(label, summarize_group(group, sentinels)) for label, group in members.items()]
    return sorted(groups, key=lambda pair: (inconsistency_key(pair[1]), pair[0]))


def _found_json(found: ConsistencyReport, items: Sequence[_InputRequest]) -> dict[str, Any]:
    """Return the report of the automatic grouping, each group listing the input groups of its members."""
    label_of = {item.id: item.group for item in items}
    found_json = found.as_json()
    for group_json, group in zip(found_json["groups"], found.groups):
        labels = {label_of[exchange_id] for exchange_id in group.exchange_ids}
        group_json["input_groups"] = sorted(label for label in labels if label is not None)
    return found_json


def _read_input(path: Path) -> list[_InputRequest]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read --input {path}: {exc.strerror}") from exc
    items: list[_InputRequest] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        item = _parse_input_line(path, line, number)
        if item.id in seen:
            raise ConfigError(
                f"--input {path} line {number} is invalid: id {item.id!r} is also on line {seen[item.id]}; "
                "give each line its own id"
            )
        seen[item.id] = number
        items.append(item)
    if not items:
        raise ConfigError(f"--input {path} contains no requests; give JSON lines with a prompt or an exchange")
    return items


def _parse_input_line(path: Path, line: bytes, number: int) -> _InputRequest:
    from monitor.offline import parse_line

    try:
        item_id, messages = parse_line(line, number)
        group = json.loads(line).get("group")
    except InvalidExchangeError as exc:
        raise ConfigError(f"--input {path} line {number} is invalid: {exc}") from exc
    if group is not None and not isinstance(group, (str, int)):
        raise ConfigError(f"--input {path} line {number}: group must be a string, got {json.dumps(group)}")
    user_turns = [message.content for message in messages if message.role == "user"]
    if not user_turns:
        raise ConfigError(f"--input {path} line {number} has no user turn to group")
    return _InputRequest(
        id=item_id if item_id is not None else f"line-{number}",
        group=str(group) if group is not None else None,
        text=user_turns[-1],
        messages=messages,
    )


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid similarity {text!r}; use a number above 0 and at most 1") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"invalid similarity {text!r}; it must be above 0 and at most 1")
    return value


def _group_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid group size {text!r}; use a whole number of 2 or more") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"invalid group size {text!r}; a group needs at least 2 requests")
    return value


def _format_stored(
    summary: dict[str, Any], groups: Sequence[RequestGroup], top: int, texts: dict[str, str]
) -> str:
    lines = [
        f"{summary['requests']} request(s) compared, from {summary['exchanges_read']} exchange(s) created "
        f"{_short_time(summary['window_start'])} to {_short_time(summary['window_end'])}"
        + (f" by model {summary['model']}" if summary["model"] else "")
    ]
    if summary["skipped_without_text"]:
        lines.append(
            f"{summary['skipped_without_text']} exchange(s) skipped: stored without their text "
            "(database.store_raw_text off), so they cannot be grouped"
        )
    if summary["skipped_unscored"]:
        lines.append(f"{summary['skipped_unscored']} exchange(s) skipped: stored without a score")
    lines.append(_totals_line(len(groups), summary["min_group_size"], summary["similarity"], groups))
    if groups:
        lines.append(_render_groups([(str(rank), group) for rank, group in enumerate(groups[:top], 1)], texts, "rank"))
    if len(groups) > top:
        lines.append(f"{len(groups) - top} more group(s); use --top or --json to see them")
    return "\n".join(lines)


def _format_input(
    result: dict[str, Any],
    input_groups: Sequence[tuple[str, RequestGroup]],
    found: Sequence[RequestGroup],
    agreement: GroupingAgreement,
    top: int,
    texts: dict[str, str],
) -> str:
    found_json = result["found"]
    lines = [f"{found_json['requests']} request(s) from {result['input']} scored with {result['model_id']}"]
    if input_groups:
        flipping = sum(1 for _, group in input_groups if group.flips)
        lines.append(f"groups in the input: {len(input_groups)}, {flipping} of them flip the refuse decision")
        lines.append(_render_groups(list(input_groups), texts, "group"))
    lines.append(
        "automatic grouping: "
        + _totals_line(len(found), found_json["min_group_size"], found_json["similarity"], found)
    )
    if found:
        lines.append(_render_groups([(str(rank), group) for rank, group in enumerate(found[:top], 1)], texts, "rank"))
    if agreement.expected_pairs:
        lines.append(
            f"against the groups in the input: pairwise precision {agreement.precision:.3f}, "
            f"recall {agreement.recall:.3f} "
            f"({agreement.agreeing_pairs} of {agreement.predicted_pairs} grouped pairs share an input group; "
            f"{agreement.expected_pairs} pairs do)"
        )
    return "\n".join(lines)


def _totals_line(count: int, min_size: int, similarity: float, groups: Sequence[RequestGroup]) -> str:
    if not count:
        return f"no group of {min_size} or more near-duplicate requests at similarity {similarity:g}"
    flipping = sum(1 for group in groups if group.flips)
    max_spread = max(group.max_spread for group in groups)
    return (
        f"{count} group(s) of {min_size} or more near-duplicates at similarity {similarity:g}; "
        f"{flipping} flip the refuse decision; max spread {max_spread:.3g}"
    )


def _render_groups(named: Sequence[tuple[str, RequestGroup]], texts: dict[str, str], first_column: str) -> str:
    table = [[first_column, "size", "refused", "flips", "max spread", "spread per sentinel", "exchanges"]]
    for name, group in named:
        spreads = " ".join(f"{s.sentinel}={s.spread:.3g}" for s in group.spreads) or "-"
        ids = " ".join(group.exchange_ids[:IDS_SHOWN])
        if group.size > IDS_SHOWN:
            ids += f" +{group.size - IDS_SHOWN} more"
        table.append([
            name, str(group.size), f"{group.refusals}/{group.size}", "yes" if group.flips else "no",
            f"{group.max_spread:.3g}", spreads, ids,
        ])  # fmt: skip
    rows = render_table(table, right=(1, 2, 4))
    if not texts:
        return rows
    lines = rows.split("\n")
    out = [lines[0]]
    for line, (_, group) in zip(lines[1:], named):
        out.append(line)
        out.append(f"    {_excerpt(texts.get(group.members[0].id, ''))}")
    return "\n".join(out)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return json.dumps(flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…", ensure_ascii=False)


def _short_time(value: str) -> str:
    return datetime.fromisoformat(value).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


