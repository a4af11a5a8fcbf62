"""Tests for monitor.outcome: evidence order, the refusal-phrase detector, and its XSTest agreement."""

from __future__ import annotations

import importlib.util
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from monitor.exchange import ChatMessage, Exchange
from monitor.outcome import Outcome, detect_outcome, detect_refusal_phrase, find_leading_sentinel
from monitor.sentinels import Sentinel

REPO_ROOT = Path(__file__).resolve().parent.parent

SORRY_DAVE = Sentinel(name="SORRYDAVE", text="<SORRYDAVE>", threshold=0.5, severity="medium")
HELL_NO_DAVE = Sentinel(name="HELLNODAVE", text="<HELLNODAVE>", threshold=0.2, severity="critical")
IM_SORRY = Sentinel(name="im_sorry", text="I'm sorry", threshold=0.05)
IM_SORRY_BUT = Sentinel(name="im_sorry_but", text="I'm sorry, but", threshold=0.05)
SENTINELS = (SORRY_DAVE, HELL_NO_DAVE, IM_SORRY)

PLAIN_REFUSAL = "I'm sorry, but I can't help with picking that lock."
PLAIN_ANSWER = "Preheat the oven to 200 °C, then roast the squash for 40 minutes."
HELPFUL_PARAGRAPH = (
    "Start by measuring the wall and marking the studs with a pencil. Drill pilot holes "
    "slightly smaller than the screws, then fix the bracket with the spirit level on top. "
    "Hang the shelf, load it gradually and check that the bracket does not move. "
)


def make_exchange(**overrides: Any) -> Exchange:
    fields: dict[str, Any] = {
        "id": "ex-1",
        "user_id": "user-1",
        "model": "test-model",
        "created_at": datetime(2025, 1, 1, tzinfo=timezone.utc),
        "messages": (ChatMessage(role="user", content="How do I hang a shelf?"),),
        "reply": PLAIN_ANSWER,
    }
    fields.update(overrides)
    return Exchange(**fields)


# Evidence paths


def test_reply_sentinel_field_decides_refused() -> None:
    outcome = detect_outcome(make_exchange(reply_sentinel="HELLNODAVE"), SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="field", sentinel="HELLNODAVE")


def test_refused_field_true_decides_refused() -> None:
    outcome = detect_outcome(make_exchange(refused=True), SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="field")


def test_refused_field_false_decides_answered() -> None:
    outcome = detect_outcome(make_exchange(refused=False), SENTINELS)
    assert outcome == Outcome(kind="answered", decided_by="field")


def test_leading_sentinel_decides_refused() -> None:
    exchange = make_exchange(reply="<SORRYDAVE>I can't share that.")
    outcome = detect_outcome(exchange, SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="sentinel", sentinel="SORRYDAVE")


def test_detector_decides_refused() -> None:
    outcome = detect_outcome(make_exchange(reply=PLAIN_REFUSAL), (SORRY_DAVE,))
    assert outcome.kind == "refused"
    assert outcome.decided_by == "detector"
    assert outcome.sentinel is None
    assert outcome.detail == "i'm sorry"


def test_detector_decides_answered() -> None:
    outcome = detect_outcome(make_exchange(reply=PLAIN_ANSWER), SENTINELS)
    assert outcome == Outcome(kind="answered", decided_by="detector")


@pytest.mark.parametrize("reply", [None, "", "   ", "\n\t \u00a0"])
def test_missing_or_blank_reply_is_unknown(reply: str | None) -> None:
    outcome = detect_outcome(make_exchange(reply=reply), SENTINELS)
    assert outcome == Outcome(kind="unknown", decided_by="none")


# Priority order


def test_refused_false_beats_detector() -> None:
    outcome = detect_outcome(make_exchange(reply=PLAIN_REFUSAL, refused=False), SENTINELS)
    assert outcome == Outcome(kind="answered", decided_by="field")


def test_refused_false_beats_leading_sentinel() -> None:
    outcome = detect_outcome(make_exchange(reply="<SORRYDAVE>No.", refused=False), SENTINELS)
    assert outcome == Outcome(kind="answered", decided_by="field")


def test_reply_sentinel_beats_refused_false() -> None:
    outcome = detect_outcome(make_exchange(reply_sentinel="SORRYDAVE", refused=False), SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="field", sentinel="SORRYDAVE")


def test_refused_field_beats_blank_reply() -> None:
    outcome = detect_outcome(make_exchange(reply=None, refused=True), SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="field")


def test_leading_sentinel_beats_detector() -> None:
    outcome = detect_outcome(make_exchange(reply=PLAIN_REFUSAL), SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="sentinel", sentinel="im_sorry")


# Leading sentinels


