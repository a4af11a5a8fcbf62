"""Tiny random models with the real SmolLM2 tokenizer, for exact and fast scoring tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from monitor.scores import ScorerIdentity
from monitor.scoring.loading import LoadedModel
from monitor.scoring.scorer import Scorer
from monitor.sentinels import Sentinel
from monitor.settings import ScoringSettings

SENTINELS = (
    Sentinel(name="im_sorry", text="I'm sorry", threshold=0.5),
    Sentinel(name="i_cant", text="I can't", threshold=0.5),
    Sentinel(name="single", text="I", threshold=0.5),
    Sentinel(name="special", text="<|im_end|>", threshold=0.5),
)


def load_tokenizer(model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_path)


def tiny_model(tokenizer: Any, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A 2-layer Llama with the tokenizer's vocabulary and large random weights (peaked distributions)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.3,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(dtype)
    model.eval()
    return model


def make_scorer(
    model: Any,
    tokenizer: Any,
    sentinels: tuple[Sentinel, ...] = SENTINELS,
    **settings: Any,
) -> Scorer:
    identity = ScorerIdentity(model_id="tiny-test", template_sha256="t", tokenizer_sha256="k")
    loaded = LoadedModel(model=model, tokenizer=tokenizer, identity=identity, device=torch.device("cpu"))
    return Scorer(loaded, sentinels, ScoringSettings(sentinels=sentinels, **settings))


@torch.inference_mode()
def brute_force_logprob(model: Any, prompt_ids: tuple[int, ...], sentinel_ids: tuple[int, ...]) -> float:
    """log P(sentinel | prompt) from one plain forward pass over prompt + sentinel, full logits, float32."""
    ids = torch.tensor([list(prompt_ids) + list(sentinel_ids)])
    logprobs = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]  # [T, V]
    start = len(prompt_ids) - 1
    return sum(logprobs[start + j, token].item() for j, token in enumerate(sentinel_ids))
