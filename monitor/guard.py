"""Sentinel hygiene: strip sentinels from replies, and find sentinels written into user-controlled text.

A model trained with sentinel tokens begins its refusals with them, so the
serving side removes them before a user sees the reply (`strip_sentinels`).
Users in turn must not be able to write a sentinel into their own messages,
neither as its exact text nor in a disguised form that a model might still
read as the sentinel. `InputGuard` finds such text, replaces it with a neutral
marker in the copy of the conversation that is scored, and reports each
occurrence as an injection attempt.

Only sentinels that are markers are guarded: a special token of the tokenizer,
or a text in brackets such as `<SORRYDAVE>` or `<|refuse|>`. A refusal prefix
such as "I'm sorry" is ordinary language, and users may write it freely.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

from monitor.exchange import ChatMessage, Role
from monitor.sentinels import Sentinel

# The neutral text that replaces a sentinel in the scored copy of user-controlled text.
MARKER = "[sentinel]"

# NOTE: system messages are guarded too. In chat-completions APIs the caller
# writes the system message, so it is as user-controlled as a user turn. An
# operator whose own system prompt names a sentinel gets a finding on every
# exchange, which is easy to spot and to fix in the prompt. Earlier assistant
# turns are not guarded by default: a serving stack that keeps the unstripped
# replies in its history would otherwise be reported as an injection attempt.
DEFAULT_GUARDED_ROLES: tuple[Role, ...] = ("system", "user", "tool")

Disguise = Literal["exact", "case", "separators", "invisible", "lookalike", "delimiters", "token_id"]
DISGUISE_ORDER: tuple[Disguise, ...] = (
    "exact", "case", "separators", "invisible", "lookalike", "delimiters", "token_id",
)  # fmt: skip


@dataclass(frozen=True)
class InjectionFinding:
    """A sentinel found in one message: which sentinel, where, and how it was disguised.

    `start` and `end` are character offsets into the message content as
    received (Python string indexes, end exclusive). The matched text itself
    is never kept, so a finding can be stored after the raw text is purged.
    """

    sentinel: str
    message_index: int
    role: Role
    disguises: tuple[Disguise, ...]
    start: int
    end: int

    def as_json(self) -> dict[str, Any]:
        return {
            "sentinel": self.sentinel,
            "message_index": self.message_index,
            "role": self.role,
            "disguises": list(self.disguises),
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True)
class GuardResult:
    """The conversation with every sentinel in guarded messages replaced by `MARKER`, and what was found."""

    messages: tuple[ChatMessage, ...]
    findings: tuple[InjectionFinding, ...]


def strip_sentinels(reply: str, sentinels: Iterable[Sentinel]) -> str:
    """Remove every occurrence of the sentinels' texts from a reply, and tidy the whitespace around them.

    A sentinel at the start or the end of the reply goes with the whitespace
    next to it. One between two pieces of text is replaced by the larger
    line break around it, by one space when there is only horizontal
    whitespace, and by nothing when it touches text on both sides. Pass only
    marker sentinels: a refusal prefix such as "I'm sorry" would be removed
    from the middle of a reply as well.
    """
    texts = sorted({sentinel.text for sentinel in sentinels}, key=len, reverse=True)
    if not texts:
        return reply
    alternatives = "|".join(re.escape(text) for text in texts)
    pattern = re.compile(rf"\s*(?:{alternatives})(?:\s*(?:{alternatives}))*\s*")

    def replacement(match: re.Match[str]) -> str:
        if match.start() == 0 or match.end() == len(reply):
            return ""
        spaces = re.findall(r"\s+", match.group())
        if not spaces:
            return ""
        widest = max(spaces, key=lambda space: space.count("\n"))
        return widest.strip(" \t") if "\n" in widest else " "

    return pattern.sub(replacement, reply)


def sentinel_token_ids(tokenizer: Any, sentinels: Sequence[Sentinel]) -> dict[str, int]:
    """Return the token id of each sentinel whose text is one added token of the tokenizer.

    Added tokens include the special tokens a model was trained with, such as
    `<SORRYDAVE>`. `tokenizer` is a Hugging Face tokenizer; only its
    `get_added_vocab()` is used.
    """
    added: Mapping[str, int] = tokenizer.get_added_vocab()
    return {sentinel.name: added[sentinel.text] for sentinel in sentinels if sentinel.text in added}


class InputGuard:
    """Finds sentinels in user-controlled messages and neutralises them in the copy that is scored.

    `token_ids` maps sentinel names to their token ids (see
    `sentinel_token_ids`). A sentinel is guarded when it has a token id or
    when its text is a marker in brackets. The token id is also looked for
    written out as a number, for example "token 49152" or "<|49152|>".
    """

    def __init__(
        self,
        sentinels: Sequence[Sentinel],
        token_ids: Mapping[str, int] | None = None,
        *,
        roles: Sequence[Role] = DEFAULT_GUARDED_ROLES,
    ) -> None:
        ids = dict(token_ids or {})
        self._roles = frozenset(roles)
        self._rules = tuple(
            rule for sentinel in sentinels if (rule := _SentinelRule.build(sentinel, ids.get(sentinel.name)))
        )

    @property
    def guarded(self) -> tuple[str, ...]:
        """Names of the sentinels this guard looks for."""
        return tuple(rule.name for rule in self._rules)

    def check(self, messages: Sequence[ChatMessage]) -> GuardResult:
        """Return the conversation with sentinels in guarded messages replaced by `MARKER`, and the findings."""
        checked: list[ChatMessage] = []
        findings: list[InjectionFinding] = []
        for index, message in enumerate(messages):
            matches = self.scan(message.content) if message.role in self._roles else []
            if not matches:
                checked.append(message)
                continue
            findings.extend(
                InjectionFinding(m.sentinel, index, message.role, m.disguises, m.start, m.end) for m in matches
            )
            checked.append(ChatMessage(role=message.role, content=_neutralise(message.content, matches)))
        return GuardResult(messages=tuple(checked), findings=tuple(findings))

    def scan(self, text: str) -> list[Match]:
        """Find the sentinels in one text, as non-overlapping matches ordered by position."""
        if not self._rules:
            return []
        folded = _FoldedText.of(text)
        candidates = [match for rule in self._rules for match in rule.find(text, folded)]
        return _without_overlaps(candidates)


@dataclass(frozen=True)
class Match:
    """One sentinel occurrence in a text: `text[start:end]`."""

    sentinel: str
    disguises: tuple[Disguise, ...]
    start: int
    end: int


# Characters that render as nothing. They are dropped before matching, so
# "<SORRY\u200bDAVE>" reads as "<SORRYDAVE>". Format characters (category Cf)
# cover the zero-width space, joiners, word joiner, byte order mark, soft
# hyphen, bidirectional controls and the tag characters U+E0000-U+E007F.
_INVISIBLE_EXTRA = frozenset(
    chr(code)
    for code in (
        *range(0xFE00, 0xFE10),  # variation selectors 1-16
        *range(0xE0100, 0xE01F0),  # variation selectors 17-256
        0x034F,  # combining grapheme joiner
        0x115F, 0x1160, 0x3164, 0xFFA0,  # Hangul fillers
    )
)  # fmt: skip


def _is_invisible(char: str) -> bool:
    return char in _INVISIBLE_EXTRA or unicodedata.category(char) == "Cf"


# Letters of other scripts that look like Latin letters, and brackets that
# look like angle brackets. NFKD already maps fullwidth forms, mathematical
# letters, circled letters and ligatures to ASCII, so only what it leaves
# alone is listed here.
# NOTE: this is a hand-written subset of Unicode's confusables
# (UTS #39, confusables.txt): Cyrillic, Greek, small capitals, Lisu and
# bracket lookalikes. Letters of other scripts pass unmapped.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic capitals
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
        "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ү": "Y", "Ԁ": "D", "Ԛ": "Q", "Ԝ": "W", "Ӏ": "I",
        # Cyrillic small letters
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
        "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ү": "y", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l",
        "һ": "h", "ѵ": "v", "ԍ": "g",
        # Greek capitals
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
        "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
        # Greek small letters
        "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
        "γ": "y", "η": "n", "ϲ": "c", "ϳ": "j",
        # Latin small capitals and other Latin lookalikes
        "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ɪ": "i", "ᴊ": "j", "ᴋ": "k",
        "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v",
        "ᴡ": "w", "ʏ": "y", "ᴢ": "z", "ı": "i", "ɑ": "a", "ɡ": "g", "ℓ": "l",
        # Lisu capitals
        "ꓮ": "A", "ꓐ": "B", "ꓚ": "C", "ꓓ": "D", "ꓰ": "E", "ꓖ": "G", "ꓧ": "H", "ꓲ": "I", "ꓗ": "K", "ꓡ": "L",
        "ꓟ": "M", "ꓠ": "N", "ꓳ": "O", "ꓑ": "P", "ꓣ": "R", "ꓢ": "S", "ꓔ": "T", "ꓴ": "U", "ꓦ": "V", "ꓪ": "W",
        "ꓫ": "X", "ꓬ": "Y", "ꓜ": "Z",
        # Angle bracket lookalikes
        "‹": "<", "›": ">", "«": "<", "»": ">", "〈": "<", "〉": ">", "⟨": "<", "⟩": ">", "˂": "<", "˃": ">",
        "❮": "<", "❯": ">", "ᐸ": "<", "ᐳ": ">", "《": "<", "》": ">",
    }
)  # fmt: skip

# Digits and symbols written for letters, and "i" for "l". Applied to both the
# sentinel and the user's text after case folding, so "<S0RRYDAV3>" and
# "<HE11NODAVE>" read as the sentinel.
_LEET = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "$": "s", "@": "a", "i": "l"})


@functools.lru_cache(maxsize=4096)
def _visual(char: str) -> str:
    """Map one character to the ASCII it looks like, keeping its case; marks and accents are dropped."""
    decomposed = unicodedata.normalize("NFKD", char)
    bare = "".join(c for c in decomposed if unicodedata.category(c) not in ("Mn", "Me"))
    return bare.translate(_CONFUSABLES)


def _fold(text: str) -> str:
    return text.casefold().translate(_LEET)


@dataclass(frozen=True)
class _FoldedText:
    """A text folded for matching, with the index of the original character behind each folded one.

    `skeleton` has invisible characters removed, lookalikes mapped to ASCII,
    case folded, and digits read as the letters they imitate. `plain` is the
    same with digits kept, for finding token ids. Both have one character per
    entry of `origins`.
    """

    skeleton: str
    plain: str
    origins: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> _FoldedText:
        if text.isascii():
            # ASCII has no invisible characters and no lookalikes to map.
            lowered = text.lower()
            return cls(skeleton=lowered.translate(_LEET), plain=lowered, origins=tuple(range(len(text))))
        plain: list[str] = []
        origins: list[int] = []
        for index, char in enumerate(text):
            if _is_invisible(char):
                continue
            for folded in _visual(char).casefold():
                plain.append(folded)
                origins.append(index)
        joined = "".join(plain)
        return cls(skeleton=joined.translate(_LEET), plain=joined, origins=tuple(origins))

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Return the original span of the folded characters `start` to `end` (end exclusive)."""
        return self.origins[start], self.origins[end - 1] + 1