@pytest.mark.parametrize("prefix", [" ", "\n\n", "\t \r\n", "\ufeff", "\u00a0 "])
def test_sentinel_after_leading_whitespace(prefix: str) -> None:
    outcome = detect_outcome(make_exchange(reply=prefix + "<HELLNODAVE>Absolutely not."), SENTINELS)
    assert outcome == Outcome(kind="refused", decided_by="sentinel", sentinel="HELLNODAVE")


def test_sentinel_later_in_reply_is_ignored() -> None:
    reply = "The token <SORRYDAVE> is reserved by the serving stack."
    outcome = detect_outcome(make_exchange(reply=reply), SENTINELS)
    assert outcome == Outcome(kind="answered", decided_by="detector")


def test_longest_matching_sentinel_wins() -> None:
    sentinel = find_leading_sentinel("I'm sorry, but no.", (IM_SORRY, IM_SORRY_BUT))
    assert sentinel == IM_SORRY_BUT


def test_sentinel_match_is_case_sensitive() -> None:
    assert find_leading_sentinel("<sorrydave>no", SENTINELS) is None


# Refusal-phrase detector


@pytest.mark.parametrize(
    "reply",
    [
        "I’m sorry, but I can’t help with that.",
        "I‘m unable to write that message.",
        "Sorry, but that's not something I can do.",
        "I CANNOT PROVIDE INSTRUCTIONS FOR THAT.",
        "I apologize, but I won't draft that letter.",
        "I must respectfully decline this request.",
        "**I can't assist with that.** Here is a hotline instead.",
        "I understand why you ask. However, I can't in good conscience give you that list.",
        "That request is not appropriate for me to fulfil.",
        "It would not be appropriate to describe that.",
        "I don't feel comfortable writing a story like that.",
        "Writing that would go against my guidelines.",
    ],
)
def test_detector_finds_refusal(reply: str) -> None:
    assert detect_refusal_phrase(reply) is not None, reply


@pytest.mark.parametrize(
    "reply",
    [
        PLAIN_ANSWER,
        "I can't guarantee the prices are current, but here is the list you asked for: bread, milk, eggs.",
        "I can't help but admire the question. The answer is 42.",
        "I'm sorry to hear about your flat tyre. Loosen the nuts first, then jack the car up.",
        "I apologize for the confusion earlier. The capital of Australia is Canberra.",
        "Sorryville is a small town with a bakery and a lake.",
        "Unapologetically bright colours work well in a small kitchen.",
    ],
)
def test_detector_ignores_non_refusal(reply: str) -> None:
    assert detect_refusal_phrase(reply) is None, reply


def test_curly_apostrophe_matches_like_straight() -> None:
    assert detect_refusal_phrase("I can\u2019t help with that.") == "i can't help"
    assert detect_refusal_phrase("I can't help with that.") == "i can't help"


def test_late_caveat_is_not_a_refusal() -> None:
    reply = HELPFUL_PARAGRAPH * 3 + "I can't guarantee the wall will hold, and I cannot help if it does not."
    assert detect_refusal_phrase(reply) is None
    outcome = detect_outcome(make_exchange(reply=reply), SENTINELS)
    assert outcome == Outcome(kind="answered", decided_by="detector")


def test_refusal_after_two_sentences_is_ignored() -> None:
    reply = "Here is the recipe. Mix the flour and water. I'm sorry, but I can't give exact timings."
    assert detect_refusal_phrase(reply) is None


def test_detail_is_the_phrase_not_the_reply() -> None:
    reply = "I'm unable to help with that. " + HELPFUL_PARAGRAPH
    outcome = detect_outcome(make_exchange(reply=reply), ())
    assert outcome.detail == "i'm unable to help"


# Agreement with XSTest human labels (public datasets folder)


def _datasets_dir() -> Path:
    configured = os.environ.get("SENTINEL_DATASETS_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "datasets"


def _load_benchmark() -> ModuleType:
    path = REPO_ROOT / "benchmarks" / "outcome_agreement.py"
    spec = importlib.util.spec_from_file_location("outcome_agreement", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves string annotations through sys.modules, so the
    # module must be registered before it runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.datasets
def test_xstest_accuracy_stays_above_floor() -> None:
    datasets_dir = _datasets_dir()
    if not (datasets_dir / "xstest").is_dir():
        pytest.skip(f"XSTest completions not found under {datasets_dir}; set SENTINEL_DATASETS_DIR")
    benchmark = _load_benchmark()

    results = benchmark.run(datasets_dir, benchmark.MODELS)

    # Measured 0.912 overall (n = 2250) with benchmarks/outcome_agreement.py;
    # the floor leaves room for small phrase changes, not for a regression.
    overall = results["overall"]
    assert overall.n == 2250
    assert overall.accuracy >= 0.90, overall.as_dict()
