"""Group prompts into forward passes bounded by padded tokens and rows."""

from __future__ import annotations

from typing import Sequence


def plan_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int) -> list[list[int]]:
    """Split prompt indexes into batches whose padded size (rows x longest row) fits `max_tokens`.

    Prompts are sorted by length first so that each batch wastes little
    padding; the caller puts results back in input order.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # sorted ascending, so the newest index is the longest
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
