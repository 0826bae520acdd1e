"""What a destination already holds, from the delivery log, for a replay not to send it again.

* Normalized offsets: the delivered ranges the sink (and normalized replays) recorded (``ranges_from_records``).
* EventOriginIds, for a raw replay: the rows of the delivered normalized messages whose Kafka timestamps fall in
  the replay's window widened by ``replay.overlap_slack_seconds`` (normalized messages are written after their raw
  ones, and by another process's clock), plus the events earlier raw replays sent to the destination: their
  delivery-log records carry the raw ranges and the rules used, and the rules are pure functions, so running them
  again over those ranges gives back what was sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from schemas.codec import DecodeError, decode_security_batch
from secstream.config import Settings
from secstream.kafka import consumer_config
from secstream.offsets import PartitionRange, Position, plan_ranges
from secstream.replay.core import OffsetRanges, OriginIdSet, compile_rules, kept_origin_ids
from secstream.replay.reading import read_ranges
from sinks.checkpoint import merge_ranges, ranges_from_records
from streams.processing import BatchProcessor


def probe_consumer(settings: Settings) -> Consumer:
    """A consumer that only reads assigned ranges; its throwaway group never commits."""
    return Consumer(consumer_config(settings.kafka, f"secstream-replay-probe-{uuid.uuid4().hex[:8]}"))


def read_delivery_log(settings: Settings) -> list[bytes]:
    """Every record value of the delivery-log topic (an empty list when the topic does not exist yet)."""
    topic = settings.topics.delivery_log
    consumer = probe_consumer(settings)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        ranges = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            ranges.append(PartitionRange(p, low, high))
        values = (m.value() for m in read_ranges(consumer, topic, ranges,
                                                 stall_timeout=settings.replay.stall_timeout_seconds))
        return [v for v in values if v]
    finally:
        consumer.close()


@dataclass
class RawRun:
    """Raw ranges an earlier raw replay delivered to the destination with one set of rules."""

    rules: list[dict[str, Any]]
    ranges: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


def raw_runs(values: Iterable[bytes], destination: str, raw_topic: str) -> dict[str, RawRun]:
    """Earlier raw replays to ``destination``, by rules fingerprint, with their merged raw ranges."""
    runs: dict[str, RawRun] = {}
    for value in values:
        record = orjson.loads(value)
        if (record.get("destination") != destination or record.get("topic") != raw_topic
                or "rules_fingerprint" not in record):
            continue
        run = runs.setdefault(record["rules_fingerprint"], RawRun(record["rules"]))
        run.ranges.setdefault(int(record["partition"]), []).append(
            (int(record["first_offset"]), int(record["last_offset"])))
    for run in runs.values():
        run.ranges = {p: merge_ranges(r) for p, r in run.ranges.items()}
    return runs


def delivered_offsets(values: Iterable[bytes], destination: str, topic: str) -> OffsetRanges:
    return OffsetRanges(ranges_from_records(values, destination, topic))


def intersect(window: Sequence[PartitionRange], done: OffsetRanges) -> list[PartitionRange]:
    """The parts of ``window`` inside ``done``."""
    return [PartitionRange(r.partition, lo, hi) for r in window for lo, hi in done.pieces(r.partition, r.start, r.end)]


@dataclass
class SkipSources:
    """Where a raw replay's skip set came from (reported in the summary)."""

    normalized_messages: int = 0
    raw_replay_messages: int = 0
    undecodable: int = 0


def raw_skip_ids(settings: Settings, destination: str, values: Sequence[bytes], window_ms: tuple[int, int],
                 partitions: list[int] | None = None, *, normalized: bool = True) -> tuple[OriginIdSet, SkipSources]:
    """EventOriginIds ``destination`` already holds among events near the window ``window_ms`` (Kafka time): rows
    of delivered normalized messages (unless ``normalized`` is False) and events earlier raw replays sent."""
    slack = int(settings.replay.overlap_slack_seconds * 1000)
    start, end = Position.at_ms(window_ms[0] - slack), Position.at_ms(window_ms[1] + slack)
    ids = OriginIdSet()
    sources = SkipSources()
    stall = settings.replay.stall_timeout_seconds
    consumer = probe_consumer(settings)
    try:
        topic = settings.topics.normalized
        if normalized and _exists(consumer, topic):
            window = plan_ranges(consumer, topic, start, end)
            for msg in read_ranges(consumer, topic, intersect(window, delivered_offsets(values, destination, topic)),
                                   stall_timeout=stall):
                sources.normalized_messages += 1
                try:
                    rows = decode_security_batch(msg.value())["rows"]  # type: ignore[arg-type]
                except DecodeError:
                    sources.undecodable += 1  # the sink dead-lettered it: nothing of it reached the workspace
                    continue
                ids.update(row["EventOriginId"] for row in rows if row.get("EventOriginId"))
        topic = settings.topics.raw
        runs = raw_runs(values, destination, topic)
        if runs:
            window = plan_ranges(consumer, topic, start, end, partitions)
            for run in runs.values():
                stage = BatchProcessor(compile_rules(run.rules))
                for msg in read_ranges(consumer, topic, intersect(window, OffsetRanges(run.ranges)),
                                       stall_timeout=stall):
                    sources.raw_replay_messages += 1
                    try:
                        ids.update(kept_origin_ids(stage, msg.value()))  # type: ignore[arg-type]
                    except DecodeError:
                        sources.undecodable += 1
    finally:
        consumer.close()
    return ids, sources


def _exists(consumer: Consumer, topic: str) -> bool:
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    return meta is not None and meta.error is None


def window_of(consumer: Consumer, topic: str, ranges: Sequence[PartitionRange], stall: float) -> tuple[int, int] | None:
    """Kafka timestamps (ms) of the first and last message of each non-empty range: (earliest, latest)."""
    edges = [PartitionRange(r.partition, r.start, r.start + 1) for r in ranges if r.size]
    edges += [PartitionRange(r.partition, r.end - 1, r.end) for r in ranges if r.size > 1]
    stamps = [m.timestamp()[1] for m in read_ranges(consumer, topic, edges, stall_timeout=stall)]
    stamps = [s for s in stamps if s >= 0]
    return (min(stamps), max(stamps)) if stamps else None
