"""Lay out prompts and sentinels in one padded batch so one forward pass scores every sentinel.

Each row holds the prompt, then every sentinel's tokens but its last, then
padding. A 4D attention mask lets sentinel k's tokens see the whole prompt
and earlier tokens of sentinel k only, never another sentinel's tokens, and
position ids restart at the prompt length for each sentinel. The prompt is
therefore prefilled once for all sentinels, and a row's result does not
depend on the other rows or on how much padding the batch needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

PROMPT_GROUP = -1
PADDING_GROUP = -2


@dataclass(frozen=True)
class SentinelLayout:
    """Where each sentinel's tokens sit, shared by every row of a batch."""

    token_ids: tuple[tuple[int, ...], ...]  # one tuple of token ids per sentinel

    @property
    def fed_length(self) -> int:
        """Tokens appended after the prompt: every sentinel token but the last of each."""
        return sum(len(ids) - 1 for ids in self.token_ids)

    @property
    def targets(self) -> torch.Tensor:
        """Every sentinel token, concatenated: [N]."""
        return torch.tensor([t for ids in self.token_ids for t in ids], dtype=torch.long)

    @property
    def owners(self) -> torch.Tensor:
        """Index of the sentinel each target belongs to: [N]."""
        return torch.tensor([k for k, ids in enumerate(self.token_ids) for _ in ids], dtype=torch.long)


@dataclass(frozen=True)
class BatchTensors:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    allowed: torch.Tensor  # [B, T, T] bool: query row may attend key column
    predict_from: torch.Tensor  # [B, N]: position whose output predicts target n


def build_batch(prompts: Sequence[Sequence[int]], layout: SentinelLayout, pad_id: int) -> BatchTensors:
    """Build input ids, position ids, the attention pattern and the positions to read logits from."""
    width = max(len(p) for p in prompts) + layout.fed_length
    rows = [_build_row(prompt, layout, pad_id, width) for prompt in prompts]
    input_ids = torch.stack([r[0] for r in rows])  # [B, T]
    position_ids = torch.stack([r[1] for r in rows])  # [B, T]
    groups = torch.stack([r[2] for r in rows])  # [B, T]
    predict_from = torch.stack([r[3] for r in rows])  # [B, N]

    causal = torch.ones(width, width, dtype=torch.bool).tril()  # [T, T]
    key_is_prompt = (groups == PROMPT_GROUP)[:, None, :]  # [B, 1, T]
    same_group = groups[:, :, None] == groups[:, None, :]  # [B, T, T]
    allowed = causal[None] & (key_is_prompt | same_group)  # [B, T, T]
    return BatchTensors(input_ids, position_ids, allowed, predict_from)


def _build_row(
    prompt: Sequence[int], layout: SentinelLayout, pad_id: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    length = len(prompt)
    assert length > 0, "cannot score an empty prompt"
    ids = list(prompt)
    positions = list(range(length))
    groups = [PROMPT_GROUP] * length
    predict_from: list[int] = []

    for k, sentinel_ids in enumerate(layout.token_ids):
        start = len(ids)
        fed = sentinel_ids[:-1]
        ids.extend(fed)
        positions.extend(range(length, length + len(fed)))
        groups.extend([k] * len(fed))
        # Token 0 is predicted by the last prompt position, token j by the j-1-th fed token.
        predict_from.append(length - 1)
        predict_from.extend(range(start, start + len(fed)))

    padding = width - len(ids)
    ids.extend([pad_id] * padding)
    positions.extend([0] * padding)
    groups.extend([PADDING_GROUP] * padding)
    return (
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(positions, dtype=torch.long),
        torch.tensor(groups, dtype=torch.long),
        torch.tensor(predict_from, dtype=torch.long),
    )
