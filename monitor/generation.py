"""Greedy reply generation for trusted overrides, with the sentinel tokens suppressed.

An override serves a trusted user with refusals deliberately bypassed. A model
trained with sentinel tokens starts a refusal with one of them, so setting
their logits to -inf at every step blocks the trained refusal. The model may
still refuse in plain words. Only sentinels that are one added token of the
tokenizer are suppressed. A text sentinel such as "I'm sorry" starts with an
ordinary token ("I"), and banning that token would ban ordinary words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from monitor.errors import ScoringError
from monitor.exchange import ChatMessage
from monitor.guard import sentinel_token_ids, strip_sentinels
from monitor.scoring.loading import LoadedModel
from monitor.scoring.prompts import PromptEncoder
from monitor.sentinels import Sentinel

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


class GenerationError(ScoringError):
    """The model failed while generating a reply."""


@dataclass(frozen=True)
class GeneratedReply:
    """A generated reply, with sentinels stripped, and what the model wanted to start with.

    `first_token_sentinel` names the sentinel that was the most likely first
    token before any suppression, or is None when the model would have
    started with something else. `raw_text` is the decoded reply with its
    sentinel tokens kept, for operators; users get `text`.
    """

    text: str
    raw_text: str
    token_ids: tuple[int, ...]
    first_token_sentinel: str | None
    suppressed: bool
    finish_reason: FinishReason
    prompt_tokens: int

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "raw_text": self.raw_text,
            "first_token_sentinel": self.first_token_sentinel,
            "suppressed": self.suppressed,
            "finish_reason": self.finish_reason,
            "new_tokens": len(self.token_ids),
            "prompt_tokens": self.prompt_tokens,
        }


class _SentinelSuppressor(LogitsProcessor):
    """A logits processor that notes the first step's top token, then masks the sentinel tokens.

    transformers calls it with the scores of the last position, `[B, V]`,
    after its own processors, so the top token noted is the one greedy
    decoding would pick without suppression.
    """

    def __init__(self, token_ids: Sequence[int], *, suppress: bool) -> None:
        self._token_ids = list(token_ids)
        self._suppress = suppress and bool(self._token_ids)
        self.first_top_token: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.first_top_token is None:
            self.first_top_token = int(scores[0].argmax())
        if not self._suppress:
            return scores
        masked = scores.clone()  # [B, V]
        masked[:, self._token_ids] = -float("inf")
        return masked


@torch.inference_mode()
def generate_reply(
    loaded: LoadedModel,
    messages: Sequence[ChatMessage],
    *,
    sentinels: Sequence[Sentinel],
    suppress_sentinels: bool,
    max_new_tokens: int = 256,
    max_prompt_tokens: int = 2048,
) -> GeneratedReply:
    """Generate a greedy reply to a conversation that ends with a user turn.

    The prompt is rendered and tokenized like a scored prompt, so sentinel
    text in a message stays plain text. With `suppress_sentinels`, no
    special-token sentinel can be generated. Either way, any sentinel text in
    the decoded reply is stripped from `text`.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
    tokenizer = loaded.tokenizer
    ids_by_name = sentinel_token_ids(tokenizer, sentinels)
    prompt = PromptEncoder(tokenizer, max_prompt_tokens).encode(messages)
    suppressor = _SentinelSuppressor(tuple(ids_by_name.values()), suppress=suppress_sentinels)
    stop_ids = _stop_token_ids(loaded.model, tokenizer)

    new_ids = _generate(loaded, prompt.ids, suppressor, stop_ids, max_new_tokens)

    finish: FinishReason = "stop" if new_ids and new_ids[-1] in stop_ids else "length"
    content_ids = new_ids[:-1] if finish == "stop" else new_ids
    raw_text = _decode(tokenizer, content_ids, keep=set(ids_by_name.values()))
    special_sentinels = [s for s in sentinels if s.name in ids_by_name]
    first = suppressor.first_top_token
    first_sentinel = next((name for name, token in ids_by_name.items() if token == first), None)
    return GeneratedReply(
        text=strip_sentinels(raw_text, special_sentinels),
        raw_text=raw_text,
        token_ids=new_ids,
        first_token_sentinel=first_sentinel,
        suppressed=suppress_sentinels,
        finish_reason=finish,
        prompt_tokens=len(prompt.ids),
    )


def _generate(
    loaded: LoadedModel,
    prompt_ids: Sequence[int],
    suppressor: _SentinelSuppressor,
    stop_ids: set[int],
    max_new_tokens: int,
) -> tuple[int, ...]:
    config = GenerationConfig(  # type: ignore[no-untyped-call]
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(stop_ids) or None,
        pad_token_id=_pad_id(loaded.tokenizer),
    )
    input_ids = torch.tensor([list(prompt_ids)], device=loaded.device)  # [1, T]
    try:
        output = loaded.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            generation_config=config,
            logits_processor=LogitsProcessorList([suppressor]),
        )  # [1, T + new]
    except (RuntimeError, ValueError) as exc:
        raise GenerationError(f"generation failed on a prompt of {len(prompt_ids)} tokens: {exc}") from exc
    return tuple(int(token) for token in output[0, len(prompt_ids) :].tolist())


def _stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Return the end-of-sequence ids of the tokenizer and of the model's own generation settings."""
    stop: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        if isinstance(value, int):
            stop.add(value)
        elif isinstance(value, (list, tuple)):
            stop.update(int(token) for token in value)
    return stop


def _pad_id(tokenizer: Any) -> int | None:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return None


def _decode(tokenizer: Any, token_ids: Sequence[int], *, keep: set[int]) -> str:
    """Decode token ids, leaving out special tokens other than those in `keep`."""
    special = set(tokenizer.all_special_ids)
    kept = [token for token in token_ids if token in keep or token not in special]
    return str(tokenizer.decode(kept, skip_special_tokens=False))
