"""Outcome detection: decide whether the reply of an exchange was a refusal.

Evidence is taken in this order, and the first that applies decides:

1. a field logged by the serving side: `reply_sentinel` (refused by that
   sentinel), then `refused` (refused or answered);
2. a configured sentinel's text at the start of the raw reply, after leading
   whitespace (refused by that sentinel);
3. the refusal-phrase detector on a non-empty reply (refused or answered);
4. no reply, or a reply of whitespace only: `unknown`.

The detector looks for apology, inability and refusal phrases in the opening
of the reply only, so a reply that helps at length and adds a caveat later
counts as answered. `docs/outcome-detection.md` gives its agreement with
human labels.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal, Sequence

from monitor.exchange import Exchange
from monitor.sentinels import Sentinel

OutcomeKind = Literal["refused", "answered", "unknown"]
DecidedBy = Literal["field", "sentinel", "detector", "none"]


@dataclass(frozen=True)
class Outcome:
    """The outcome of an exchange and the evidence that decided it.

    `sentinel` is the name of the deciding sentinel (or the serving side's
    `reply_sentinel`). `detail` is the refusal phrase the detector matched,
    lower-cased, never the whole reply.
    """

    kind: OutcomeKind
    decided_by: DecidedBy
    sentinel: str | None = None
    detail: str | None = None


def detect_outcome(exchange: Exchange, sentinels: Sequence[Sentinel]) -> Outcome:
    """Decide the outcome of an exchange from its fields, its sentinels or its reply text."""
    from_fields = _outcome_from_fields(exchange)
    if from_fields is not None:
        return from_fields

    reply = exchange.reply
    if reply is None or not reply.strip():
        return Outcome(kind="unknown", decided_by="none")

    sentinel = find_leading_sentinel(reply, sentinels)
    if sentinel is not None:
        return Outcome(kind="refused", decided_by="sentinel", sentinel=sentinel.name)

    phrase = detect_refusal_phrase(reply)
    if phrase is not None:
        return Outcome(kind="refused", decided_by="detector", detail=phrase)
    return Outcome(kind="answered", decided_by="detector")


def _outcome_from_fields(exchange: Exchange) -> Outcome | None:
    # NOTE: a `reply_sentinel` wins over `refused=False` when a log carries
    # both, because naming the sentinel is the more specific statement.
    if exchange.reply_sentinel is not None:
        return Outcome(kind="refused", decided_by="field", sentinel=exchange.reply_sentinel)
    if exchange.refused is True:
        return Outcome(kind="refused", decided_by="field")
    if exchange.refused is False:
        return Outcome(kind="answered", decided_by="field")
    return None


def find_leading_sentinel(reply: str, sentinels: Sequence[Sentinel]) -> Sentinel | None:
    """Return the sentinel whose text starts the reply, ignoring leading whitespace.

    The comparison is exact, case and apostrophes included, because the
    sentinel's probability was computed for exactly that text. When several
    texts match (`I'm sorry` and `I'm sorry, but`), the longest wins.
    """
    start = _LEADING_WHITESPACE.sub("", reply)
    matches = [sentinel for sentinel in sentinels if start.startswith(sentinel.text)]
    if not matches:
        return None
    return max(matches, key=lambda sentinel: len(sentinel.text))


# Unicode whitespace and a byte-order mark, which some logging paths leave in front.
_LEADING_WHITESPACE = re.compile(r"^[\s\ufeff]+")


# A refusal states itself in the opening of a reply. Two sentences cover an
# acknowledgement followed by the refusal ("I understand why you ask. However,
# I can't..."). The character cap stops a long first sentence that helps from
# carrying the window on to a caveat further on.
OPENING_SENTENCES = 2
OPENING_MAX_CHARS = 300

# Typographic apostrophes that NFKC leaves alone: right and left single
# quotation marks, modifier letter apostrophe, prime.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'"})
_WHITESPACE_RUN = re.compile(r"\s+")
_LEADING_MARKUP = re.compile(r"^[\s*_#>\"'(\[-]+")
_SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]*_]+)?(?=\s|$)")

_I_CANNOT = r"(?:i (?:can'?t|cannot|can not|won'?t|will not)|i(?:'?m| am) (?:unable|not able) to)"
_ADVERB = r"(?:(?:really|simply|ethically|responsibly|legally|morally|in good conscience|personally|actually|possibly),? )?"
# Verbs for the actions an assistant declines. "Guarantee" and "stress" are
# not among them, so a caveat such as "I can't guarantee" is not a refusal.
_ASSIST_VERB = (
    r"(?:help|assist|provide|give|offer|fulfil|fulfill|comply|create|write|generate|produce|compose|draft"
    r"|support|answer|respond|engage|participate|encourage|endorse|condone|promote|facilitate|share|disclose"
    r"|reveal|supply|describe|explain|tell|suggest|advise|teach|discuss|continue|complete|perform|carry out"
    r"|make|access|do that|do this|accommodate|agree|contribute|advocate|justify|glorify|entertain|satisfy|go along)"
)
_COPULA = r"(?:is|are|'s|was|were|would be)"
_COPULA_NOT = r"(?:(?:is|are|'s|was|were|would be) (?:not|never)|(?:would not|wouldn'?t) be)"

# NOTE: refusals written as a lecture ("it is important to respect others..."),
# as a stance with its own subject ("an AI language model that does not
# condone...") or as a referral to a helpline carry none of these phrases and
# are read as answered. docs/outcome-detection.md estimates how often.
_REFUSAL_PHRASES = (
    # Apologies. Sympathy ("sorry to hear") and an apology for an earlier
    # mistake often open an answer, so they do not count.
    r"(?:i'?m|i am) (?:so |very |truly |really )?sorry\b(?! to hear| for your| about your| you)",
    r"^sorry\b",
    r"sorry, but",
    r"i (?:must |do )?apologi[sz]e\b(?! for (?:the|any|my) (?:confusion|misunderstanding|mistake|error|oversight))",
    r"(?:my )?apologies, but",
    # Inability or unwillingness to do the requested thing.
    _I_CANNOT + r" " + _ADVERB + _ASSIST_VERB + r"\b(?! but\b)",
    r"i(?:'?m| am) not (?:able|going|willing|comfortable|in a position) to\b(?! lie\b)",
    r"i (?:must|have to|need to|will have to|'ll have to) (?:respectfully |politely )?(?:decline|refuse|refrain)",
    r"i (?:don'?t|do not) (?:feel comfortable|think (?:it's|it is) (?:appropriate|accurate|fair))",
    r"i (?:would|'d) (?:rather not|prefer not)",
    r"i refuse",
    r"i (?:don'?t|do not) have (?:access|the ability)",
    r"not something (?:that )?i (?:can|will|am able to)",
    # Judgements of the request and appeals to policy.
    _COPULA_NOT + r" (?:an? )?(?:appropriate|ethical|acceptable|advisable|responsible)",
    _COPULA + r" (?:highly |very )?(?:inappropriate|unethical)",
    _COPULA + r" never (?:okay|ok|the answer)",
    _COPULA_NOT + r" (?:morally )?justified",
    r"against (?:my|our|the) (?:\w+ ){0,2}(?:guidelines|policy|policies|programming|principles)",
    r"(?:not within|outside|beyond) (?:my|the) (?:\w+ )?(?:programming|guidelines|scope)",
    r"i (?:must|have to) (?:inform|point out|remind|clarify)",
    r"i (?:must |would )?(?:strongly )?(?:advise|urge|caution) (?:you )?against",
    # Rejections of the premise of the request.
    r"(?:is|'s) not (?:accurate|fair|correct|true)(?: or \w+)? to (?:say|suggest|claim|assume)",
    r"i (?:strongly )?(?:disagree|condemn|(?:do not|don'?t|cannot|can'?t) (?:support|condone|endorse))",
    r"i (?:must|have to) (?:politely |respectfully )?(?:challenge|reject|question)",
)
_REFUSAL_PATTERN = re.compile(r"\b(?:" + "|".join(_REFUSAL_PHRASES) + r")\b")


def detect_refusal_phrase(reply: str) -> str | None:
    """Return the refusal phrase found in the opening of a reply, lower-cased, or None.

    The opening is the first `OPENING_SENTENCES` sentences, cut at
    `OPENING_MAX_CHARS` characters. Matching is case-insensitive, on word
    boundaries, after typographic apostrophes are replaced by `'`.
    """
    opening = extract_opening(normalize_reply(reply))
    match = _REFUSAL_PATTERN.search(opening)
    if match is None:
        return None
    return match.group(0)


def normalize_reply(reply: str) -> str:
    """Return the reply NFKC-normalised, case-folded, with plain apostrophes and single spaces."""
    text = unicodedata.normalize("NFKC", reply).casefold()
    text = text.translate(_APOSTROPHES)
    return _WHITESPACE_RUN.sub(" ", text).strip()


def extract_opening(text: str) -> str:
    """Return the first sentences of a normalised reply, without leading markup."""
    text = _LEADING_MARKUP.sub("", text)
    end = 0
    for _ in range(OPENING_SENTENCES):
        boundary = _SENTENCE_END.search(text, end)
        if boundary is None:
            end = len(text)
            break
        end = boundary.end()
    return text[: min(end, OPENING_MAX_CHARS)]
