"""Connector health per Computer, like Sentinel's connector page, computed from Kafka alone.

The workspace cannot be queried through the Logs Ingestion API, so the sinks say what they delivered: after a
checkpoint, at most every ``status.interval_seconds``, a sink writes one small JSON summary per
(destination, partition, Computer) that received rows since its last summary to the compacted ``topics.status``
topic (``StatusRecorder``). ``secstream status`` reads the summaries written within ``status.lookback_seconds``
(from ``offsets_for_times``), the committed and end offsets of the stream and sink consumer groups, and reports
per Computer: the last event time (newest ``TimeGenerated`` received), when the workspace last received rows,
events per minute over ``status.rate_window_seconds``, the lag of the partition the Computer's rows travel on,
and whether it has been silent longer than ``status.silent_after_seconds`` (``build_report``).

Summary record (key ``<destination>\\x1f<partition>\\x1f<Computer>``, UTF-8 JSON value)::

    {"destination": "primary", "partition": 2, "computer": "WIN-DC01", "rows": 1250,
     "last_time_generated": "2026-11-22T05:01:02.1234567Z", "last_received": "2026-11-22T05:01:03.481Z",
     "written": "2026-11-22T05:01:03.502Z"}

``rows`` counts rows accepted since the previous summary of the same key; the two ``last_*`` fields are the
newest ever seen by that writer, so the one record compaction keeps per key still says when a host was last heard.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, Protocol

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from secstream.config import Settings
from secstream.kafka import client_config, consumer_config
from secstream.offsets import Position, committed_offsets, partitions_of, resolve

log = logging.getLogger(__name__)

KEY_SEPARATOR = "\x1f"


class SegmentLike(Protocol):
    """Rows ``rows`` of the Kafka message at ``partition``/``offset`` (``sinks.request_builder.Segment``)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def rows(self) -> int: ...


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 UTC time such as a ``TimeGenerated`` with 7 fractional digits; None when empty or malformed."""
    if not text:
        return None
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", text.strip())
    if match is None:
        return None
    base, fraction, zone = match.groups()
    stamp = f"{base}.{(fraction or '0')[:6].ljust(6, '0')}{'+00:00' if zone in (None, 'Z') else zone}"
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC)
    except ValueError:
        return None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``15m``, ``2h``, ``90s``, ``7d`` or plain seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]


# ---------------------------------------------------------------------------------------------- writing


def status_key(destination: str, partition: int, computer: str) -> bytes:
    return KEY_SEPARATOR.join((destination, str(partition), computer)).encode("utf-8")


@dataclass
class _Message:
    """A consumed message whose rows are not all resolved yet: rows per Computer and their newest TimeGenerated."""

    rows_left: int
    accepted: int
    computers: dict[str, list[Any]]  # Computer -> [rows, newest TimeGenerated]


@dataclass
class _Summary:
    rows: int = 0  # accepted since the last record written
    last_time_generated: str = ""
    last_received: float = 0.0


class StatusRecorder:
    """Kept by a sink (one per destination): which Computers' rows the workspace accepted, written as summaries.

    ``took`` when a message is consumed, ``resolved`` when a part of its rows is accepted or dead-lettered,
    ``forget`` when partitions are given up, ``emit`` after a checkpoint. Writing a summary never holds delivery
    up: without the status topic the recorder turns itself off with one warning. ``on_emit`` receives the summaries
    written (the optional Heartbeat-style rows, ``sinks.heartbeat``).
    """

    def __init__(self, settings: Settings, destination: str,
                 on_emit: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.on_emit = on_emit
        self.enabled = settings.status.enabled
        self.topic = settings.topics.status
        self.interval = settings.status.interval_seconds
        self.destination = destination
        self.records_written = 0
        self._messages: dict[tuple[int, int], _Message] = {}
        self._latest: dict[tuple[int, str], _Summary] = {}
        self._changed: set[tuple[int, str]] = set()
        self._last_emit = time.monotonic()
        self._topic_ready: bool | None = None

    def took(self, partition: int, offset: int, computer: str, rows: Sequence[dict[str, Any]]) -> None:
        if not self.enabled or not rows:
            return
        names = list(map(dict.get, rows, repeat("Computer")))
        first = names[0] or computer
        if names.count(first) == len(names):  # the usual batch: one host; counted in C, no loop per row
            newest = max(filter(None, map(dict.get, rows, repeat("TimeGenerated"))), default="")
            self._messages[(partition, offset)] = _Message(len(rows), 0, {first: [len(rows), newest]})
            return
        computers: dict[str, list[Any]] = {}
        for row in rows:  # a forwarding host's batch may carry several Computers
            name = row.get("Computer") or computer
            generated = row.get("TimeGenerated") or ""
            entry = computers.get(name)
            if entry is None:
                computers[name] = [1, generated]
            else:
                entry[0] += 1
                if generated > entry[1]:  # same fixed-width UTC format: text order is time order
                    entry[1] = generated
        self._messages[(partition, offset)] = _Message(len(rows), 0, computers)

    def resolved(self, segments: Iterable[SegmentLike], accepted: bool) -> None:
        for segment in segments:
            key = (segment.partition, segment.offset)
            message = self._messages.get(key)
            if message is None:
                continue
            message.rows_left -= segment.rows
            if accepted:
                message.accepted += segment.rows
            if message.rows_left <= 0:
                del self._messages[key]
                self._finish(segment.partition, message)

    def _finish(self, partition: int, message: _Message) -> None:
        if message.accepted <= 0:
            return
        total = sum(entry[0] for entry in message.computers.values())
        now = time.time()
        for computer, (rows, generated) in message.computers.items():
            summary = self._latest.setdefault((partition, computer), _Summary())
            # Only when part of a message was dead-lettered are its accepted rows shared out in proportion.
            summary.rows += rows if message.accepted >= total else round(rows * message.accepted / total)
            summary.last_time_generated = max(summary.last_time_generated, generated)
            summary.last_received = now
            self._changed.add((partition, computer))

    def forget(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self._messages = {k: m for k, m in self._messages.items() if k[0] not in gone}

    def emit(self, producer: Producer | None, force: bool = False) -> int:
        """Produce the summaries of Computers that received rows, if ``interval`` has passed (or ``force``)."""
        if producer is None or not self._changed or (not force and time.monotonic() - self._last_emit < self.interval):
            return 0
        if not self._topic_exists(producer):
            self._changed.clear()
            return 0
        written = iso_time(time.time())
        records = []
        for partition, computer in sorted(self._changed):
            summary = self._latest[(partition, computer)]
            record = {
                "destination": self.destination, "partition": partition, "computer": computer,
                "rows": summary.rows, "last_time_generated": summary.last_time_generated or None,
                "last_received": iso_time(summary.last_received), "written": written,
            }
            producer.produce(self.topic, key=status_key(self.destination, partition, computer),
                             value=orjson.dumps(record), on_delivery=self._delivered)
            records.append(record)
            summary.rows = 0
        if self.on_emit is not None:
            self.on_emit(records)
        count = len(self._changed)
        self._changed.clear()
        self._last_emit = time.monotonic()
        self.records_written += count
        producer.poll(0)
        return count

    def _topic_exists(self, producer: Producer) -> bool:
        if self._topic_ready is None:
            try:
                self._topic_ready = self.topic in producer.list_topics(timeout=10).topics
            except Exception as exc:  # a broker hiccup: try again at the next checkpoint
                log.debug("status topic check failed: %s", exc)
                return False
            if not self._topic_ready:
                log.warning("topic %s does not exist: `secstream status` gets no summaries from destination %s "
                            "(run `secstream topics create`)", self.topic, self.destination)
        return self._topic_ready

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            log.warning("status summary for %s not written: %s", self.destination, err.str())


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class ComputerStatus:
    computer: str
    destination: str
    partition: int
    last_time_generated: datetime | None
    last_received: datetime
    rows_in_window: int
    events_per_minute: float
    silent: bool
    stream_lag: int | None  # records behind on the Computer's raw partition (None: unknown)
    sink_lag: int | None  # records behind on its normalized partition, for this destination


@dataclass
class StageLag:
    stage: str
    group: str
    topic: str
    # partition -> (committed offset or None, end offset)
    partitions: dict[int, tuple[int | None, int]] = field(default_factory=dict)
    error: str | None = None

    def lag(self, partition: int) -> int | None:
        if partition not in self.partitions:
            return None
        committed, end = self.partitions[partition]
        return max(0, end - (committed or 0))

    @property
    def total(self) -> int | None:
        return None if self.error else sum(self.lag(p) or 0 for p in self.partitions)


@dataclass
class StatusReport:
    generated_at: datetime
    silent_after_seconds: float
    rate_window_seconds: float
    lookback_seconds: float
    computers: list[ComputerStatus]
    stages: list[StageLag]

    @property
    def silent(self) -> list[ComputerStatus]:
        return [c for c in self.computers if c.silent]

    def as_json(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {
            "generated_at": when(self.generated_at),
            "silent_after_seconds": self.silent_after_seconds,
            "rate_window_seconds": self.rate_window_seconds,
            "computers": [
                {"computer": c.computer, "destination": c.destination, "partition": c.partition,
                 "last_time_generated": when(c.last_time_generated), "last_received": when(c.last_received),
                 "events_per_minute": round(c.events_per_minute, 2), "silent": c.silent,
                 "stream_lag": c.stream_lag, "sink_lag": c.sink_lag}
                for c in self.computers
            ],
            "stages": [
                {"stage": s.stage, "group": s.group, "topic": s.topic, "lag": s.total, "error": s.error,
                 "partitions": {str(p): {"committed": c, "end": e} for p, (c, e) in sorted(s.partitions.items())}}
                for s in self.stages
            ],
        }


def read_summaries(settings: Settings, since_ms: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every summary written since ``since_ms`` (by Kafka timestamp), oldest first per partition.

    Raises ``secstream.offsets.PositionError`` when the status topic does not exist.
    """
    topic = settings.topics.status
    consumer = Consumer(consumer_config(settings.kafka, f"secstream-status-{uuid.uuid4().hex[:12]}",
                                       **{"enable.auto.commit": False}))
    try:
        partitions = partitions_of(consumer, topic)
        starts = resolve(consumer, topic, partitions, Position.at_ms(since_ms))
        ends = resolve(consumer, topic, partitions, Position(edge="latest"))
        pending = {p for p in partitions if starts[p] < ends[p]}
        if not pending:
            return []
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in sorted(pending)])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                if offset + 1 >= ends[partition]:
                    pending.discard(partition)
                try:
                    record = orjson.loads(msg.value() or b"")
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("computer") and record.get("destination"):
                    out.append(record)
        if pending:
            log.warning("status: stopped reading %s after %.0f s with partitions %s unfinished", topic, timeout,
                        sorted(pending))
        return out
    finally:
        consumer.close()


