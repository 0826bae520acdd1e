"""Which Kafka offsets may be committed, and the delivery log that records what each destination holds.

A message is *done* when every one of its rows was accepted by the workspace or written to the dead-letter topic.
Per partition the committable position is the offset after the longest run of done messages, in the order they
were consumed. Nothing later than an unfinished message is ever committed, so a crash at any moment re-delivers
at most the messages that were not yet done; their rows carry the same ``EventOriginId`` as before.

The delivery log (topic ``topics.delivery_log``) gets one JSON record per committed range and destination:

    key   = "<destination>/<topic>/<partition>/<first_offset>"
    value = {"destination", "dcr_immutable_ids", "stream", "topic", "partition", "first_offset", "last_offset",
             "rows_accepted", "rows_dead_lettered", "recorded_at"}

``first_offset``..``last_offset`` (inclusive) were wholly delivered to the destination. Keys are unique, so a
compacted topic keeps every range. ``delivered_ranges`` reads them back (for replay).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sinks.request_builder import Segment
from sinks.row_progress import MAX_ENTRIES, Range, add_range, covered, progress_fields


@dataclass(slots=True)
class _Message:
    pending: int
    accepted: int = 0
    dead_lettered: int = 0
    earlier: int = 0  # rows a previous owner of the partition had already delivered (not sent again)
    done: list[Range] = field(default_factory=list)  # row-index ranges resolved so far


@dataclass(slots=True)
class _Partition:
    messages: OrderedDict[int, _Message] = field(default_factory=OrderedDict)
    position: int | None = None  # next offset to commit (one past the last done message of the done prefix)
    committed: int | None = None  # position at the last commit
    accepted: int = 0  # rows of done messages since the last commit
    dead_lettered: int = 0
    earlier: int = 0


@dataclass(frozen=True, slots=True)
class DeliveredRange:
    partition: int
    first_offset: int
    last_offset: int
    rows_accepted: int
    rows_dead_lettered: int
    rows_delivered_earlier: int = 0  # by a previous owner of the partition (recorded in the commit metadata)


class OffsetTracker:
    """Counts undelivered rows per message and finds the committable position of each partition."""

    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def register(self, partition: int, offset: int, rows: int, done: list[Range] | None = None) -> None:
        """A message was consumed with ``rows`` rows to deliver (0 = nothing to deliver, done at once); ``done``:
        the row ranges already delivered before (by a previous owner), which are not sent again."""
        state = self._partitions.setdefault(partition, _Partition())
        if state.committed is None:
            state.committed = offset  # first message seen since assignment: nothing before it is ours
        earlier = covered(done) if done else 0
        state.messages[offset] = _Message(pending=rows - earlier, earlier=earlier, done=list(done or ()))
        if rows == earlier:
            self._advance(state)

    def accepted(self, segments: Iterable[Segment]) -> None:
        self._resolve(segments, dead_lettered=False)

    def dead_lettered(self, segments: Iterable[Segment]) -> None:
        self._resolve(segments, dead_lettered=True)

    def _resolve(self, segments: Iterable[Segment], dead_lettered: bool) -> None:
        touched: set[int] = set()
        for seg in segments:
            state = self._partitions.get(seg.partition)
            message = state.messages.get(seg.offset) if state else None
            if state is None or message is None:
                continue  # the partition was revoked and forgotten meanwhile; its new owner re-delivers it
            message.pending -= seg.rows
            if message.pending < 0:
                raise AssertionError(f"partition {seg.partition} offset {seg.offset}: more rows resolved than sent")
            if dead_lettered:
                message.dead_lettered += seg.rows
            else:
                message.accepted += seg.rows
            add_range(message.done, seg.first, seg.end)
            touched.add(seg.partition)
        for partition in touched:
            self._advance(self._partitions[partition])

    @staticmethod
    def _advance(state: _Partition) -> None:
        while state.messages:
            offset, message = next(iter(state.messages.items()))
            if message.pending:
                break
            state.messages.popitem(last=False)
            state.position = offset + 1
            state.accepted += message.accepted
            state.dead_lettered += message.dead_lettered
            state.earlier += message.earlier

    def committable(self) -> dict[int, DeliveredRange]:
        """Per partition, the range done since the last commit (``last_offset + 1`` is the offset to commit)."""
        out: dict[int, DeliveredRange] = {}
        for partition, state in self._partitions.items():
            if state.position is not None and state.committed is not None and state.position > state.committed:
                out[partition] = DeliveredRange(partition, state.committed, state.position - 1,
                                                state.accepted, state.dead_lettered, state.earlier)
        return out

    def progress(self, partition: int) -> tuple[int | None, list[tuple[int, int]], dict[int, list[Range]]]:
        """What a restarted owner needs to send only the rest: the offset after the partition's done prefix, the
        runs (first, last offset) of wholly done messages after it, and the done row ranges of partly done ones."""
        state = self._partitions.get(partition)
        if state is None:
            return None, [], {}
        whole: list[tuple[int, int]] = []
        partial: dict[int, list[Range]] = {}
        extend = False  # whether the previous message was wholly done (the next one continues its run)
        for offset, message in state.messages.items():
            if message.pending == 0:
                if extend:
                    whole[-1] = (whole[-1][0], offset)
                else:
                    whole.append((offset, offset))
                extend = True
                continue
            extend = False
            if message.done:
                partial[offset] = list(message.done)
            if len(whole) + len(partial) >= MAX_ENTRIES:
                break
        return state.position, whole, partial

    def progress_fields(self, partition: int, committed: int, budget: int | None = None) -> dict[str, Any]:
        """The commit-metadata keys (``sinks.row_progress``) that go with committing offset ``committed``."""
        through, whole, partial = self.progress(partition)
        return progress_fields(through if through is not None and through > committed else None, whole, partial,
                               budget)

    def mark_committed(self, ranges: Iterable[DeliveredRange]) -> None:
        for r in ranges:
            state = self._partitions.get(r.partition)
            if state is None:
                continue
            state.committed = r.last_offset + 1
            state.accepted = 0
            state.dead_lettered = 0
            state.earlier = 0

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the state of partitions this worker no longer owns."""
        for p in partitions:
            self._partitions.pop(p, None)

    @property
    def pending_messages(self) -> int:
        return sum(len(s.messages) for s in self._partitions.values())


