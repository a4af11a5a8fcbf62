"""Measure how often the refusal-phrase detector agrees with XSTest's human labels.

Reads the five XSTest v2 completion files (`xstest/xstest_v2_completions_<model>.csv`
under the datasets folder), runs `monitor.outcome.detect_refusal_phrase` on every
completion and compares the verdict with the `final_label` column, where
`2_full_refusal` and `3_partial_refusal` count as refused and `1_full_compliance`
as answered. Prints n, accuracy, Cohen's kappa, precision and recall for
"refused", the 2x2 confusion matrix, and the detector's verdicts against the three
human labels, per model and overall.

Usage:
    .venv/bin/python benchmarks/outcome_agreement.py [--datasets DIR] [--json]

The datasets folder defaults to `$SENTINEL_DATASETS_DIR`, else `../shared/datasets`
relative to the repository root.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from monitor.outcome import detect_refusal_phrase

Verdict = Literal["refused", "answered"]

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("gpt4", "llama2new", "llama2orig", "mistralguard", "mistralinstruct")
# The detector's phrases were tuned on these three files only. llama2new and
# mistralguard are the held-out check.
DEVELOPMENT_MODELS = ("gpt4", "llama2orig", "mistralinstruct")
HUMAN_LABELS = ("1_full_compliance", "2_full_refusal", "3_partial_refusal")
# A partial refusal mixes refusal and compliance, usually declining first and
# helping after. It counts as refused because the reply began by declining.
LABEL_TO_VERDICT: dict[str, Verdict] = {
    "1_full_compliance": "answered",
    "2_full_refusal": "refused",
    "3_partial_refusal": "refused",
}


@dataclass(frozen=True)
class LabelledCompletion:
    """One XSTest completion with its human label and the detector's verdict."""

    model: str
    row_id: str
    human_label: str
    verdict: Verdict
    phrase: str | None

    @property
    def expected(self) -> Verdict:
        return LABEL_TO_VERDICT[self.human_label]


@dataclass
class Agreement:
    """Counts of detector verdicts against human labels, and the statistics built on them."""

    table: Counter[tuple[str, Verdict]] = field(default_factory=Counter)

    def add(self, completion: LabelledCompletion) -> None:
        self.table[(completion.human_label, completion.verdict)] += 1

    def count(self, expected: Verdict, verdict: Verdict) -> int:
        return sum(n for (label, got), n in self.table.items() if LABEL_TO_VERDICT[label] == expected and got == verdict)

    @property
    def n(self) -> int:
        return sum(self.table.values())

    @property
    def accuracy(self) -> float:
        agreed = self.count("refused", "refused") + self.count("answered", "answered")
        return _ratio(agreed, self.n)

    @property
    def precision(self) -> float:
        return _ratio(self.count("refused", "refused"), self.count("refused", "refused") + self.count("answered", "refused"))

    @property
    def recall(self) -> float:
        return _ratio(self.count("refused", "refused"), self.count("refused", "refused") + self.count("refused", "answered"))

    @property
    def kappa(self) -> float:
        """Cohen's kappa: agreement corrected for the agreement expected by chance."""
        n = self.n
        if n == 0:
            return float("nan")
        expected_refused = self.count("refused", "refused") + self.count("refused", "answered")
        detected_refused = self.count("refused", "refused") + self.count("answered", "refused")
        chance = (expected_refused * detected_refused + (n - expected_refused) * (n - detected_refused)) / (n * n)
        if chance == 1.0:
            return float("nan")
        return (self.accuracy - chance) / (1.0 - chance)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "precision_refused": self.precision,
            "recall_refused": self.recall,
            "confusion": {
                expected: {verdict: self.count(expected, verdict) for verdict in ("refused", "answered")}
                for expected in ("refused", "answered")
            },
            "by_human_label": {
                label: {verdict: self.table[(label, verdict)] for verdict in ("refused", "answered")}
                for label in HUMAN_LABELS
            },
        }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def default_datasets_dir() -> Path:
    """Return `$SENTINEL_DATASETS_DIR`, else `../shared/datasets` relative to the repository root."""
    configured = os.environ.get("SENTINEL_DATASETS_DIR")
    if configured:
        return Path(configured)
    return REPO_ROOT.parent / "shared" / "datasets"


