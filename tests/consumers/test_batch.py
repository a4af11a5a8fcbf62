"""Micro-batch bounds and the offsets a batch lets the consumer commit (no broker needed)."""

from __future__ import annotations

from kafka import TopicPartition

from consumers.batch import BatchBuilder
from consumers.offsets import merge_offsets, next_offsets
from consumers.records import InboundRecord
from monitor.policy import KafkaPosition
from monitor.scoring.prompts import EncodedPrompt
from monitor.settings import KafkaSettings
from tests.consumers.harness import make_exchange


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(partition: int, offset: int, tokens: int = 10, valid: bool = True) -> InboundRecord:
    position = KafkaPosition("t", partition, offset)
    if not valid:
        return InboundRecord(position, None, b"x", (), reason="invalid_json", error="bad")
    prompt = EncodedPrompt(ids=tuple(range(tokens)), truncated=False)
    return InboundRecord(position, None, b"x", (), exchange=make_exchange(offset), prompt=prompt)


def builder(clock: FakeClock) -> BatchBuilder:
    settings = KafkaSettings(batch_max_messages=4, batch_max_tokens=100, batch_max_wait_s=2.0)
    return BatchBuilder(settings, clock=clock)


def test_batch_sealed_at_message_limit() -> None:
    batches = builder(FakeClock())
    for offset in range(10):
        batches.add(record(0, offset))
    sizes = []
    while batches.is_ready():
        sizes.append(len(batches.take()))
    assert sizes == [4, 4]
    assert len(batches) == 2


def test_batch_sealed_before_token_limit_overflows() -> None:
    batches = builder(FakeClock())
    for offset, tokens in enumerate([40, 40, 40, 150, 5]):
        batches.add(record(0, offset, tokens=tokens))
    first, second, third = batches.take(), batches.take(), batches.take()
    assert [r.tokens for r in first.records] == [40, 40]
    assert [r.tokens for r in second.records] == [40]
    assert [r.tokens for r in third.records] == [150], "an oversized prompt gets a batch of its own"
    assert not batches.is_ready()


def test_small_batch_ready_after_wait() -> None:
    clock = FakeClock()
    batches = builder(clock)
    batches.add(record(0, 0))
    assert not batches.is_ready()
    clock.now += 2.0
    assert batches.is_ready()
    assert len(batches.take()) == 1


def test_invalid_records_carry_no_tokens() -> None:
    batches = builder(FakeClock())
    batches.add(record(0, 0, valid=False))
    batches.add(record(0, 1))
    batch = batches.take()
    assert batch.tokens == 10
    assert len(batch.invalid) == 1
    assert len(batch.valid) == 1


def test_drop_partitions_keeps_others() -> None:
    batches = builder(FakeClock())
    for offset in range(6):
        batches.add(record(offset % 2, offset))
    dropped = batches.drop_partitions([TopicPartition("t", 0)])
    assert [r.position.offset for r in dropped] == [0, 2, 4]
    remaining = [batches.take() for _ in range(2)]
    assert all(r.position.partition == 1 for b in remaining for r in b.records)


def test_next_offsets_is_last_plus_one_per_partition() -> None:
    positions = [KafkaPosition("t", 0, 5), KafkaPosition("t", 0, 7), KafkaPosition("t", 1, 0), KafkaPosition("u", 0, 3)]
    assert next_offsets(positions) == {
        TopicPartition("t", 0): 8,
        TopicPartition("t", 1): 1,
        TopicPartition("u", 0): 4,
    }


def test_merge_offsets_never_moves_backwards() -> None:
    pending = {TopicPartition("t", 0): 10}
    assert merge_offsets(pending, {TopicPartition("t", 0): 4, TopicPartition("t", 1): 2}) == {
        TopicPartition("t", 0): 10,
        TopicPartition("t", 1): 2,
    }
