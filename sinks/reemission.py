"""Recognising the stream stage's re-emissions, so their rows never reach the workspace twice.

The stream stage runs at-least-once: after a crash (or a broker restart, or a partition move) it processes again
the raw messages after its last committed offset, and writes again the output it had already written for them.
Every output message carries the raw position it came from (``secstream.source_position``), and the output of
raw partition *r* always goes to the same normalized partition, in raw-offset order. So within one normalized
partition the positions from one raw partition only rise, except where a re-emission starts over from an older
offset. The sink keeps, per normalized partition and raw partition, the highest position it has read (the
*mark*), and skips a message whose position is not above it.

The mark only counts for ``window`` (seconds of Kafka message time, ``sink.reemission_window_seconds``): a
re-emission follows its original within the stream's commit interval plus its restart time. Beyond that a lower
position is taken for new data (e.g. a raw topic that was deleted and created again starts at offset 0 again).

Across a sink restart or a partition move the marks are rebuilt without any new durable state:

* each offset commit carries, as its Kafka commit metadata, the marks *as of the committed offset* (the marks of
  messages read after it are not included: the sink reads those again and must not skip them);
* when the broker keeps no commit metadata, the sink reads the normalized partition back from ``window`` before
  the first message it will deliver, headers only, and rebuilds the marks from it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from secstream.source_position import HeaderItems, SourcePosition, parse_source
from sinks import commit_metadata

log = logging.getLogger(__name__)

METADATA_VERSION = 1

RawKey = tuple[str, int]  # (raw topic, raw partition)


@dataclass(slots=True)
class Mark:
    """The highest position read from one raw partition, and the Kafka timestamp (ms) of the message carrying it."""

    offset: int
    part: int
    parts: int
    timestamp_ms: int | None

    def covers(self, position: SourcePosition, timestamp_ms: int | None, window_ms: int) -> bool:
        """True when ``position`` was already read: it is not above this mark, and the mark is recent."""
        if (timestamp_ms is not None and self.timestamp_ms is not None
                and timestamp_ms - self.timestamp_ms > window_ms):
            return False
        if position.offset != self.offset:
            return position.offset < self.offset
        # Same raw message: every part up to the mark was read; once its last part was read, all of it was.
        return position.part <= self.part or self.part == self.parts - 1


@dataclass(slots=True)
class PartitionMarks:
    """The marks of one normalized partition: ``live`` after the last message read, ``committed`` as of the last
    offset folded in (what goes into the commit metadata of that offset)."""

    window_ms: int
    live: dict[RawKey, Mark] = field(default_factory=dict)
    committed: dict[RawKey, Mark] = field(default_factory=dict)
    _unfolded: deque[tuple[int, RawKey, Mark]] = field(default_factory=deque)

    def admit(self, offset: int, position: SourcePosition | None, timestamp_ms: int | None) -> bool:
        """Whether the message at ``offset`` is to be delivered (False: a re-emission). Offsets come in order."""
        if position is None:
            return True
        key = (position.topic, position.partition)
        mark = self.live.get(key)
        if mark is not None and mark.covers(position, timestamp_ms, self.window_ms):
            return False
        new = Mark(position.offset, position.part, position.parts, timestamp_ms)
        self.live[key] = new
        self._unfolded.append((offset, key, new))
        return True

    def fold(self, below: int) -> None:
        """Move into ``committed`` the marks set by messages before offset ``below``."""
        while self._unfolded and self._unfolded[0][0] < below:
            _, key, mark = self._unfolded.popleft()
            self.committed[key] = mark

    def restore(self, marks: dict[RawKey, Mark]) -> None:
        self.live = dict(marks)
        self.committed = dict(marks)
        self._unfolded.clear()


def marks_fields(marks: dict[RawKey, Mark]) -> dict[str, Any]:
    """The commit-metadata keys of the marks (``sinks.commit_metadata`` joins them with the row progress)."""
    rows = [[topic, partition, m.offset, m.part, m.parts, m.timestamp_ms]
            for (topic, partition), m in sorted(marks.items())]
    return {"reemission": METADATA_VERSION, "marks": rows}


def decode_marks(metadata: str | None) -> dict[RawKey, Mark] | None:
    """The marks in commit metadata; None when there are none of ours (absent, empty, another format)."""
    data = commit_metadata.load(metadata, "reemission", METADATA_VERSION)
    if data is None:
        return None
    try:
        return {(str(topic), int(partition)): Mark(int(offset), int(part), int(parts),
                                                    None if ts is None else int(ts))
                for topic, partition, offset, part, parts, ts in data["marks"]}
    except (KeyError, TypeError, ValueError):
        return None


def _recent(marks: dict[RawKey, Mark], keep_ms: int) -> dict[RawKey, Mark]:
    """Without marks far older than the newest (a raw partition that stopped feeding this one): they no longer
    count, and would only grow the commit metadata."""
    newest = max((m.timestamp_ms for m in marks.values() if m.timestamp_ms is not None), default=None)
    if newest is None:
        return marks
    return {k: m for k, m in marks.items() if m.timestamp_ms is None or newest - m.timestamp_ms <= keep_ms}


def message_timestamp(msg: Message) -> int | None:
    kind, value = msg.timestamp()
    return value if kind != 0 else None  # 0 = TIMESTAMP_NOT_AVAILABLE


@dataclass
class ReemissionStats:
    """How the marks of assigned partitions were rebuilt."""

    restored_from_metadata: int = 0
    restored_from_tail: int = 0
    tail_messages_read: int = 0


class ReemissionGuard:
    """The marks of the partitions one sink consumer owns, rebuilt lazily on the first message after assignment."""

    def __init__(self, topic: str, window_seconds: float, tail_consumer: Callable[[], Consumer],
                 tail_timeout_seconds: float = 60.0) -> None:
        self.topic = topic
        self.window_ms = int(window_seconds * 1000)
        self._tail_consumer = tail_consumer
        self._tail_timeout = tail_timeout_seconds
        self._partitions: dict[int, PartitionMarks] = {}
        self._too_large_logged = False
        self.stats = ReemissionStats()

    def admit(self, msg: Message, committed_metadata: str | None) -> bool:
        """Whether to deliver ``msg`` (False: it re-emits a position already read; count it and skip it).

        ``committed_metadata`` (that of the partition's committed offset, None if none or unreadable) is used only
        at the first message of a partition since it was assigned, to restore its marks."""
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        timestamp = message_timestamp(msg)
        marks = self._partitions.get(partition)
        if marks is None:
            marks = self._partitions[partition] = self._restore(partition, offset, timestamp, committed_metadata)
        return marks.admit(offset, parse_source(msg.headers()), timestamp)

    def metadata_fields(self, partition: int, offset: int) -> dict[str, Any]:
        """The marks' keys of the commit metadata for committing ``offset``; empty if unknown or too large."""
        marks = self._partitions.get(partition)
        if marks is None:
            return {}
        marks.fold(offset)
        fields = marks_fields(_recent(marks.committed, 2 * self.window_ms))
        if len(orjson.dumps(fields)) > commit_metadata.MAX_BYTES:
            if not self._too_large_logged:
                self._too_large_logged = True
                log.warning("%s/%d: re-emission marks of %d raw partitions exceed %d bytes of commit metadata; a "
                            "restarted sink rebuilds them by reading the partition back instead", self.topic,
                            partition, len(marks.committed), commit_metadata.MAX_BYTES)
            return {}
        return fields

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._partitions.pop(p, None)

    # ------------------------------------------------------------------------------------------ rebuilding

    def _restore(self, partition: int, first_offset: int, first_timestamp_ms: int | None,
                 committed_metadata: str | None) -> PartitionMarks:
        marks = PartitionMarks(self.window_ms)
        saved = decode_marks(committed_metadata)
        if saved is not None:
            marks.restore(saved)
            self.stats.restored_from_metadata += 1
            log.info("%s/%d: re-emission marks of %d raw partitions restored from the commit metadata",
                     self.topic, partition, len(saved))
            return marks
        if first_timestamp_ms is None or self.window_ms <= 0:
            return marks
        started = time.monotonic()
        read = 0
        try:
            for offset, headers, timestamp in self._read_tail(partition, first_offset,
                                                              first_timestamp_ms - self.window_ms):
                marks.admit(offset, parse_source(headers), timestamp)
                read += 1
        except KafkaException as exc:
            # Without marks nothing is skipped: a re-emission may be delivered again, nothing is lost.
            log.warning("%s/%d: reading back for re-emission marks failed (%s); continuing with the %d messages "
                        "read", self.topic, partition, exc, read)
        marks.fold(first_offset)
        self.stats.restored_from_tail += 1
        self.stats.tail_messages_read += read
        log.info("%s/%d: re-emission marks of %d raw partitions rebuilt from %d messages before offset %d (%.1f s)",
                 self.topic, partition, len(marks.live), read, first_offset, time.monotonic() - started)
        return marks

    def _read_tail(self, partition: int, end: int, since_ms: int
                   ) -> Iterator[tuple[int, HeaderItems, int | None]]:
        """(offset, headers, timestamp) of the messages of ``partition`` from time ``since_ms`` up to ``end``."""
        consumer = self._tail_consumer()
        try:
            found = consumer.offsets_for_times([TopicPartition(self.topic, partition, max(0, since_ms))], timeout=30)
            start = found[0].offset
            if start < 0 or start >= end:
                return
            consumer.assign([TopicPartition(self.topic, partition, start)])
            deadline = time.monotonic() + self._tail_timeout
            while time.monotonic() < deadline:
                batch = consumer.consume(500, timeout=1.0)
                for msg in batch:
                    if msg.error() is not None:
                        continue
                    offset = msg.offset()
                    assert offset is not None
                    if offset >= end:
                        return
                    yield offset, msg.headers(), message_timestamp(msg)
                    if offset == end - 1:
                        return
                # Offsets can have holes (transaction markers, compaction): the position says when we are through.
                if not batch and consumer.position([TopicPartition(self.topic, partition)])[0].offset >= end:
                    return
            log.warning("%s/%d: reading back the partition for re-emission marks took over %.0f s; stopped "
                        "early (a re-emission of older output may be delivered again)", self.topic, partition,
                        self._tail_timeout)
        finally:
            consumer.close()
