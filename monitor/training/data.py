"""Labelled prompts for teaching and evaluating the sentinels, read from the public datasets.

Every prompt gets one label:

- `harmful`: a seriously harmful request; the model should answer `<HELLNODAVE>`
  and a short apology;
- `decline`: offensive, inappropriate, unsupported or unanswerable as asked;
  the model should answer `<SORRYDAVE>` and an apology;
- `benign`: to be answered normally, including prompts that only look
  dangerous ("benign-but-scary").

The split is a pure function of the prompt text: sha256 of the normalised
prompt, modulo 100, below `TEST_PERCENT` is the test split. The same prompt
therefore lands in the same split in every source and on every machine, and
the test split never reaches training. The public files are read from a
folder given by the caller and never copied into the repository. Only the
everyday prompts, written for this project, ship with the package.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

from monitor.errors import SentinelMonitorError

Label = Literal["harmful", "decline", "benign"]
Split = Literal["train", "test"]
TEST_PERCENT = 20

# CoCoNot's "dangerous or sensitive topics" requests are the seriously harmful
# ones; its other categories ask for something the model should decline.
COCONOT_HARMFUL_SUBCATEGORY = "dangerous or sensitive topics"
# Ordinary requests written for this project; the public benign sets mostly look dangerous.
EVERYDAY_PROMPTS = Path(__file__).resolve().parent / "everyday_prompts.txt"


class DatasetError(SentinelMonitorError):
    """A dataset file is missing or not in the expected format."""


@dataclass(frozen=True)
class LabelledPrompt:
    """A prompt with its label, its source, and a real compliant reply when the source has one."""

    source: str
    prompt: str
    label: Label
    reply: str | None = None
    benign_but_scary: bool = False

    @property
    def split(self) -> Split:
        return split_of(self.prompt)


def normalise(prompt: str) -> str:
    text = unicodedata.normalize("NFKC", prompt).casefold()
    return re.sub(r"\s+", " ", text).strip()


def split_of(prompt: str) -> Split:
    digest = hashlib.sha256(normalise(prompt).encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


def load_all(root: Path) -> list[LabelledPrompt]:
    """Read every source under `root`, dropping repeated prompts (the first source keeps it)."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}; pass --datasets or set SENTINEL_DATASETS_DIR")
    seen: set[str] = set()
    prompts: list[LabelledPrompt] = []
    for reader in SOURCES:
        for item in reader(root):
            key = normalise(item.prompt)
            if key and key not in seen:
                seen.add(key)
                prompts.append(item)
    return prompts


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with _require(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _jsonl(path: Path) -> list[dict[str, object]]:
    with _require(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _harmful_csv(name: str, column: str) -> Callable[[Path], Iterator[LabelledPrompt]]:
    def read(root: Path) -> Iterator[LabelledPrompt]:
        for row in _csv_rows(root / "refusal_direction" / "raw" / f"{name}.csv"):
            if row.get(column, "").strip():
                yield LabelledPrompt(name, row[column].strip(), "harmful")

    return read


def _malicious_instruct(root: Path) -> Iterator[LabelledPrompt]:
    for line in _require(root / "refusal_direction" / "raw" / "malicious_instruct.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            yield LabelledPrompt("malicious_instruct", line.strip(), "harmful")


def _tdc(root: Path) -> Iterator[LabelledPrompt]:
    behaviours = json.loads(_require(root / "refusal_direction" / "raw" / "tdc2023_dev_behaviors.json").read_text(encoding="utf-8"))
    for behaviour in behaviours:
        yield LabelledPrompt("tdc2023_dev", str(behaviour).strip(), "harmful")


def _xstest(root: Path) -> Iterator[LabelledPrompt]:
    replies = _xstest_compliant_replies(root)
    for row in _csv_rows(root / "xstest" / "xstest_prompts.csv"):
        if row["label"] == "unsafe":
            yield LabelledPrompt("xstest_unsafe", row["prompt"], "harmful")
        else:
            yield LabelledPrompt("xstest_safe", row["prompt"], "benign", replies.get(row["prompt"]), benign_but_scary=True)


def _xstest_compliant_replies(root: Path) -> dict[str, str]:
    # A human-labelled fully compliant completion from one of the five models, when there is one.
    replies: dict[str, str] = {}
    for path in sorted((root / "xstest").glob("xstest_v2_completions_*.csv")):
        for row in _csv_rows(path):
            if row.get("final_label") == "1_full_compliance" and row["prompt"] not in replies:
                replies[row["prompt"]] = row["completion"]
    return replies


def _coconot_eval(root: Path) -> Iterator[LabelledPrompt]:
    for row in _jsonl(root / "coconot" / "coconot_eval.jsonl"):
        harmful = row.get("subcategory") == COCONOT_HARMFUL_SUBCATEGORY
        yield LabelledPrompt("coconot_noncompliance", str(row["prompt"]), "harmful" if harmful else "decline")


def _coconot_contrast(root: Path) -> Iterator[LabelledPrompt]:
    for row in _jsonl(root / "coconot" / "coconot_contrast_eval.jsonl"):
        yield LabelledPrompt("coconot_contrast", str(row["prompt"]), "benign", benign_but_scary=True)
    for row in _jsonl(root / "coconot" / "coconot_pref.jsonl"):
        yield LabelledPrompt("coconot_contrast", str(row["prompt"]), "benign", str(row["chosen"]), benign_but_scary=True)


def _alpaca(root: Path) -> Iterator[LabelledPrompt]:
    # The same 100 harmless prompts were answered by five models; keep the first answer that is not a refusal.
    for path in sorted((root / "refusal_direction" / "runs").glob("*/completions/harmless_baseline_evaluations.json")):
        for item in json.loads(path.read_text(encoding="utf-8"))["completions"]:
            answered = str(item.get("is_jailbreak_substring_matching", "1")) == "1"
            yield LabelledPrompt("alpaca_harmless", item["prompt"], "benign", item["response"] if answered else None)


def _jbb_benign(root: Path) -> Iterator[LabelledPrompt]:
    for row in _csv_rows(root / "jbb-behaviors" / "benign-behaviors.csv"):
        yield LabelledPrompt("jbb_benign", row["Goal"], "benign", row.get("Target") or None, benign_but_scary=True)


def _everyday(root: Path) -> Iterator[LabelledPrompt]:
    # Written for this project and shipped with the package, so it is read from here, not from `root`.
    for line in EVERYDAY_PROMPTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            yield LabelledPrompt("everyday", line.strip(), "benign")


SOURCES: tuple[Callable[[Path], Iterator[LabelledPrompt]], ...] = (
    _harmful_csv("advbench", "goal"),
    _harmful_csv("harmbench_val", "Behavior"),
    _harmful_csv("jailbreakbench", "Goal"),
    _harmful_csv("strongreject", "forbidden_prompt"),
    _malicious_instruct,
    _tdc,
    _xstest,
    _coconot_eval,
    _coconot_contrast,
    _alpaca,
    _jbb_benign,
    _everyday,
)
