"""Teach a causal LM the sentinel tokens with a LoRA adapter and two new embedding rows.

The loss has two parts. Cross-entropy on the target reply: `<HELLNODAVE>` or
`<SORRYDAVE>` and an apology for requests to refuse, the first tokens of a real
compliant reply for benign ones. And, for every benign prompt, the negative
log of the probability that the reply does not start with a sentinel, which
teaches "no sentinel here" even for prompts whose source has no reply.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from monitor.errors import ModelError
from monitor.scoring.loading import ADAPTER_INFO_FILE
from monitor.training.card import write_model_card
from monitor.training.data import LabelledPrompt, load_all
from monitor.training.examples import SENTINEL_TOKENS, Example, build_examples

logger = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainingConfig:
    base_model: str
    datasets: str
    output: str
    seed: int = 1234
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 2e-4
    warmup_steps: int = 20
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    max_prompt_tokens: int = 128
    max_reply_tokens: int = 48
    push_down_weight: float = 2.0
    device: str = "auto"
    max_steps: int | None = None


@dataclass(frozen=True)
class TrainingSummary:
    steps: int
    examples: int
    seconds: float
    final_loss: float


def train_sentinels(config: TrainingConfig) -> TrainingSummary:
    """Train the adapter on the train split and save it, with its description, to `config.output`."""
    _seed_everything(config.seed)
    device = _device(config.device)

    # 1. Data: the train split only.
    prompts = [p for p in load_all(Path(config.datasets)) if p.split == "train"]

    # 2. Model and tokenizer with the two sentinel tokens added.
    model, tokenizer, token_ids = prepare_base(Path(config.base_model))
    examples = build_examples(
        prompts, tokenizer, max_prompt_tokens=config.max_prompt_tokens,
        max_reply_tokens=config.max_reply_tokens, seed=config.seed,
    )  # fmt: skip
    model = _wrap_with_lora(model, config, token_ids).to(device)

    # 3. The training loop.
    started = time.monotonic()
    steps, final_loss = _run_loop(model, examples, token_ids, config, device)
    seconds = time.monotonic() - started

    # 4. Save the adapter (LoRA weights and the two new rows only) and its description.
    _save(model, config, token_ids, prompts, steps, seconds, final_loss, device)
    return TrainingSummary(steps=steps, examples=len(examples), seconds=seconds, final_loss=final_loss)


def prepare_base(base_model: Path) -> tuple[Any, Any, tuple[int, ...]]:
    """Load the base model and tokenizer, add the sentinel tokens, and start their embeddings from "I'm sorry"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (base_model / "config.json").is_file():
        raise ModelError(f"no base model at {base_model}; run `sentinel-monitor model pull` first")
    tokenizer = add_sentinel_tokens(AutoTokenizer.from_pretrained(base_model))
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    token_ids = tuple(int(tokenizer.convert_tokens_to_ids(token)) for token in SENTINEL_TOKENS)
    _initialise_rows(model, tokenizer, token_ids)
    return model, tokenizer, token_ids


