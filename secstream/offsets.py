"""Offset arithmetic shared by replay and the operators' ``groups`` commands.

A position is given as an ISO-8601 time (resolved per partition with ``offsets_for_times``, which uses the Kafka
message timestamps — send times), a plain offset, ``earliest`` or ``latest``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_END, Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient


class PositionError(ValueError):
    pass


@dataclass(frozen=True)
class Position:
    """Where to start or stop: exactly one of ``time_ms`` / ``offset`` / ``edge`` is set."""

    time_ms: int | None = None
    offset: int | None = None
    edge: str | None = None  # "earliest" | "latest"

    @classmethod
    def parse(cls, text: str) -> Position:
        value = text.strip()
        if value in ("earliest", "latest"):
            return cls(edge=value)
        if value.isdigit():
            return cls(offset=int(value))
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PositionError(
                f"{text!r} is neither an ISO-8601 time (e.g. 2026-11-20T00:00:00Z), an offset, 'earliest' nor 'latest'"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return cls(time_ms=int(when.timestamp() * 1000))

    @classmethod
    def at_ms(cls, time_ms: int) -> Position:
        return cls(time_ms=time_ms)

    def describe(self) -> str:
        if self.time_ms is not None:
            return datetime.fromtimestamp(self.time_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
        return str(self.offset) if self.offset is not None else str(self.edge)


@dataclass(frozen=True)
class PartitionRange:
    """Offsets [start, end) of one partition; empty when start >= end."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


def partitions_of(consumer: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        raise PositionError(f"topic {topic!r} does not exist")
    return sorted(meta.partitions)


def resolve(consumer: Consumer, topic: str, partitions: list[int], position: Position,
            timeout: float = 10.0) -> dict[int, int]:
    """The concrete offset of ``position`` in each partition, clamped to the partition's current range."""
    marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout) for p in partitions}
    if position.edge == "earliest":
        return {p: low for p, (low, _) in marks.items()}
    if position.edge == "latest":
        return {p: high for p, (_, high) in marks.items()}
    if position.offset is not None:
        return {p: min(max(position.offset, low), high) for p, (low, high) in marks.items()}
    assert position.time_ms is not None
    found = consumer.offsets_for_times([TopicPartition(topic, p, position.time_ms) for p in partitions],
                                       timeout=timeout)
    out = {}
    for tp in found:
        if tp.error is not None:
            raise KafkaException(tp.error)
        low, high = marks[tp.partition]
        # No message at or after that time: the position is the end of the partition.
        out[tp.partition] = high if tp.offset in (-1, OFFSET_END) else max(tp.offset, low)
    return out


def plan_ranges(consumer: Consumer, topic: str, start: Position, end: Position | None,
                partitions: list[int] | None = None) -> list[PartitionRange]:
    """The bounded range to read per partition; ``end`` None means the end offsets as they are now."""
    parts = partitions if partitions is not None else partitions_of(consumer, topic)
    starts = resolve(consumer, topic, parts, start)
    ends = resolve(consumer, topic, parts, end or Position(edge="latest"))
    return [PartitionRange(p, starts[p], ends[p]) for p in parts]


def committed_offsets(admin: AdminClient, group: str, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """The group's committed offsets per (topic, partition); empty when the group has none."""
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)[group]
    result = future.result(timeout)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or [] if tp.offset >= 0}


def set_committed_offsets(admin: AdminClient, group: str, topic: str, offsets: dict[int, int],
                          timeout: float = 10.0) -> None:
    """Rewrite the group's committed offsets. Kafka refuses this while the group has live members."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())])
    admin.alter_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout)
