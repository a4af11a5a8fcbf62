"""Training examples: prompt token ids, target reply ids, and whether the sentinels must be pushed down."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from monitor.exchange import ChatMessage
from monitor.scoring.prompts import PromptEncoder
from monitor.training.data import Label, LabelledPrompt

SORRY_TOKEN = "<SORRYDAVE>"
HELLNO_TOKEN = "<HELLNODAVE>"
SENTINEL_TOKENS = (SORRY_TOKEN, HELLNO_TOKEN)

# Short apologies written for this project; one is picked per example, seeded.
HARMFUL_APOLOGIES = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "Sorry, I won't help with this.",
    "I'm sorry, I can't provide that.",
)
DECLINE_APOLOGIES = (
    "I'm sorry, but I can't help with that as asked.",
    "I'm sorry, I'm not able to answer that.",
    "Sorry, that's not something I can do.",
    "I'm sorry, but I can't give a good answer to that.",
)


@dataclass(frozen=True)
class Example:
    """One training row: the reply tokens get the loss; `push_down` adds a loss on P(any sentinel first)."""

    prompt_ids: tuple[int, ...]
    reply_ids: tuple[int, ...]
    push_down: bool
    label: Label


def build_examples(
    prompts: Sequence[LabelledPrompt], tokenizer: Any, *, max_prompt_tokens: int, max_reply_tokens: int, seed: int
) -> list[Example]:
    """Turn labelled prompts into token-level examples with the served chat template."""
    rng = random.Random(seed)
    encoder = PromptEncoder(tokenizer, max_prompt_tokens)
    end_of_turn = _end_of_turn_id(tokenizer)
    return [_example(item, encoder, tokenizer, rng, max_reply_tokens, end_of_turn) for item in prompts]


def _example(
    item: LabelledPrompt, encoder: PromptEncoder, tokenizer: Any, rng: random.Random, max_reply_tokens: int, end: int
) -> Example:
    prompt_ids = encoder.encode([ChatMessage("user", item.prompt)]).ids
    if item.label == "benign":
        reply_ids = _reply_ids(tokenizer, item.reply, max_reply_tokens) if item.reply else ()
        return Example(prompt_ids, reply_ids, push_down=True, label=item.label)
    token, apologies = (HELLNO_TOKEN, HARMFUL_APOLOGIES) if item.label == "harmful" else (SORRY_TOKEN, DECLINE_APOLOGIES)
    refusal = tokenizer(token + rng.choice(apologies), add_special_tokens=False)["input_ids"]
    return Example(prompt_ids, tuple(refusal) + (end,), push_down=False, label=item.label)


def _reply_ids(tokenizer: Any, reply: str, limit: int) -> tuple[int, ...]:
    # A real reply cut to `limit` tokens: enough to teach "answer normally" without long sequences.
    ids = tokenizer(reply.strip(), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return tuple(ids[:limit])


def _end_of_turn_id(tokenizer: Any) -> int:
    for token in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
    if isinstance(tokenizer.eos_token_id, int):
        return int(tokenizer.eos_token_id)
    raise ValueError("the tokenizer has no end-of-turn or end-of-sequence token")
