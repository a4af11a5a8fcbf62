"""The batched sentinel scorer: log P(sentinel | prompt) for every configured sentinel."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from monitor.errors import ScoringError
from monitor.exchange import ChatMessage
from monitor.scores import PromptScore, ScorerIdentity, SentinelScore
from monitor.scoring.batching import plan_batches
from monitor.scoring.layout import BatchTensors, SentinelLayout, build_batch
from monitor.scoring.loading import LoadedModel
from monitor.scoring.prompts import EncodedPrompt, PromptEncoder
from monitor.sentinels import Sentinel
from monitor.settings import ScoringSettings

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]


class Scorer:
    """Scores conversations against the configured sentinels with one causal language model."""

    def __init__(self, loaded: LoadedModel, sentinels: Sequence[Sentinel], settings: ScoringSettings) -> None:
        self._loaded = loaded
        self._model = loaded.model
        self._device = loaded.device
        self._identity = loaded.identity
        self._settings = settings
        self._sentinels = tuple(sentinels)
        self._encoder = PromptEncoder(loaded.tokenizer, settings.max_prompt_tokens)
        self._layout = SentinelLayout(tuple(_sentinel_ids(loaded.tokenizer, s) for s in self._sentinels))
        self._pad_id = _pad_id(loaded.tokenizer)
        self._base, self._head = _split_model(self._model)

    @property
    def loaded(self) -> LoadedModel:
        """The model, tokenizer and device this scorer runs on, for generation with the same weights."""
        return self._loaded

    @property
    def identity(self) -> ScorerIdentity:
        return self._identity

    @property
    def sentinels(self) -> tuple[Sentinel, ...]:
        return self._sentinels

    @property
    def sentinel_token_ids(self) -> tuple[tuple[int, ...], ...]:
        return self._layout.token_ids

    def encode(self, messages: Sequence[ChatMessage]) -> EncodedPrompt:
        """Render and tokenize one conversation (cheap; no forward pass)."""
        return self._encoder.encode(messages)

    def score_messages(self, conversations: Sequence[Sequence[ChatMessage]]) -> list[PromptScore]:
        return self.score_encoded([self.encode(c) for c in conversations])

    def score_encoded(
        self, prompts: Sequence[EncodedPrompt], progress: ProgressCallback | None = None
    ) -> list[PromptScore]:
        """Score encoded prompts in token-bounded batches and return the scores in input order."""
        lengths = [len(p.ids) + self._layout.fed_length for p in prompts]
        plan = plan_batches(
            lengths, max_tokens=self._settings.batch_max_tokens, max_rows=self._settings.batch_max_rows
        )
        results: list[PromptScore | None] = [None] * len(prompts)
        for indexes in plan:
            logprobs = self.sentinel_logprobs([prompts[i].ids for i in indexes])  # [B, K]
            for row, index in enumerate(indexes):
                results[index] = self._prompt_score(prompts[index], logprobs[row])
            if progress is not None:
                progress(len(indexes))
        assert all(r is not None for r in results), "a prompt was left out of every batch"
        return [r for r in results if r is not None]

    @torch.inference_mode()
    def sentinel_logprobs(self, prompts: Sequence[Sequence[int]]) -> list[list[float]]:
        """Run one forward pass and return log P(sentinel | prompt) per prompt and sentinel: [B][K]."""
        batch = build_batch(prompts, self._layout, self._pad_id)
        hidden = self._hidden_states(batch)  # [B, T, D]
        token_logprobs = self._target_logprobs(hidden, batch.predict_from)  # [B, N]
        owners = self._layout.owners.to(self._device)  # [N]
        count = len(self._layout.token_ids)
        per_sentinel = torch.zeros(len(prompts), count, dtype=torch.float32, device=self._device)  # [B, K]
        per_sentinel.index_add_(1, owners, token_logprobs)
        if not torch.isfinite(per_sentinel).all():
            raise ScoringError(f"the model produced non-finite sentinel log-probabilities: {per_sentinel.tolist()}")
        return per_sentinel.cpu().tolist()

    def _hidden_states(self, batch: BatchTensors) -> torch.Tensor:
        dtype = self._model.dtype
        additive = torch.zeros(batch.allowed.shape, dtype=dtype)  # [B, T, T]
        additive.masked_fill_(~batch.allowed, torch.finfo(dtype).min)
        output = self._base(
            input_ids=batch.input_ids.to(self._device),
            position_ids=batch.position_ids.to(self._device),
            attention_mask=additive[:, None].to(self._device),  # [B, 1, T, T]
            use_cache=False,
        )
        return output.last_hidden_state  # type: ignore[no-any-return]

    def _target_logprobs(self, hidden: torch.Tensor, predict_from: torch.Tensor) -> torch.Tensor:
        # Only the N positions that predict a sentinel token go through the
        # output layer, never the whole [B, T, vocabulary] tensor.
        batch, _, width = hidden.shape
        index = predict_from.to(self._device)[:, :, None].expand(-1, -1, width)  # [B, N, D]
        picked = hidden.gather(1, index)  # [B, N, D]
        logits = self._head(picked).float()  # [B, N, V], float32 even for a bfloat16 model
        logprobs = torch.log_softmax(logits, dim=-1)  # [B, N, V]
        targets = self._layout.targets.to(self._device)[None, :, None].expand(batch, -1, 1)  # [B, N, 1]
        return logprobs.gather(2, targets).squeeze(2)  # [B, N]

    def _prompt_score(self, prompt: EncodedPrompt, logprobs: Sequence[float]) -> PromptScore:
        scores = {
            sentinel.name: SentinelScore(sentinel=sentinel.name, logprob=float(value))
            for sentinel, value in zip(self._sentinels, logprobs)
        }
        return PromptScore(
            sentinels=scores, truncated=prompt.truncated, prompt_tokens=len(prompt.ids), identity=self._identity
        )


def _sentinel_ids(tokenizer: Any, sentinel: Sentinel) -> tuple[int, ...]:
    # The sentinel's text is the model's own output, so special tokens in it
    # are recognised: "<SORRYDAVE>" is one token for a model trained with it.
    ids = tuple(tokenizer(sentinel.text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ScoringError(f"sentinel {sentinel.name!r} text {sentinel.text!r} tokenizes to no tokens")
    if sentinel.text.startswith("<") and sentinel.text.endswith(">") and len(ids) > 1:
        logger.warning(
            "sentinel %s %r is not a token of this model; it is scored as %d plain tokens. "
            "Apply the sentinel adapter (model.adapter) or configure sentinels this model can produce.",
            sentinel.name, sentinel.text, len(ids),
        )  # fmt: skip
    logger.debug("sentinel %s tokenizes to %s", sentinel.name, ids)
    return ids


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if isinstance(candidate, int):
            return candidate
    return 0


def _split_model(model: Any) -> tuple[Any, Any]:
    """Return the decoder stack (hidden states) and the output projection of a causal LM."""
    base = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if base is None or base is model or head is None:
        raise ScoringError(
            f"{type(model).__name__} does not expose a decoder and an output layer separately; "
            "the scorer supports Hugging Face *ForCausalLM models"
        )
    if getattr(model.config, "final_logit_softcapping", None):
        raise ScoringError(
            f"{type(model).__name__} caps its final logits (final_logit_softcapping); the scorer does not apply it"
        )
    return base, head