def add_sentinel_tokens(tokenizer: Any) -> Any:
    """Add `<SORRYDAVE>` and `<HELLNODAVE>` as special tokens (ids follow the base vocabulary, in that order)."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(SENTINEL_TOKENS)})
    return tokenizer


def _initialise_rows(model: Any, tokenizer: Any, token_ids: Sequence[int]) -> None:
    source = tokenizer("I'm sorry", add_special_tokens=False)["input_ids"]
    embeddings = model.get_input_embeddings().weight  # [V, D]
    with torch.no_grad():
        start = embeddings[source].mean(dim=0)  # [D]
        for token_id in token_ids:
            embeddings[token_id] = start


def _wrap_with_lora(model: Any, config: TrainingConfig, token_ids: Sequence[int]) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(LORA_TARGETS),
        trainable_token_indices={"embed_tokens": list(token_ids)},
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft calls a transformers method that transformers 5 deprecates; nothing for our users to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def _run_loop(
    model: Any, examples: list[Example], token_ids: Sequence[int], config: TrainingConfig, device: torch.device
) -> tuple[int, float]:
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = config.max_steps or max(1, int(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, total, config.warmup_steps))
    rng = random.Random(config.seed)
    batches: list[list[Example]] = []
    model.train()
    loss_value = float("nan")
    with tqdm(total=total, unit="step", desc="training", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for step in range(total):
            if not batches:
                batches = _length_bucketed_batches(examples, config.batch_size, rng)
            batch = batches.pop()
            loss = _step(model, batch, token_ids, config, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if step % 50 == 0 or step == total - 1:
                logger.info("training step %d/%d loss=%.4f lr=%.2e", step + 1, total, loss_value, schedule.get_last_lr()[0])
    model.eval()
    return total, loss_value


def _length_bucketed_batches(examples: list[Example], batch_size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffle, then group examples of similar length so that batches carry little padding."""
    order = rng.sample(examples, len(examples))
    pool = batch_size * 32
    batches: list[list[Example]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda e: len(e.prompt_ids) + len(e.reply_ids))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _step(model: Any, batch: list[Example], token_ids: Sequence[int], config: TrainingConfig, device: torch.device) -> torch.Tensor:
    input_ids, attention, labels, prompt_ends = _collate(batch, device)
    base = model.get_base_model()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        hidden = base.model(input_ids=input_ids, attention_mask=attention).last_hidden_state  # [B, T, D]

    # Only positions that predict a reply token, and each prompt's last
    # position, go through the output layer.
    rows, positions = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)  # [N], [N]
    targets = labels[rows, positions + 1]  # [N]
    batch_rows = torch.arange(len(batch), device=device)  # [B]
    picked = torch.cat([hidden[rows, positions], hidden[batch_rows, prompt_ends]])  # [N + B, D]
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        logits = base.lm_head(picked)  # [N + B, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [N + B, V]

    count = len(targets)
    reply_loss = -logprobs[torch.arange(count, device=device), targets].mean() if count else logprobs.new_zeros(())
    push_down = torch.tensor([e.push_down for e in batch], device=device)  # [B]
    push_loss = _push_down_loss(logprobs[count:], push_down, token_ids)
    return reply_loss + config.push_down_weight * push_loss


def _collate(batch: list[Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.prompt_ids) + len(e.reply_ids) for e in batch)
    input_ids = torch.zeros(len(batch), width, dtype=torch.long)  # [B, T]
    attention = torch.zeros(len(batch), width, dtype=torch.long)  # [B, T]
    labels = torch.full((len(batch), width), -100, dtype=torch.long)  # [B, T]
    for row, example in enumerate(batch):
        ids = example.prompt_ids + example.reply_ids
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        if example.reply_ids:
            labels[row, len(example.prompt_ids) : len(ids)] = torch.tensor(example.reply_ids)
    prompt_ends = torch.tensor([len(e.prompt_ids) - 1 for e in batch])  # [B]
    return input_ids.to(device), attention.to(device), labels.to(device), prompt_ends.to(device)


def _push_down_loss(first: torch.Tensor, push_down: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Mean of -log(1 - P(any sentinel first)) over the benign rows; `first` is [B, V] log-probabilities."""
    if not bool(push_down.any()):
        return first.new_zeros(())
    sentinel_logprob = torch.logsumexp(first[:, list(token_ids)], dim=-1)  # [B]
    # log(1 - p) from log p, stable for p near 0 and near 1.
    not_sentinel = torch.log(-torch.expm1(sentinel_logprob.clamp(max=-1e-6)))  # [B]
    return -(not_sentinel[push_down]).mean()


def _save(
    model: Any, config: TrainingConfig, token_ids: Sequence[int], prompts: Sequence[LabelledPrompt],
    steps: int, seconds: float, final_loss: float, device: torch.device,
) -> None:  # fmt: skip
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, save_embedding_layers=False)
    counts: dict[str, int] = {}
    for prompt in prompts:
        counts[f"{prompt.source}/{prompt.label}"] = counts.get(f"{prompt.source}/{prompt.label}", 0) + 1
    info = {
        "tokens": dict(zip(SENTINEL_TOKENS, token_ids)),
        "base_model": _base_model_id(Path(config.base_model)),
        "training": {key: value for key, value in asdict(config).items() if key not in ("datasets", "output", "base_model")},
        "train_examples_by_source": dict(sorted(counts.items())),
        "steps": steps,
        "seconds": round(seconds, 1),
        "final_loss": round(final_loss, 4),
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    (output / ADAPTER_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    # save_pretrained writes a generic card; replace it with one that states what this adapter is.
    write_model_card(output)
    logger.info("adapter saved to %s", output)


def _base_model_id(path: Path) -> str:
    identity = path / "sentinel-model.json"
    if identity.is_file():
        return str(json.loads(identity.read_text(encoding="utf-8"))["model_id"])
    return path.name


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