def stage_lags(settings: Settings, destinations: Sequence[str], timeout: float = 10.0) -> list[StageLag]:
    """Committed versus end offsets of the stream group (raw topic) and each destination's sink group."""
    wanted = [StageLag("stream", settings.stream.app_id, settings.topics.raw)] + [
        StageLag(f"sink {name}", f"{settings.sink.group_prefix}{name}", settings.topics.normalized)
        for name in destinations
    ]
    admin = AdminClient(client_config(settings.kafka))
    consumer = Consumer(consumer_config(settings.kafka, f"secstream-status-{uuid.uuid4().hex[:12]}"))
    try:
        ends: dict[str, dict[int, int]] = {}
        for stage in wanted:
            try:
                if stage.topic not in ends:
                    ends[stage.topic] = {
                        p: consumer.get_watermark_offsets(TopicPartition(stage.topic, p), timeout=timeout)[1]
                        for p in partitions_of(consumer, stage.topic, timeout)
                    }
                committed = committed_offsets(admin, stage.group, timeout)
            except Exception as exc:
                stage.error = str(exc) or exc.__class__.__name__
                continue
            stage.partitions = {p: (committed.get((stage.topic, p)), end) for p, end in ends[stage.topic].items()}
    finally:
        consumer.close()
    return wanted


