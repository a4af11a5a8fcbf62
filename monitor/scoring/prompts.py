"""Render conversations with the model's chat template into token ids, safely and within a length limit.

The template is rendered once with a random placeholder in place of each
message's content. The markup between placeholders is tokenized with the
special tokens recognised (it is the template's own control text), while each
message's content is tokenized with `split_special_tokens=True`, so a user who
types "<|im_end|>" or a sentinel's text gets plain-text tokens, never the
control token.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

from monitor.errors import ScoringError
from monitor.exchange import ChatMessage


@dataclass(frozen=True)
class Segment:
    """A run of prompt tokens: template markup (`message_index` None) or one message's content."""

    ids: tuple[int, ...]
    message_index: int | None


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of a rendered prompt, ending with the generation prompt."""

    ids: tuple[int, ...]
    truncated: bool


class PromptEncoder:
    """Turns a conversation into prompt token ids for one tokenizer."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._max_tokens = max_tokens

    def encode(self, messages: Sequence[ChatMessage]) -> EncodedPrompt:
        """Render and tokenize, dropping the oldest turns first when the prompt is too long."""
        if not messages or messages[-1].role != "user":
            raise ScoringError("a conversation to score must end with a user turn")
        kept = list(range(len(messages)))
        segments = self.render_segments([messages[i] for i in kept])

        while _length(segments) > self._max_tokens:
            dropped = _oldest_turn(messages, kept)
            if not dropped:
                segments = self._shorten_contents(segments)
                return EncodedPrompt(ids=_flatten(segments), truncated=True)
            kept = [index for index in kept if index not in dropped]
            segments = self.render_segments([messages[i] for i in kept])

        return EncodedPrompt(ids=_flatten(segments), truncated=len(kept) < len(messages))

    def render_segments(self, messages: Sequence[ChatMessage]) -> list[Segment]:
        """Render the chat template with the generation prompt and tokenize it segment by segment."""
        nonce = secrets.token_hex(8)
        placeholders = [f"\ue000{nonce}:{index}\ue001" for index in range(len(messages))]
        conversation = [{"role": m.role, "content": p} for m, p in zip(messages, placeholders)]
        rendered = self._render(conversation)

        pattern = re.compile("\ue000" + nonce + r":(\d+)\ue001")
        segments: list[Segment] = []
        cursor = 0
        for match in pattern.finditer(rendered):
            segments.append(Segment(self._markup_ids(rendered[cursor : match.start()]), None))
            index = int(match.group(1))
            segments.append(Segment(self._content_ids(messages[index].content), index))
            cursor = match.end()
        segments.append(Segment(self._markup_ids(rendered[cursor:]), None))
        return [s for s in segments if s.ids or s.message_index is not None]

    def _render(self, conversation: list[dict[str, str]]) -> str:
        try:
            rendered = self._tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 raises its own error types, and templates may raise anything
            raise ScoringError(f"the chat template failed to render a conversation of {len(conversation)} turns: {exc}") from exc
        if not isinstance(rendered, str):
            raise ScoringError(f"the chat template returned {type(rendered).__name__}, expected a string")
        return rendered

    def _markup_ids(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        return tuple(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _content_ids(self, text: str) -> tuple[int, ...]:
        if not text:
            return ()
        return tuple(self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _shorten_contents(self, segments: list[Segment]) -> list[Segment]:
        # Only the system prompt(s) and the last user turn are left. The system
        # prompt keeps its head and gets half the content budget, or more when
        # the user turn is short; the user turn keeps its tail, which is
        # nearest to the reply being scored.
        markup = sum(len(s.ids) for s in segments if s.message_index is None)
        budget = self._max_tokens - markup
        if budget <= 0:
            raise ScoringError(
                f"the chat template alone takes {markup} tokens, above scoring.max_prompt_tokens={self._max_tokens}"
            )
        content = [s for s in segments if s.message_index is not None]
        last = content[-1]
        others_total = sum(len(s.ids) for s in content[:-1])
        others_budget = min(others_total, max(budget // 2, budget - len(last.ids)))
        last_keep = min(len(last.ids), budget - others_budget)
        shortened: list[Segment] = []
        for segment in segments:
            if segment.message_index is None:
                shortened.append(segment)
            elif segment is last:
                shortened.append(Segment(segment.ids[len(segment.ids) - last_keep :] if last_keep else (), segment.message_index))
            else:
                keep = min(len(segment.ids), others_budget)
                others_budget -= keep
                shortened.append(Segment(segment.ids[:keep], segment.message_index))
        return shortened


def _oldest_turn(messages: Sequence[ChatMessage], kept: list[int]) -> list[int]:
    """Return the indexes of the oldest droppable turn: a user message with the replies that follow it.

    System messages and the last user message are never dropped. Dropping a
    user message together with its replies keeps the roles alternating, which
    some chat templates insist on.
    """
    last_user = kept[-1]
    candidates = [index for index in kept if index != last_user and messages[index].role != "system"]
    if not candidates:
        return []
    first = candidates[0]
    dropped = [first]
    if messages[first].role == "user":
        for index in candidates[1:]:
            if messages[index].role == "user":
                break
            dropped.append(index)
    return dropped


def _length(segments: Sequence[Segment]) -> int:
    return sum(len(s.ids) for s in segments)


def _flatten(segments: Sequence[Segment]) -> tuple[int, ...]:
    return tuple(token for segment in segments for token in segment.ids)