def delivery_record(
    destination: str, dcr_immutable_ids: list[str], stream: str, topic: str, delivered: DeliveredRange,
    now: float | None = None, extra: dict[str, Any] | None = None,
) -> tuple[bytes, bytes]:
    """Key and value of the delivery-log record for one committed range (``extra``: more fields, e.g. rules)."""
    key = f"{destination}/{topic}/{delivered.partition}/{delivered.first_offset}".encode()
    value: dict[str, Any] = {
        "destination": destination,
        "dcr_immutable_ids": dcr_immutable_ids,
        "stream": stream,
        "topic": topic,
        "partition": delivered.partition,
        "first_offset": delivered.first_offset,
        "last_offset": delivered.last_offset,
        "rows_accepted": delivered.rows_accepted,
        "rows_dead_lettered": delivered.rows_dead_lettered,
        "rows_delivered_earlier": delivered.rows_delivered_earlier,
        "recorded_at": datetime.fromtimestamp(now if now is not None else time.time(), UTC).isoformat(),
    }
    if extra:
        value = {**extra, **value}
    return key, orjson.dumps(value)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive offset ranges merged where they overlap or touch, sorted."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def ranges_from_records(values: Iterable[bytes], destination: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    """Delivered ranges per partition of ``topic`` for ``destination``, merged, from delivery-log record values."""
    found: dict[int, list[tuple[int, int]]] = {}
    for value in values:
        record = orjson.loads(value)
        if record.get("destination") == destination and record.get("topic") == topic:
            found.setdefault(int(record["partition"]), []).append(
                (int(record["first_offset"]), int(record["last_offset"])))
    return {p: merge_ranges(r) for p, r in found.items()}
