"""Running a replay: plan the bounded range, learn what the destination holds, then count or deliver.

A real replay delivers through the sink's own machinery (``sinks.runner.SinkStage``: request builder, retries,
dead letters, delivery log) in ``ReplayDelivery``, which differs from the live sink only in where messages come
from: an ``assign()``-ed bounded range, committed (if at all) to the group ``<replay.group_prefix><name>``, and
rows derived by ``ReplayProcessor`` instead of read as they are.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from opentelemetry import metrics

from secstream.config import DestinationSettings, Settings
from secstream.kafka import client_config, consumer_config
from secstream.lifecycle import run_stage
from secstream.offsets import PartitionRange, Position, committed_offsets, plan_ranges
from secstream.replay.core import (
    OffsetRanges,
    OriginIdSet,
    ReplayCounts,
    ReplayProcessor,
    TopicKind,
    compile_rules,
    load_rules,
    rules_document,
    rules_fingerprint,
)
from secstream.replay.history import (
    SkipSources,
    delivered_offsets,
    probe_consumer,
    raw_runs,
    raw_skip_ids,
    read_delivery_log,
    window_of,
)
from secstream.replay.reading import StalledError, read_ranges
from sinks.runner import SinkStage, group_id
from sinks.service import IngestionService

Progress = Callable[[ReplayCounts], None]

meter = metrics.get_meter("secstream.replay")
EVENTS_READ = meter.create_counter("secstream.replay.events_read", unit="{event}",
                                   description="events (raw) or rows (normalized) read from the range")
ROWS_SENT = meter.create_counter("secstream.replay.rows_sent", unit="{row}", description="rows the workspace accepted")
SKIPPED = meter.create_counter("secstream.replay.skipped", unit="{event}",
                               description="not sent, by reason: filtered, duplicate, already_delivered")


@dataclass
class ReplayPlan:
    kind: TopicKind
    topic: str
    name: str
    start: Position
    end: Position | None
    ranges: list[PartitionRange]
    destination: DestinationSettings | None
    rules: list[dict[str, Any]] = field(default_factory=list)  # raw only
    fingerprint: str = ""
    # normalized: messages per partition cut from the range because the live sink has yet to deliver them itself
    left_to_live: dict[int, int] = field(default_factory=dict)
    # raw: live groups that have not finished the window yet (their rows are not known to the replay)
    live_behind: list[str] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(r.size for r in self.ranges)


@dataclass
class ReplayResult:
    counts: ReplayCounts
    dry_run: bool
    sent: int = 0  # rows the workspace accepted (dry run: rows that would be sent)
    sink_dead_lettered: int = 0  # rows the workspace refused for good
    requests: int = 0
    skip_ids: int = 0
    skip_sources: SkipSources = field(default_factory=SkipSources)

    @property
    def dead_lettered(self) -> int:
        return self.counts.dead_lettered + self.sink_dead_lettered


def replay_group(settings: Settings, name: str) -> str:
    return f"{settings.replay.group_prefix}{name}"


def default_name(kind: TopicKind, destination: DestinationSettings | None, start: Position) -> str:
    """The same for the same replay, so a re-run reuses its group; only [A-Za-z0-9._-]."""
    text = f"{destination.name if destination else 'dry'}-{kind}-{start.describe()}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def choose_destination(settings: Settings, name: str | None, kind: TopicKind,
                       dry_run: bool) -> DestinationSettings | None:
    """The named destination; the only one when there is one; none for a dry run without a name."""
    known = {d.name: d for d in settings.destinations}
    if name:
        if name not in known:
            raise ValueError(f"unknown destination {name!r}; configured: {', '.join(known) or '(none)'}")
        return known[name]
    if dry_run:
        return None
    if len(known) == 1:
        return next(iter(known.values()))
    raise ValueError(f"--destination is required ({'configured: ' + ', '.join(known) if known else 'none configured'})"
                     f" for a {kind} replay that sends rows")


def make_plan(settings: Settings, kind: TopicKind, start: Position, end: Position | None,
              partitions: list[int] | None, destination: DestinationSettings | None, rules_spec: str | None,
              name: str | None) -> ReplayPlan:
    """Resolve the range per partition (``offsets_for_times`` for times) and the rules. Reads only metadata."""
    topic = settings.topics.raw if kind == "raw" else settings.topics.normalized
    if kind == "normalized" and rules_spec:
        raise ValueError("--rules applies to raw replays only (normalized rows are replayed as they are)")
    consumer = probe_consumer(settings)
    try:
        ranges = plan_ranges(consumer, topic, start, end, partitions)
    finally:
        consumer.close()
    plan = ReplayPlan(kind, topic, name or default_name(kind, destination, start), start, end, ranges, destination)
    if kind == "raw":
        plan.rules = rules_document(load_rules(rules_spec, settings.rules))
        plan.fingerprint = rules_fingerprint(plan.rules, settings.stream.flavour)
        plan.live_behind = raw_live_behind(settings, plan)
    elif destination is not None:
        leave_to_live_sink(plan, live_positions(settings, group_id(settings, destination), topic))
    return plan


def live_positions(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """A live group's committed offsets in ``topic`` (read only; the group is never joined)."""
    admin = AdminClient(client_config(settings.kafka))
    return {p: o for (t, p), o in committed_offsets(admin, group).items() if t == topic}