# Brackets a marker sentinel's text may be written in.
_OPEN_BRACKETS = "<[{("
_CLOSE_BRACKETS = ">]})"
_MARKER_TEXT = re.compile(r"^(?P<open>[<\[{(])\|?(?P<core>[^\s|]+?)\|?(?P<close>[>\]})])$")

# Spacing and punctuation allowed between the letters of a disguised marker,
# and between the letters and its brackets: at most 8 non-letters per gap.
_GAP = r"[\W_]{0,8}"
# Joiners allowed between the letters of a marker written in other brackets.
_TIGHT_GAP = r"[_.\-]?"

# A token id written out: in brackets ("<|49152|>", "[49153]") or after the
# word "token" ("token 49152", "token id: 49152", "token_id=49152"). Thousands
# separators are allowed ("49,152").
_NUMBER = r"(?<!\d)(?:\d{1,3}(?:[,._' ]\d{3})+|\d+)(?!\d)"
_BRACKETED_NUMBER = re.compile(rf"[<\[{{][\s|]{{0,2}}(?P<number>{_NUMBER})[\s|]{{0,2}}[>\]}}]")
_LABELLED_NUMBER = re.compile(
    rf"(?<!\w)tok(?:en)?(?:[\s_-]*(?:id|number|no|num|index))?[\s:=#'\"]{{0,3}}(?P<number>{_NUMBER})"
)