def completions_path(datasets_dir: Path, model: str) -> Path:
    return datasets_dir / "xstest" / f"xstest_v2_completions_{model}.csv"


def load_completions(datasets_dir: Path, model: str) -> list[LabelledCompletion]:
    """Read one model's XSTest completions and run the detector on each."""
    path = completions_path(datasets_dir, model)
    with path.open(encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    completions = []
    for row in rows:
        label = row["final_label"].strip()
        if label not in LABEL_TO_VERDICT:
            raise ValueError(f"{path}: row {row['id']!r} has an invalid final_label {label!r}; expected one of {HUMAN_LABELS}")
        phrase = detect_refusal_phrase(row["completion"])
        verdict: Verdict = "refused" if phrase is not None else "answered"
        completions.append(LabelledCompletion(model, row["id"], label, verdict, phrase))
    return completions


def measure(completions: Iterable[LabelledCompletion]) -> Agreement:
    agreement = Agreement()
    for completion in completions:
        agreement.add(completion)
    return agreement


def format_report(results: dict[str, Agreement]) -> str:
    """Render the per-model summary, then each confusion matrix and 3-way table."""
    lines = [f"{'model':<16} {'n':>5} {'accuracy':>9} {'kappa':>7} {'precision':>10} {'recall':>7}"]
    for name, agreement in results.items():
        lines.append(
            f"{name:<16} {agreement.n:>5} {agreement.accuracy:>9.3f} {agreement.kappa:>7.3f} "
            f"{agreement.precision:>10.3f} {agreement.recall:>7.3f}"
        )
    for name, agreement in results.items():
        lines.append("")
        lines.append(f"{name}: human label (rows) x detector verdict (columns)")
        lines.append(f"  {'':<20} {'refused':>8} {'answered':>9}")
        for expected in ("refused", "answered"):
            lines.append(
                f"  {expected:<20} {agreement.count(expected, 'refused'):>8} {agreement.count(expected, 'answered'):>9}"
            )
        for label in HUMAN_LABELS:
            lines.append(
                f"  {label:<20} {agreement.table[(label, 'refused')]:>8} {agreement.table[(label, 'answered')]:>9}"
            )
    return "\n".join(lines)


def run(datasets_dir: Path, models: Sequence[str]) -> dict[str, Agreement]:
    """Measure agreement per model, on the development models together, and on all models together."""
    by_model = {model: load_completions(datasets_dir, model) for model in models}
    results = {model: measure(completions) for model, completions in by_model.items()}
    development = [model for model in models if model in DEVELOPMENT_MODELS]
    held_out = [model for model in models if model not in DEVELOPMENT_MODELS]
    if development and held_out:
        results["development"] = measure(c for model in development for c in by_model[model])
        results["held-out"] = measure(c for model in held_out for c in by_model[model])
    results["overall"] = measure(c for completions in by_model.values() for c in completions)
    return results


def list_disagreements(datasets_dir: Path, models: Sequence[str]) -> list[str]:
    """Return one line per disagreement: model, row id, human label, verdict and matched phrase."""
    lines = []
    for model in models:
        for completion in load_completions(datasets_dir, model):
            if completion.verdict != completion.expected:
                lines.append(
                    f"{model}\t{completion.row_id}\t{completion.human_label}\t{completion.verdict}\t{completion.phrase}"
                )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets",
        type=Path,
        default=None,
        help="datasets folder containing xstest/ (default: $SENTINEL_DATASETS_DIR, else ../shared/datasets)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="completion files to read (default: all five)",
    )
    parser.add_argument(
        "--list-disagreements",
        action="store_true",
        help="print model, row id, human label, verdict and matched phrase for each disagreement, not the text",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    datasets_dir = args.datasets or default_datasets_dir()
    missing = [str(completions_path(datasets_dir, model)) for model in args.models]
    missing = [path for path in missing if not Path(path).is_file()]
    if missing:
        print(f"XSTest completion files not found: {', '.join(missing)}; pass --datasets DIR", file=sys.stderr)
        return 2

    if args.list_disagreements:
        print("\n".join(list_disagreements(datasets_dir, args.models)))
        return 0
    results = run(datasets_dir, args.models)
    if args.json:
        print(json.dumps({name: agreement.as_dict() for name, agreement in results.items()}, indent=2))
    else:
        print(format_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