def build_report(settings: Settings, *, silent_after_seconds: float | None = None,
                 lookback_seconds: float | None = None, now: float | None = None) -> StatusReport:
    """Read the summaries and the group offsets and judge every Computer heard from within the lookback."""
    cfg = settings.status
    silent_after = silent_after_seconds or cfg.silent_after_seconds
    lookback = lookback_seconds or cfg.lookback_seconds
    window = cfg.rate_window_seconds
    now = time.time() if now is None else now
    records = read_summaries(settings, int((now - lookback) * 1000))
    configured = [d.name for d in settings.destinations]
    seen = sorted({str(r["destination"]) for r in records} - set(configured))
    stages = stage_lags(settings, configured + seen)
    return StatusReport(
        generated_at=datetime.fromtimestamp(now, UTC), silent_after_seconds=silent_after,
        rate_window_seconds=window, lookback_seconds=lookback,
        computers=summarise(records, stages, settings, now, silent_after, window), stages=stages,
    )


def summarise(records: Iterable[dict[str, Any]], stages: Sequence[StageLag], settings: Settings, now: float,
              silent_after: float, window: float) -> list[ComputerStatus]:
    """Fold summaries into one status per (Computer, destination)."""
    folded: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        received = parse_time(record.get("last_received"))
        if received is None:
            continue
        key = (str(record["computer"]), str(record["destination"]))
        entry = folded.setdefault(key, {"partition": int(record.get("partition", 0)), "received": received,
                                        "generated": None, "rows": 0})
        if received >= entry["received"]:
            entry["received"], entry["partition"] = received, int(record.get("partition", 0))
        generated = parse_time(record.get("last_time_generated"))
        if generated is not None and (entry["generated"] is None or generated > entry["generated"]):
            entry["generated"] = generated
        written = parse_time(record.get("written"))
        if written is not None and now - written.timestamp() <= window:
            entry["rows"] += int(record.get("rows", 0))
    stream = next((s for s in stages if s.stage == "stream"), None)
    sinks = {s.stage.removeprefix("sink "): s for s in stages if s.stage.startswith("sink ")}
    # Rows of raw partition p go to normalized partition p mod n: the raw partition is known when counts match.
    same_partitions = settings.topics.raw_partitions == settings.topics.normalized_partitions
    out = []
    for (computer, destination), entry in sorted(folded.items(), key=lambda item: (item[0][0].lower(), item[0][1])):
        partition = entry["partition"]
        sink = sinks.get(destination)
        out.append(ComputerStatus(
            computer=computer, destination=destination, partition=partition,
            last_time_generated=entry["generated"], last_received=entry["received"],
            rows_in_window=entry["rows"], events_per_minute=entry["rows"] * 60.0 / window,
            silent=now - entry["received"].timestamp() > silent_after,
            stream_lag=stream.lag(partition) if stream is not None and same_partitions else None,
            sink_lag=sink.lag(partition) if sink is not None else None,
        ))
    return out


def ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"