@dataclass(frozen=True)
class _SentinelRule:
    """The patterns that find one guarded sentinel in folded text."""

    name: str
    text: str
    token_id: int | None
    own: re.Pattern[str] | None
    bracketed: re.Pattern[str] | None
    expected_letters: str

    @classmethod
    def build(cls, sentinel: Sentinel, token_id: int | None) -> _SentinelRule | None:
        marker = _MARKER_TEXT.match(sentinel.text)
        letters = "".join(c for c in sentinel.text if c.isalnum()) if marker else ""
        if not letters and token_id is None:
            return None
        own = bracketed = None
        if letters:
            assert marker is not None
            skeleton = _FoldedText.of(letters).skeleton
            gapped = _GAP.join(re.escape(c) for c in skeleton)
            open_bracket = re.escape(_FoldedText.of(marker.group("open")).skeleton)
            close_bracket = re.escape(_FoldedText.of(marker.group("close")).skeleton)
            own = re.compile(f"{open_bracket}{_GAP}{gapped}{_GAP}{close_bracket}")
            tight = _TIGHT_GAP.join(re.escape(c) for c in skeleton)
            bracketed = re.compile(
                f"[{re.escape(_OPEN_BRACKETS)}] ?{tight} ?[{re.escape(_CLOSE_BRACKETS)}]"
            )
        return cls(sentinel.name, sentinel.text, token_id, own, bracketed, letters)

    def find(self, text: str, folded: _FoldedText) -> list[Match]:
        matches: list[Match] = []
        if self.text in text:
            matches.extend(
                Match(self.name, ("exact",), m.start(), m.end()) for m in re.finditer(re.escape(self.text), text)
            )
        for pattern in (self.own, self.bracketed):
            if pattern is not None:
                matches.extend(self._text_match(text, folded, m) for m in pattern.finditer(folded.skeleton))
        if self.token_id is not None:
            matches.extend(self._token_id_matches(text, folded))
        return matches

    def _text_match(self, text: str, folded: _FoldedText, found: re.Match[str]) -> Match:
        start, end = folded.span(found.start(), found.end())
        original = text[start:end]
        if original == self.text:
            return Match(self.name, ("exact",), start, end)
        disguises = set(_character_disguises(original))
        disguises |= _letter_disguises(original, self.expected_letters)
        target = _FoldedText.of(self.text).skeleton
        if found.group()[0] != target[0] or found.group()[-1] != target[-1]:
            disguises.add("delimiters")
        if _non_letters(found.group()[1:-1]) != _non_letters(target[1:-1]):
            disguises.add("separators")
        return Match(self.name, _ordered(disguises), start, end)

    def _token_id_matches(self, text: str, folded: _FoldedText) -> list[Match]:
        matches = []
        for pattern in (_BRACKETED_NUMBER, _LABELLED_NUMBER):
            for found in pattern.finditer(folded.plain):
                if _number_value(found.group("number")) != self.token_id:
                    continue
                span_start = found.start() if pattern is _BRACKETED_NUMBER else found.start("number")
                start, end = folded.span(span_start, found.end())
                disguises: set[Disguise] = {"token_id", *_character_disguises(text[start:end])}
                matches.append(Match(self.name, _ordered(disguises), start, end))
        return matches