def raw_live_behind(settings: Settings, plan: ReplayPlan) -> list[str]:
    """Live groups that will still write rows of a raw window: the stream stage (behind the range end on the raw
    topic) and the destination's sink (behind the end of the normalized topic)."""
    behind = []
    stream = live_positions(settings, settings.stream.app_id, plan.topic)
    late = [r.partition for r in plan.ranges if r.size and stream.get(r.partition, r.end) < r.end]
    if late:
        behind.append(f"the stream stage (group {settings.stream.app_id}), partitions {late} of {plan.topic}")
    if plan.destination is not None:
        group = group_id(settings, plan.destination)
        sink = live_positions(settings, group, settings.topics.normalized)
        consumer = probe_consumer(settings)
        try:
            ends = plan_ranges(consumer, settings.topics.normalized, Position(edge="latest"), None)
        finally:
            consumer.close()
        late = [r.partition for r in ends if sink.get(r.partition, r.end) < r.end]
        if late:
            behind.append(f"the sink (group {group}), partitions {late} of {settings.topics.normalized}")
    return behind


def leave_to_live_sink(plan: ReplayPlan, committed: dict[int, int]) -> None:
    """Cut each range at the live sink group's committed offset: what lies after it, the live sink delivers itself
    (it resumes there), so replaying it too would send those rows twice."""
    ranges = []
    for r in plan.ranges:
        position = committed.get(r.partition)
        if position is not None and position < r.end:
            cut_at = max(position, r.start)
            plan.left_to_live[r.partition] = r.end - cut_at
            r = PartitionRange(r.partition, r.start, cut_at)
        ranges.append(r)
    plan.ranges = ranges


def build_processor(settings: Settings, plan: ReplayPlan) -> tuple[ReplayProcessor, OriginIdSet, SkipSources]:
    """The processor, with what ``plan.destination`` already holds (nothing to skip without a destination)."""
    skip = OriginIdSet()
    sources = SkipSources()
    delivered = OffsetRanges()
    if plan.destination is not None:
        values = read_delivery_log(settings)
        if plan.kind == "normalized":
            delivered = delivered_offsets(values, plan.destination.name, plan.topic)
            # Rows that raw replays sent straight to the destination are not in its normalized ranges.
            window = _window_ms(settings, plan) if raw_runs(values, plan.destination.name, settings.topics.raw) \
                else None
            if window is not None:
                skip, sources = raw_skip_ids(settings, plan.destination.name, values, window, normalized=False)
        else:
            window = _window_ms(settings, plan)
            if window is not None:
                skip, sources = raw_skip_ids(settings, plan.destination.name, values, window,
                                             [r.partition for r in plan.ranges])
    processor = ReplayProcessor(
        plan.kind, rules=compile_rules(plan.rules) if plan.kind == "raw" else None, flavour=settings.stream.flavour,
        dedup_window_seconds=settings.stream.dedup_window_seconds, delivered=delivered, skip_ids=skip,
        topic=plan.topic,
    )
    return processor, skip, sources


def _window_ms(settings: Settings, plan: ReplayPlan) -> tuple[int, int] | None:
    """Kafka-time window of the range: the --from/--to times when given, else the edge messages' timestamps."""
    if not plan.messages:
        return None
    consumer = probe_consumer(settings)
    try:
        edges = window_of(consumer, plan.topic, plan.ranges, settings.replay.stall_timeout_seconds)
    finally:
        consumer.close()
    if edges is None:
        return None
    low = plan.start.time_ms if plan.start.time_ms is not None else edges[0]
    high = plan.end.time_ms if plan.end is not None and plan.end.time_ms is not None else edges[1]
    return min(low, edges[0]), max(high, edges[1])


def dry_run(settings: Settings, plan: ReplayPlan, processor: ReplayProcessor,
            progress: Progress | None = None) -> ReplayCounts:
    """Read the range and count what a real replay would send; nothing is written anywhere."""
    from schemas.codec import DecodeError

    consumer = probe_consumer(settings)
    try:
        for msg in read_ranges(consumer, plan.topic, plan.ranges, stall_timeout=settings.replay.stall_timeout_seconds):
            with contextlib.suppress(DecodeError):  # counted as dead-lettered by the processor
                processor.process(msg.partition(), msg.offset(), msg.value(), msg.key())  # type: ignore[arg-type]
            if progress is not None and processor.counts.messages % 50 == 0:
                progress(processor.counts)
    finally:
        consumer.close()
    if progress is not None:
        progress(processor.counts)
    return processor.counts


