"""Turn public request/response files into exchanges, for replay through Kafka.

The public files carry no users and no timestamps, so both are assigned:

- user id: `replay-user-NNNN`, where NNNN is the first 8 bytes of
  sha256(UTF-8 prompt text), read as a big-endian integer, modulo `--users`.
  The same prompt always belongs to the same user, whichever file or model it
  comes from, and a rerun assigns the same users.
- exchange id: `<format>:<file stem>:<row id or row number>`, stable across
  reruns, so replaying a file twice stores each exchange once.
- created_at: the time the replay started, plus one millisecond per row.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Literal

from monitor.errors import SentinelMonitorError
from monitor.exchange import ChatMessage, Exchange

ReplayFormat = Literal["xstest", "refusal-direction", "jsonl"]
FORMATS: tuple[ReplayFormat, ...] = ("xstest", "refusal-direction", "jsonl")


class ReplayInputError(SentinelMonitorError):
    """A replay file is missing, empty, or not in the format given with --format."""


@dataclass(frozen=True)
class ReplayMessage:
    """One message to produce: its key (the user id) and its value."""

    key: str | None
    value: bytes
    is_json_object: bool = True


def assign_user(prompt: str, users: int) -> str:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return f"replay-user-{int.from_bytes(digest[:8], 'big') % users:04d}"


def find_files(path: Path, replay_format: ReplayFormat) -> list[Path]:
    """Return the files to replay: `path` itself, or the matching files under a directory, sorted."""
    if not path.exists():
        raise ReplayInputError(f"replay input not found: {path}")
    if path.is_file():
        return [path]
    patterns = {
        "xstest": "xstest_v2_completions_*.csv",
        "refusal-direction": "*_evaluations.json",
        "jsonl": "*.jsonl",
    }
    files = sorted(path.rglob(patterns[replay_format]))
    if not files:
        raise ReplayInputError(f"no {replay_format} files ({patterns[replay_format]}) under {path}")
    return files


def read_xstest(path: Path, users: int, start: datetime) -> Iterator[Exchange]:
    """Read an XSTest CSV: completions files give the reply; the prompts file gives requests only."""
    model = "xstest/" + path.stem.removeprefix("xstest_v2_completions_")
    try:
        yield from _xstest_rows(path, model, users, start)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReplayInputError(f"{path} is not a UTF-8 CSV file: {exc}") from exc


def _xstest_rows(path: Path, model: str, users: int, start: datetime) -> Iterator[Exchange]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise ReplayInputError(f"{path} is not an XSTest CSV: it has no 'prompt' column")
        for number, row in enumerate(reader):
            row_id = row.get("id") or str(number)
            yield _exchange(
                exchange_id=f"xstest:{path.stem}:{row_id}",
                prompt=row["prompt"],
                reply=row.get("completion"),
                model=model,
                users=users,
                created_at=start + timedelta(milliseconds=number),
                metadata={"source": "xstest", "type": row.get("type"), "human_label": row.get("final_label")},
            )


def read_refusal_direction(path: Path, users: int, start: datetime) -> Iterator[Exchange]:
    """Read a refusal_direction `*_evaluations.json` file: a prompt and a model's response per item."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReplayInputError(f"{path} is not valid UTF-8 JSON: {exc}") from exc
    completions = document.get("completions") if isinstance(document, dict) else None
    if not isinstance(completions, list):
        raise ReplayInputError(f"{path} has no 'completions' list; is it a refusal_direction evaluation file?")
    run = path.parent.parent.name  # runs/<model>/completions/<file>
    for number, item in enumerate(completions):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ReplayInputError(f"{path}: completions[{number}] has no 'prompt' string")
        yield _exchange(
            exchange_id=f"refusal-direction:{run}:{path.stem}:{number}",
            prompt=item["prompt"],
            reply=item.get("response"),
            model=f"refusal-direction/{run}",
            users=users,
            created_at=start + timedelta(milliseconds=number),
            metadata={"source": "refusal-direction", "file": path.stem, "category": item.get("category")},
        )


def read_jsonl(path: Path) -> Iterator[ReplayMessage]:
    """Read JSON lines already in a message format; each line is produced unchanged, keyed by its user."""
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.rstrip(b"\r\n")
            if line.strip():
                document = _json_object(line)
                yield ReplayMessage(key=_user_of(document), value=line, is_json_object=document is not None)


def _json_object(line: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _user_of(document: dict[str, object] | None) -> str | None:
    if document is None:
        return None
    request = document.get("request")
    for value in (document.get("user_id"), request.get("user") if isinstance(request, dict) else None):
        if isinstance(value, str) and value:
            return value
    return None


def _exchange(
    *, exchange_id: str, prompt: str, reply: str | None, model: str, users: int, created_at: datetime,
    metadata: dict[str, object],
) -> Exchange:  # fmt: skip
    return Exchange(
        id=exchange_id,
        user_id=assign_user(prompt, users),
        model=model,
        created_at=created_at,
        messages=(ChatMessage("user", prompt),),
        reply=reply,
        metadata={key: value for key, value in metadata.items() if value is not None},
    )


def rebase_times(messages: list[ReplayMessage], newest: datetime) -> list[ReplayMessage]:
    """Shift every timestamp by one offset so that the newest message is at `newest`.

    Keeps the spacing between messages, so a sample written once still falls
    inside today's flag window. Lines that are not JSON objects with a
    timestamp (malformed samples among them) are left byte for byte.
    """
    parsed = [_timestamp_of(message.value) for message in messages]
    times = [found[1] for found in parsed if found is not None]
    if not times:
        return messages
    shift = newest - max(times)
    rebased = []
    for message, found in zip(messages, parsed):
        if found is None:
            rebased.append(message)
            continue
        document, moment = found
        _set_timestamp(document, moment + shift)
        value = json.dumps(document, ensure_ascii=False).encode("utf-8")
        rebased.append(ReplayMessage(key=message.key, value=value))
    return rebased


def _timestamp_of(value: bytes) -> tuple[dict[str, object], datetime] | None:
    try:
        document = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    created = document.get("created_at")
    if isinstance(created, str):
        try:
            moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (document, moment) if moment.tzinfo else None
    response = document.get("response")
    if isinstance(response, dict) and isinstance(response.get("created"), int):
        return document, datetime.fromtimestamp(response["created"], tz=timezone.utc)
    return None


def _set_timestamp(document: dict[str, object], moment: datetime) -> None:
    if "created_at" in document:
        document["created_at"] = moment.isoformat()
    else:
        response = document["response"]
        assert isinstance(response, dict)
        response["created"] = int(moment.timestamp())


def replay_start_time() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)
