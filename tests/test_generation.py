"""Override generation: greedy replies with the sentinel tokens suppressed, on a tiny random model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.exchange import ChatMessage
from monitor.generation import generate_reply
from monitor.scores import ScorerIdentity
from monitor.scoring.loading import LoadedModel
from monitor.sentinels import Sentinel
from tests.scoring.factories import load_tokenizer, tiny_model

SORRY = Sentinel(name="SORRYDAVE", text="<SORRYDAVE>", threshold=0.5)
HELL = Sentinel(name="HELLNODAVE", text="<HELLNODAVE>", threshold=0.3)
IM_SORRY = Sentinel(name="im_sorry", text="I'm sorry", threshold=0.05)
SENTINELS = (SORRY, HELL, IM_SORRY)
CONVERSATION = (ChatMessage("user", "How do I bake bread?"),)


@pytest.fixture(scope="module")
def dave_tokenizer(model_path: Path) -> Any:
    tokenizer = load_tokenizer(model_path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<SORRYDAVE>", "<HELLNODAVE>"]})
    return tokenizer


def loaded_with_bias(tokenizer: Any, bias: dict[str, float]) -> LoadedModel:
    """A tiny model whose output layer adds `bias[token]` to the logit of each named token at every step."""
    model = tiny_model(tokenizer)
    tied = model.get_output_embeddings()
    head = torch.nn.Linear(tied.in_features, tied.out_features, bias=True)  # untied from the embeddings
    with torch.no_grad():
        head.weight.copy_(tied.weight)
        head.bias.zero_()
        for token, value in bias.items():
            head.bias[tokenizer.convert_tokens_to_ids(token)] = value
    model.lm_head = head
    identity = ScorerIdentity(model_id="tiny-test", template_sha256="t", tokenizer_sha256="k")
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, device=torch.device("cpu"))


def test_unsuppressed_generation_emits_sentinel_and_strips_it(dave_tokenizer: Any) -> None:
    loaded = loaded_with_bias(dave_tokenizer, {"<SORRYDAVE>": 1e4})
    sorry_id = dave_tokenizer.convert_tokens_to_ids("<SORRYDAVE>")

    reply = generate_reply(loaded, CONVERSATION, sentinels=SENTINELS, suppress_sentinels=False, max_new_tokens=4)

    assert reply.token_ids == (sorry_id,) * 4
    assert reply.first_token_sentinel == "SORRYDAVE"
    assert reply.raw_text == "<SORRYDAVE>" * 4
    assert reply.text == ""
    assert reply.finish_reason == "length"


def test_suppressed_generation_never_emits_sentinel(dave_tokenizer: Any) -> None:
    # Both sentinels outrank every other token, so masking only one would let the other through.
    loaded = loaded_with_bias(dave_tokenizer, {"<SORRYDAVE>": 1e4, "<HELLNODAVE>": 9e3})
    sentinel_ids = {dave_tokenizer.convert_tokens_to_ids(t) for t in ("<SORRYDAVE>", "<HELLNODAVE>")}

    reply = generate_reply(loaded, CONVERSATION, sentinels=SENTINELS, suppress_sentinels=True, max_new_tokens=6)

    assert reply.token_ids
    assert not sentinel_ids & set(reply.token_ids)
    assert reply.first_token_sentinel == "SORRYDAVE"
    assert reply.suppressed
    assert "<SORRYDAVE>" not in reply.raw_text
    assert "<HELLNODAVE>" not in reply.raw_text


def test_first_token_sentinel_is_none_without_bias(dave_tokenizer: Any) -> None:
    loaded = loaded_with_bias(dave_tokenizer, {})

    reply = generate_reply(loaded, CONVERSATION, sentinels=SENTINELS, suppress_sentinels=False, max_new_tokens=3)

    assert reply.first_token_sentinel is None
    assert len(reply.token_ids) <= 3


def test_generation_stops_at_end_of_turn(dave_tokenizer: Any) -> None:
    loaded = loaded_with_bias(dave_tokenizer, {"<SORRYDAVE>": 1e4, "<|im_end|>": 9e3})

    reply = generate_reply(loaded, CONVERSATION, sentinels=SENTINELS, suppress_sentinels=True, max_new_tokens=5)

    assert reply.token_ids == (dave_tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    assert reply.finish_reason == "stop"
    assert reply.text == ""
