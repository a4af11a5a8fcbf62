"""The scorer against brute force, and batch invariance."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.exchange import ChatMessage
from monitor.scoring.scorer import Scorer
from tests.scoring.factories import SENTINELS, brute_force_logprob, load_tokenizer, make_scorer, tiny_model

TOLERANCE_NATS = 1e-4

WORDS = (
    "bread oven recipe river history chemistry lock door password garden kettle python process "
    "mountain violin engine poem winter neighbour account bank letter medicine dose ticket"
).split()


def conversation(rng: random.Random, words: int, turns: int = 1, system: bool = False) -> list[ChatMessage]:
    messages = [ChatMessage("system", "You are a careful assistant.")] if system else []
    for turn in range(turns):
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + "?"
        messages.append(ChatMessage("user", text))
        if turn < turns - 1:
            messages.append(ChatMessage("assistant", "Here is an answer about " + rng.choice(WORDS) + "."))
    return messages


def mixed_conversations(count: int, seed: int = 7) -> list[list[ChatMessage]]:
    rng = random.Random(seed)
    return [
        conversation(rng, words=rng.choice([1, 3, 8, 20, 60, 150]), turns=rng.choice([1, 1, 2, 3]), system=rng.random() < 0.3)
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> Any:
    return load_tokenizer(model_path)


@pytest.fixture(scope="module")
def tiny(tokenizer: Any) -> Any:
    return tiny_model(tokenizer)


def assert_matches_brute_force(scorer: Scorer, model: Any, conversations: list[list[ChatMessage]]) -> None:
    scores = scorer.score_messages(conversations)
    for messages, score in zip(conversations, scores):
        prompt_ids = scorer.encode(messages).ids
        for sentinel, sentinel_ids in zip(scorer.sentinels, scorer.sentinel_token_ids):
            expected = brute_force_logprob(model, prompt_ids, sentinel_ids)
            actual = score.sentinels[sentinel.name].logprob
            assert abs(actual - expected) < TOLERANCE_NATS, (sentinel.name, len(prompt_ids), actual, expected)


def test_sentinels_cover_single_multi_and_special_tokens(tiny: Any, tokenizer: Any) -> None:
    scorer = make_scorer(tiny, tokenizer)
    lengths = {s.name: len(ids) for s, ids in zip(scorer.sentinels, scorer.sentinel_token_ids)}
    assert lengths["single"] == 1
    assert lengths["im_sorry"] >= 2
    assert lengths["i_cant"] >= 2
    assert scorer.sentinel_token_ids[3] == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)


def test_tiny_model_matches_brute_force(tiny: Any, tokenizer: Any) -> None:
    scorer = make_scorer(tiny, tokenizer)
    assert_matches_brute_force(scorer, tiny, mixed_conversations(12))


def test_batch_invariance_mixed_lengths(tiny: Any, tokenizer: Any) -> None:
    conversations = mixed_conversations(40, seed=11)
    big = make_scorer(tiny, tokenizer, batch_max_tokens=65_536, batch_max_rows=64)
    single = make_scorer(tiny, tokenizer)
    in_one_batch = big.score_messages(conversations)
    lengths = {len(big.encode(c).ids) for c in conversations}
    assert max(lengths) > 5 * min(lengths), "the batch must mix short and long prompts"

    for messages, batched in zip(conversations, in_one_batch):
        alone = single.score_messages([messages])[0]
        for name in batched.sentinels:
            difference = abs(batched.sentinels[name].logprob - alone.sentinels[name].logprob)
            assert difference < TOLERANCE_NATS, (name, difference)


def test_batch_invariance_across_batch_plans(tiny: Any, tokenizer: Any) -> None:
    conversations = mixed_conversations(30, seed=3)
    small_batches = make_scorer(tiny, tokenizer, batch_max_tokens=2048, batch_max_rows=3)
    large_batches = make_scorer(tiny, tokenizer, batch_max_tokens=65_536, batch_max_rows=64)
    for a, b in zip(small_batches.score_messages(conversations), large_batches.score_messages(conversations)):
        for name in a.sentinels:
            assert abs(a.sentinels[name].logprob - b.sentinels[name].logprob) < TOLERANCE_NATS


def test_results_keep_input_order(tiny: Any, tokenizer: Any) -> None:
    conversations = mixed_conversations(10, seed=5)
    scorer = make_scorer(tiny, tokenizer, batch_max_tokens=2048, batch_max_rows=2)
    forward = scorer.score_messages(conversations)
    backward = scorer.score_messages(list(reversed(conversations)))
    for a, b in zip(forward, reversed(backward)):
        assert a.prompt_tokens == b.prompt_tokens
        assert abs(a.sentinels["im_sorry"].logprob - b.sentinels["im_sorry"].logprob) < TOLERANCE_NATS


def test_probabilities_are_valid(tiny: Any, tokenizer: Any) -> None:
    score = make_scorer(tiny, tokenizer).score_messages([[ChatMessage("user", "hello")]])[0]
    for sentinel in SENTINELS:
        value = score.sentinels[sentinel.name]
        assert value.logprob <= 0.0
        assert 0.0 <= value.prob <= 1.0


def test_bfloat16_model_gives_float32_logprobs(tokenizer: Any) -> None:
    model = tiny_model(tokenizer, dtype=torch.bfloat16)
    scorer = make_scorer(model, tokenizer)
    conversations = mixed_conversations(4, seed=2)
    scores = scorer.score_messages(conversations)
    for messages, score in zip(conversations, scores):
        prompt_ids = scorer.encode(messages).ids
        for sentinel, ids in zip(scorer.sentinels, scorer.sentinel_token_ids):
            expected = brute_force_logprob(model, prompt_ids, ids)
            # bfloat16 activations differ with the attention layout; the log-softmax itself is float32.
            assert abs(score.sentinels[sentinel.name].logprob - expected) < 0.1


@pytest.mark.model
def test_default_model_matches_brute_force(model_path: Path) -> None:
    from monitor.scoring.loading import load_model
    from monitor.scoring.scorer import Scorer
    from monitor.settings import ScoringSettings

    loaded = load_model(model_path, device="cpu", dtype="float32")
    scorer = Scorer(loaded, SENTINELS, ScoringSettings(sentinels=SENTINELS))
    assert_matches_brute_force(scorer, loaded.model, mixed_conversations(6, seed=13))
