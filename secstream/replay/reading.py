"""Reading bounded offset ranges with ``assign()``: never subscribing, so no consumer group is joined or moved."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from secstream.offsets import PartitionRange


class StalledError(RuntimeError):
    """A range could not be read to its end (retention deleted it meanwhile, or the broker stopped answering)."""


def read_ranges(consumer: Consumer, topic: str, ranges: Sequence[PartitionRange], *,
                batch: int = 500, stall_timeout: float = 60.0) -> Iterator[Message]:
    """Every message of ``ranges`` ([start, end) per partition), then stop. Each partition is read in order.

    The consumer is assigned the ranges' partitions and nothing else; its group never commits here.
    """
    ends = {r.partition: r.end for r in ranges if r.size}
    pieces = [r for r in ranges if r.size]
    if not pieces:
        return
    # Several pieces of one partition (e.g. delivered sub-ranges) are read one after another.
    queue = {p: sorted((r for r in pieces if r.partition == p), key=lambda r: r.start) for p in ends}
    current = {p: rs.pop(0) for p, rs in queue.items()}
    consumer.assign([TopicPartition(topic, p, r.start) for p, r in current.items()])
    last_progress = time.monotonic()
    while current:
        messages = consumer.consume(batch, timeout=0.1)
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(error)
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            piece = current.get(partition)
            if piece is None or not piece.start <= offset < piece.end:
                continue  # fetched ahead of the piece's end, or left over from the previous piece
            last_progress = time.monotonic()
            yield msg
            if offset >= piece.end - 1:
                _next_piece(consumer, topic, partition, current, queue)
        if not messages:
            for partition, piece in list(current.items()):
                # Offsets can have holes (compaction, transaction markers): the position says we are past the end.
                position = consumer.position([TopicPartition(topic, partition)])[0].offset
                if position >= piece.end:
                    _next_piece(consumer, topic, partition, current, queue)
            if current and time.monotonic() - last_progress > stall_timeout:
                left = ", ".join(f"{p}: {r.start}..{r.end - 1}" for p, r in sorted(current.items()))
                raise StalledError(f"{topic}: nothing read for {stall_timeout:.0f} s with offsets still to read "
                                   f"({left}); were they deleted by retention?")


def _next_piece(consumer: Consumer, topic: str, partition: int, current: dict[int, PartitionRange],
                queue: dict[int, list[PartitionRange]]) -> None:
    rest = queue[partition]
    if rest:
        piece = current[partition] = rest.pop(0)
        consumer.seek(TopicPartition(topic, partition, piece.start))
    else:
        del current[partition]
        consumer.pause([TopicPartition(topic, partition)])