def _character_disguises(original: str) -> set[Disguise]:
    disguises: set[Disguise] = set()
    for char in original:
        if _is_invisible(char):
            disguises.add("invisible")
        elif _visual(char) != char:
            disguises.add("lookalike")
    return disguises


def _letter_disguises(original: str, expected: str) -> set[Disguise]:
    """Compare the letters of a match with the sentinel's letters: a case change, or a digit for a letter."""
    disguises: set[Disguise] = set()
    letters = [
        c for char in original if not _is_invisible(char) for c in _visual(char) if _fold(c).isalnum()
    ]  # fmt: skip
    for seen, wanted in zip(letters, expected):
        if seen == wanted:
            continue
        disguises.add("case" if seen.casefold() == wanted.casefold() else "lookalike")
    if len(letters) != len(expected):
        disguises.add("lookalike")
    return disguises


def _non_letters(skeleton: str) -> str:
    return "".join(c for c in skeleton if not c.isalnum())


def _number_value(number: str) -> int:
    return int("".join(c for c in number if c.isdigit()))


def _ordered(disguises: Iterable[Disguise]) -> tuple[Disguise, ...]:
    present = set(disguises)
    return tuple(kind for kind in DISGUISE_ORDER if kind in present)


def _without_overlaps(matches: list[Match]) -> list[Match]:
    """Keep the longest of overlapping matches, earliest first; an exact match wins a tie."""
    ranked = sorted(matches, key=lambda m: (m.start, -(m.end - m.start), m.disguises != ("exact",)))
    kept: list[Match] = []
    for match in ranked:
        if kept and match.start < kept[-1].end:
            continue
        kept.append(match)
    return kept


def _neutralise(text: str, matches: Sequence[Match]) -> str:
    pieces: list[str] = []
    cursor = 0
    for match in matches:
        pieces.append(text[cursor : match.start])
        pieces.append(MARKER)
        cursor = match.end
    pieces.append(text[cursor:])
    return "".join(pieces)
