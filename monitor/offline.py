"""Offline scoring: JSON lines in, one score line out per input line, in input order."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from typing import IO, Any, Iterator, Sequence

from tqdm import tqdm

from monitor.errors import InvalidExchangeError, ScoringError
from monitor.exchange import ChatMessage
from monitor.scoring.prompts import EncodedPrompt
from monitor.scoring.scorer import Scorer
from monitor.wire import decode_exchange, decode_json_object

logger = logging.getLogger(__name__)

CHUNK_LINES = 512


@dataclass(frozen=True)
class OfflineItem:
    line_number: int
    item_id: str | None
    prompt: EncodedPrompt | None
    error: str | None


@dataclass(frozen=True)
class OfflineSummary:
    scored: int
    failed: int


def parse_line(line: bytes, line_number: int) -> tuple[str | None, tuple[ChatMessage, ...]]:
    """Parse one input line: an exchange in an accepted format, or {"id": ..., "prompt": "..."}."""
    document = decode_json_object(line, max_bytes=len(line) + 1)
    if "prompt" in document and "request" not in document:
        prompt = document["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise InvalidExchangeError("invalid_field", "prompt must be a non-empty string")
        item_id = document.get("id")
        return (str(item_id) if item_id is not None else None), (ChatMessage("user", prompt),)
    exchange = decode_exchange(line, max_bytes=len(line) + 1)
    return exchange.id, exchange.messages


def score_stream(
    scorer: Scorer, source: IO[bytes], sink: IO[str], *, total: int | None = None, show_progress: bool = False
) -> OfflineSummary:
    """Score every line of `source` and write one JSON line per input line to `sink`."""
    scored = failed = 0
    with tqdm(total=total, unit="line", disable=not show_progress, file=sys.stderr) as bar:
        for chunk in _chunks(source, CHUNK_LINES):
            items = [_prepare(scorer, line, number) for number, line in chunk]
            valid = [item for item in items if item.prompt is not None]
            scores = iter(scorer.score_encoded([item.prompt for item in valid if item.prompt is not None]))
            for item in items:
                if item.prompt is None:
                    failed += 1
                    record: dict[str, Any] = {"id": item.item_id, "line": item.line_number, "error": item.error}
                else:
                    scored += 1
                    record = {"id": item.item_id, **next(scores).as_json()}
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            bar.update(len(items))
    return OfflineSummary(scored=scored, failed=failed)


def _prepare(scorer: Scorer, line: bytes, line_number: int) -> OfflineItem:
    item_id = None
    try:
        item_id, messages = parse_line(line, line_number)
        return OfflineItem(line_number, item_id, scorer.encode(messages), None)
    except (InvalidExchangeError, ScoringError) as exc:
        logger.debug("line %d not scored: %s", line_number, exc)
        return OfflineItem(line_number, item_id or _id_hint(line), None, str(exc))


def _id_hint(line: bytes) -> str | None:
    try:
        document = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    value = document.get("id") if isinstance(document, dict) else None
    return str(value) if isinstance(value, (str, int)) else None


def _chunks(source: IO[bytes], size: int) -> Iterator[Sequence[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for number, raw in enumerate(source, start=1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        chunk.append((number, line))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())