class ReplayDelivery(SinkStage):
    """The sink, fed from a bounded ``assign()``-ed range through a ``ReplayProcessor``; ends at the range end."""

    def __init__(self, settings: Settings, plan: ReplayPlan, processor: ReplayProcessor, *,
                 progress: Progress | None = None, service: IngestionService | None = None) -> None:
        assert plan.destination is not None
        super().__init__(settings, plan.destination, service=service)
        self.topic = plan.topic
        # A bounded range is sent as it is read (what a dry run counts); the live sink's skip of stream
        # re-emissions relies on its group's commits, which a replay does not make.
        self.reemissions = None
        self.row_progress = False  # likewise the row progress in the commit metadata
        self.plan = plan
        self.processor = processor
        self.state.name = f"replay-{plan.name}"
        self._progress_cb = progress
        self._ends = {r.partition: r.end for r in plan.ranges if r.size}
        self._open = set(self._ends)
        self._last_read = time.monotonic()
        self._messages_seen = 0
        self.log_fields = {"replay": plan.name}
        if plan.kind == "raw":
            # What an later raw replay needs to rebuild exactly which events this one sent.
            self.log_fields.update(rules_fingerprint=plan.fingerprint, rules=plan.rules,
                                   flavour=settings.stream.flavour)

    def _connect(self) -> Consumer:
        consumer = Consumer(consumer_config(
            self.settings.kafka, replay_group(self.settings, self.plan.name),
            **{"max.poll.interval.ms": self.settings.sink.max_poll_interval_ms, "on_commit": self._on_commit},
        ))
        consumer.assign([TopicPartition(self.topic, r.partition, r.start) for r in self.plan.ranges if r.size])
        return consumer

    def _take(self, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        end = self._ends.get(partition)
        if end is None or offset >= end or partition not in self._open:
            self._reached(partition)  # fetched ahead of the range end: not ours
            return
        super()._take(msg)
        if offset >= end - 1:
            self._reached(partition)

    def _decode(self, msg: Message) -> dict[str, Any]:
        processed = self.processor.process(msg.partition(), msg.offset(), msg.value(), msg.key())  # type: ignore[arg-type]
        assert self.producer is not None
        for letter in processed.dead_letters:
            self.producer.produce(self.settings.topics.dead_letter, key=letter.key, value=letter.value,
                                  headers=list(letter.headers))
        return {"computer": processed.computer, "rows": processed.rows}

    def _reached(self, partition: int | None) -> None:
        if partition in self._open:
            self._open.discard(partition)
            assert self.consumer is not None
            self.consumer.pause([TopicPartition(self.topic, partition)])

    def run_once(self) -> bool:
        super().run_once()
        assert self.consumer is not None
        if self.totals["messages"] != self._messages_seen:
            self._messages_seen = self.totals["messages"]
            self._last_read = time.monotonic()
        elif self._open and not self._backlog:
            for partition in list(self._open):
                # Offsets can have holes (compaction, transaction markers): the position says we are past the end.
                position = self.consumer.position([TopicPartition(self.topic, partition)])[0].offset
                if position >= self._ends[partition]:
                    self._reached(partition)
            if self._open and time.monotonic() - self._last_read > self.settings.replay.stall_timeout_seconds:
                raise StalledError(f"{self.topic}: nothing read for {self.settings.replay.stall_timeout_seconds:.0f} s"
                                   f" with partitions {sorted(self._open)} unfinished; were the offsets deleted by "
                                   f"retention?")
        if self._progress_cb is not None:
            self._progress_cb(self.processor.counts)
        return not self.finished

    @property
    def finished(self) -> bool:
        return not (self._open or self._backlog or self._in_flight or self._tracker.pending_messages
                    or self._builder.open_rows)


def run_replay(settings: Settings, plan: ReplayPlan, *, dry: bool, progress: Progress | None = None,
               service: IngestionService | None = None) -> ReplayResult:
    """Count (``dry``) or deliver the plan's range. Raises the sink's ``FatalSinkError`` on fatal sink errors."""
    processor, skip, sources = build_processor(settings, plan)
    result = ReplayResult(processor.counts, dry, skip_ids=len(skip), skip_sources=sources)
    if dry or plan.destination is None:
        dry_run(settings, plan, processor, progress)
        result.dry_run = True
        result.sent = processor.counts.to_send
        return result
    stage = ReplayDelivery(settings, plan, processor, progress=progress, service=service)
    try:
        run_stage(stage, checkpoint_seconds=settings.sink.checkpoint_seconds)
    finally:
        result.sent = stage.totals["rows_accepted"]
        result.sink_dead_lettered = stage.totals["rows_dead_lettered"]
        result.requests = stage.totals["requests"]
        _record(plan, result)
    return result


def _record(plan: ReplayPlan, result: ReplayResult) -> None:
    """Totals of a run, once: the sink's own counters already count requests and rows per batch."""
    attrs = {"topic": plan.kind, "destination": plan.destination.name if plan.destination else ""}
    c = result.counts
    EVENTS_READ.add(c.read, attrs)
    ROWS_SENT.add(result.sent, attrs)
    for reason, n in (("filtered", c.filtered), ("duplicate", c.duplicates), ("already_delivered",
                                                                              c.already_delivered)):
        SKIPPED.add(n, {**attrs, "reason": reason})
