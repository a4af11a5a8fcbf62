"""The abusive-user scenario: public traffic with a few simulated abusive users and one heavy benign user.

Every request and reply comes from the public datasets, read at run time and
never stored in the repository. Only prompts in the held-out test split of
the bundled adapter (monitor/training/data.py `split_of`) are used, so the
model scores requests it was not trained on.

- Public traffic: the XSTest safe prompts with the five human-labelled model
  completions, the harmless (Alpaca) prompts with the five refusal_direction
  baseline replies, and the CoCoNot contrast prompts with their preferred,
  compliant reply. Each row goes to one of `public_users` users by a hash of
  its prompt, as `sentinel-monitor replay` does.
- One heavy benign user sends `heavy_requests` requests drawn from the same
  public traffic, many times more than anyone else.
- Each abusive user sends `abusive_requests` harmful JailbreakBench requests
  answered by a chat model whose refusal direction was removed (the
  refusal_direction "ablation" completions: a modified model, not a stock one),
  mixed with `abusive_cover` ordinary requests.

The exchanges are spread evenly over `span`, in a seeded random order, and
written as `exchange/v1` messages.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.errors import SentinelMonitorError
from monitor.training.data import split_of

ABLATION_MODELS = ("gemma-2b-it", "llama-2-7b-chat-hf", "meta-llama-3-8b-instruct", "qwen-1_8b-chat", "yi-6b-chat")


class ScenarioError(SentinelMonitorError):
    """The public datasets needed by the scenario are missing or unreadable."""


@dataclass(frozen=True)
class ScenarioShape:
    """How many users and requests of each kind the scenario has."""

    public_users: int = 40
    heavy_requests: int = 150
    abusive_users: int = 3
    abusive_requests: int = 5
    abusive_cover: int = 5
    span: timedelta = timedelta(hours=6)
    seed: int = 1234


@dataclass(frozen=True)
class Row:
    """One request and its reply, with where it came from."""

    source: str
    prompt: str
    reply: str
    model: str


@dataclass
class Scenario:
    """The scenario's messages, and which users are abusive and which is the heavy benign one."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    abusive_users: tuple[str, ...] = ()
    heavy_user: str = "heavy-benign"

    def users(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for message in self.messages:
            counts[message["user_id"]] = counts.get(message["user_id"], 0) + 1
        return counts


def build_scenario(datasets: Path, shape: ScenarioShape, *, start: datetime) -> Scenario:
    """Read the public rows from `datasets` and assign them to users and times."""
    benign = list(_benign_rows(datasets))
    harmful = list(_harmful_rows(datasets))
    needed = shape.abusive_users * shape.abusive_requests
    if not benign or not harmful:
        raise ScenarioError(
            f"the datasets under {datasets} give {len(benign)} benign and {len(harmful)} harmful test-split rows; "
            "the scenario needs both. Check that --datasets is the public datasets folder."
        )
    if len(harmful) < needed:
        raise ScenarioError(
            f"{shape.abusive_users} abusive user(s) with {shape.abusive_requests} harmful request(s) each need "
            f"{needed} harmful rows, but the datasets give {len(harmful)}; lower --abusive-users or --abusive-requests"
        )
    generator = random.Random(shape.seed)
    assigned: list[tuple[str, Row]] = [(_public_user(row.prompt, shape.public_users), row) for row in benign]
    assigned += [("heavy-benign", generator.choice(benign)) for _ in range(shape.heavy_requests)]
    abusers = tuple(f"abuser-{number + 1}" for number in range(shape.abusive_users))
    harmful_picks = generator.sample(harmful, needed)
    for number, user in enumerate(abusers):
        picks = harmful_picks[number * shape.abusive_requests : (number + 1) * shape.abusive_requests]
        assigned += [(user, row) for row in picks]
        assigned += [(user, generator.choice(benign)) for _ in range(shape.abusive_cover)]
    generator.shuffle(assigned)

    step = shape.span / max(len(assigned), 1)
    messages = [
        _message(f"scenario-{index:05d}", user, row, start + step * index) for index, (user, row) in enumerate(assigned)
    ]
    return Scenario(messages=messages, abusive_users=abusers)


def write_jsonl(scenario: Scenario, path: Path) -> None:
    """Write the scenario's messages as JSON lines, oldest first."""
    with path.open("w", encoding="utf-8") as handle:
        for message in scenario.messages:
            handle.write(json.dumps(message, ensure_ascii=False) + "\n")


def _message(exchange_id: str, user: str, row: Row, created_at: datetime) -> dict[str, Any]:
    return {
        "schema": "exchange/v1",
        "id": exchange_id,
        "user_id": user,
        "model": row.model,
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        "request": {"messages": [{"role": "user", "content": row.prompt}]},
        "response": {"content": row.reply},
        "metadata": {"source": row.source},
    }


def _public_user(prompt: str, users: int) -> str:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return f"public-{int.from_bytes(digest[:8], 'big') % users:03d}"


def _benign_rows(root: Path) -> Iterator[Row]:
    for path in sorted(_require_dir(root / "xstest").glob("xstest_v2_completions_*.csv")):
        model = path.stem.removeprefix("xstest_v2_completions_")
        for record in _csv(path):
            if record.get("type", "").startswith("contrast_") or record.get("label") == "unsafe":
                continue
            yield from _test_row("xstest_safe", record["prompt"], record["completion"], f"xstest/{model}")
    for model in ABLATION_MODELS:
        path = root / "refusal_direction" / "runs" / model / "completions" / "harmless_baseline_evaluations.json"
        for item in _completions(path):
            yield from _test_row("alpaca_harmless", item["prompt"], item.get("response") or "", f"refusal-direction/{model}")
    for record in _jsonl(_require_file(root / "coconot" / "coconot_pref.jsonl")):
        yield from _test_row("coconot_contrast", str(record["prompt"]), str(record["chosen"]), "coconot/chosen")


def _harmful_rows(root: Path) -> Iterator[Row]:
    for model in ABLATION_MODELS:
        path = root / "refusal_direction" / "runs" / model / "completions" / "jailbreakbench_ablation_evaluations.json"
        for item in _completions(path):
            yield from _test_row("jbb_ablation", item["prompt"], item.get("response") or "", f"ablated/{model}")


def _test_row(source: str, prompt: str, reply: str, model: str) -> Sequence[Row]:
    return [Row(source, prompt, reply, model)] if split_of(prompt) == "test" and reply.strip() else []


def _completions(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(_require_file(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read {path}: {exc}") from exc
    completions = document.get("completions") if isinstance(document, dict) else None
    if not isinstance(completions, list):
        raise ScenarioError(f"{path} has no 'completions' list; is it a refusal_direction evaluation file?")
    return [item for item in completions if isinstance(item, dict) and isinstance(item.get("prompt"), str)]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ScenarioError(f"dataset folder not found: {path}; pass --datasets or set SENTINEL_DATASETS_DIR")
    return path


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise ScenarioError(f"dataset file not found: {path}; pass --datasets or set SENTINEL_DATASETS_DIR")
    return path
