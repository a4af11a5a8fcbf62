"""Offsets to commit. The next offset of a partition is computed here and nowhere else."""

from __future__ import annotations

from typing import Iterable

from kafka import TopicPartition

from monitor.policy import KafkaPosition


def next_offsets(positions: Iterable[KafkaPosition]) -> dict[TopicPartition, int]:
    """Return, per partition, the offset to commit after handling `positions`: the last one plus one.

    The caller hands over every message of a batch, valid or dead-lettered,
    polled in order, so the result never skips a message it did not handle.
    """
    result: dict[TopicPartition, int] = {}
    for position in positions:
        partition = TopicPartition(position.topic, position.partition)
        result[partition] = max(result.get(partition, 0), position.offset + 1)
    return result


def merge_offsets(pending: dict[TopicPartition, int], new: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Combine offsets still waiting to be committed with newer ones, keeping the highest per partition."""
    merged = dict(pending)
    for partition, offset in new.items():
        merged[partition] = max(merged.get(partition, 0), offset)
    return merged
