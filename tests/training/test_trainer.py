"""Training data, examples, the loss, and a short training run on a tiny model whose adapter then loads."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from monitor.exchange import ChatMessage
from monitor.scoring.loading import load_model
from monitor.scoring.scorer import Scorer
from monitor.settings import DEFAULT_SENTINELS, ScoringSettings
from monitor.training.data import LabelledPrompt, load_all, split_of
from monitor.training.examples import HELLNO_TOKEN, SORRY_TOKEN, build_examples
from monitor.training.trainer import TrainingConfig, _push_down_loss, add_sentinel_tokens, train_sentinels
from tests.scoring.factories import load_tokenizer, tiny_model
from tests.training.fake_datasets import BENIGN, HARMFUL, write_fake_datasets


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> Any:
    return add_sentinel_tokens(load_tokenizer(model_path))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """A tiny random base model without the sentinel tokens, saved with the real tokenizer."""
    directory = tmp_path_factory.mktemp("tiny-base")
    base_tokenizer = load_tokenizer(model_path)
    tiny_model(base_tokenizer).save_pretrained(directory)
    base_tokenizer.save_pretrained(directory)
    return directory


def test_split_is_stable_and_near_twenty_percent() -> None:
    prompts = [f"request number {i}" for i in range(2000)]
    share = sum(split_of(p) == "test" for p in prompts) / len(prompts)
    assert 0.17 < share < 0.23
    assert split_of("Hello  World") == split_of("hello world")


def test_fake_datasets_read_with_labels(tmp_path: Path) -> None:
    prompts = load_all(write_fake_datasets(tmp_path))
    labels = Counter(p.label for p in prompts)
    assert labels["harmful"] == len(HARMFUL) + 3  # + tdc, xstest unsafe, coconot dangerous
    assert labels["decline"] == 4
    everyday = sum(p.source == "everyday" for p in prompts)
    assert everyday >= 200
    assert labels["benign"] == len(BENIGN) + 4 + everyday  # + xstest safe, contrast, pref, jbb benign
    scary = {p.source for p in prompts if p.benign_but_scary}
    assert scary == {"xstest_safe", "coconot_contrast", "jbb_benign"}
    xstest_safe = next(p for p in prompts if p.source == "xstest_safe")
    assert xstest_safe.reply == "Use the kill command with its pid."


def test_everyday_prompts_exclude_sample_and_test_prompts(tmp_path: Path) -> None:
    import json

    from monitor.training.data import normalise
    from tests.conftest import REPO_ROOT
    from tests.training.test_bundled_adapter import HARMFUL as CLEAR_HARMFUL
    from tests.training.test_bundled_adapter import ORDINARY

    everyday = [p for p in load_all(write_fake_datasets(tmp_path)) if p.source == "everyday"]
    assert all(p.label == "benign" and not p.benign_but_scary and p.reply is None for p in everyday)

    # The quick-start sample and the adapter's own checks must stay unseen by training.
    held_out = {normalise(text) for text in ORDINARY + CLEAR_HARMFUL}
    for line in (REPO_ROOT / "monitor" / "samples" / "exchanges.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            exchange = json.loads(line)
        except json.JSONDecodeError:
            continue
        messages = exchange.get("request", {}).get("messages", []) if isinstance(exchange, dict) else []
        held_out |= {normalise(m["content"]) for m in messages if isinstance(m, dict) and isinstance(m.get("content"), str)}
    overlap = [p.prompt for p in everyday if normalise(p.prompt) in held_out]
    assert overlap == []


def test_missing_dataset_folder_is_reported(tmp_path: Path) -> None:
    from monitor.training.data import DatasetError

    with pytest.raises(DatasetError, match="not found"):
        load_all(tmp_path / "absent")


def test_examples_target_the_right_sentinel(tokenizer: Any) -> None:
    prompts = [
        LabelledPrompt("s", "harm", "harmful"),
        LabelledPrompt("s", "odd", "decline"),
        LabelledPrompt("s", "bread", "benign", reply="word " * 200),
        LabelledPrompt("s", "scary", "benign", benign_but_scary=True),
    ]
    harmful, decline, answered, unanswered = build_examples(
        prompts, tokenizer, max_prompt_tokens=64, max_reply_tokens=10, seed=0
    )
    assert harmful.reply_ids[0] == tokenizer.convert_tokens_to_ids(HELLNO_TOKEN)
    assert decline.reply_ids[0] == tokenizer.convert_tokens_to_ids(SORRY_TOKEN)
    assert not harmful.push_down
    assert len(answered.reply_ids) == 10
    assert answered.push_down
    assert unanswered.reply_ids == ()
    assert unanswered.push_down


def test_push_down_loss_is_minus_log_not_sentinel() -> None:
    first = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]]))  # [B, V]
    push = torch.tensor([True, False])
    loss = _push_down_loss(first, push, token_ids=(0, 1))
    assert loss.item() == pytest.approx(-math.log(1 - 0.5))


def test_short_training_run_saves_a_loadable_adapter(tmp_path: Path, tiny_base: Path) -> None:
    datasets = write_fake_datasets(tmp_path / "datasets")
    output = tmp_path / "adapter"
    config = TrainingConfig(
        base_model=str(tiny_base), datasets=str(datasets), output=str(output), max_steps=30,
        batch_size=8, learning_rate=5e-3, warmup_steps=2, device="cpu",
    )  # fmt: skip
    summary = train_sentinels(config)
    assert summary.steps == 30
    assert (output / "adapter_model.safetensors").stat().st_size < 5_000_000
    card = (output / "README.md").read_text(encoding="utf-8")
    assert card.startswith("# Sentinel adapter `adapter`")
    assert "--seed 1234" in card
    assert "Not evaluated yet" in card

    loaded = load_model(tiny_base, device="cpu", dtype="float32", adapter=output)
    scorer = Scorer(loaded, DEFAULT_SENTINELS, ScoringSettings())
    assert all(len(ids) == 1 for ids in scorer.sentinel_token_ids), "each sentinel must be one token"
    assert "+adapter@sha256:" in scorer.identity.model_id
    harmful, benign = scorer.score_messages([[ChatMessage("user", HARMFUL[0])], [ChatMessage("user", BENIGN[0])]])
    assert harmful.sentinels["HELLNODAVE"].prob > benign.sentinels["HELLNODAVE"].prob


def test_adapter_for_another_vocabulary_is_rejected(tmp_path: Path, tiny_base: Path) -> None:
    from monitor.errors import ModelError

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "sentinel-adapter.json").write_text('{"tokens": {"<SORRYDAVE>": 7}, "base_model": "other"}')
    with pytest.raises(ModelError, match="expects <SORRYDAVE> to be token 7"):
        load_model(tiny_base, device="cpu", adapter=adapter)
