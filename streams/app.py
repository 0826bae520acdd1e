"""The Faust worker of ``secstream stream``: raw event batches in, SecurityEvent batches and dead letters out.

Per Kafka message (one host's batch) the agent runs ``BatchProcessor.process`` and sends the result with
``app.producer.send`` (pre-serialised bytes, explicit partition: Faust's ``Topic.send`` path costs more than the
work). The output goes to the partition of the same number as the input (modulo the output's partition count),
so a host's rows stay on one partition, in order. Each output message carries its raw position (headers
``secstream.source`` and ``secstream.part``, ``secstream.source_position``): the sink uses it to skip output written
again after a restart (``sinks.reemission``).

Dedup state: one ``Deduper`` per input partition, persisted in the changelog of the Faust table ``dedup`` (keys
``<partition>␞<computer>␟<channel>␟<epoch>␟<bucket>``, values the bucket's ranges and times) with one record
per bucket touched, never one per event. The records are written with the producer too, to the changelog partition
of the same number, which Faust restores into the table when a partition is assigned; the ``Deduper`` of a
partition is rebuilt from the table on its first message after an assignment.

Order of writes, which is what makes dedup safe across restarts and partition moves:

* ``exactly_once``: output, dead letters and state records of a message go in the partition's transaction with
  the input offset, so they become visible together or not at all.
* ``at_least_once``: state records are held back and written every ``commit_interval_seconds`` and before a
  partition is given up, each time *after* ``producer.flush()`` has made the outputs they describe durable. A crash
  can then only make the state older than the output (a few duplicates, never a lost event).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, cast

import faust
from faust.exceptions import AlreadyConfiguredWarning
from faust.types import TP
from opentelemetry import metrics, trace

from secstream.config import Settings
from secstream.kafka import faust_broker_options
from secstream.lifecycle import StageState
from secstream.source_position import source_headers
from secstream.telemetry import batch_span, inject_trace_headers
from streams.batch_build import install_threaded_batch_build
from streams.dedup import Deduper, iter_partition_records
from streams.fetch_wait import install_empty_fetch_wait
from streams.filtering import RuleLike, RuleSet
from streams.group_membership import install_keep_member_id
from streams.lag import INTERVAL_SECONDS, FaustLagReporter
from streams.processing import BatchProcessor, Outcome
from streams.start_positions import install_uncommitted_start

log = logging.getLogger(__name__)

TABLE_NAME = "dedup"
_PARTITION_SEP = "\x1e"
# After its agent failed, the worker exits (code 1) within this many seconds even if Faust's shutdown hangs.
FAILED_EXIT_SECONDS = 10.0
# Where a raw partition that was never committed starts: its oldest record, so nothing already sent is skipped.
AUTO_OFFSET_RESET = "earliest"



def changelog_topic_name(settings: Settings) -> str:
    return f"{settings.stream.app_id}-{TABLE_NAME}-changelog"


def partition_prefix(partition: int) -> bytes:
    return f"{partition}{_PARTITION_SEP}".encode()


class _Instruments:
    """OpenTelemetry counters, added to once per message."""

    def __init__(self) -> None:
        meter = metrics.get_meter("secstream.stream")
        self.tracer = trace.get_tracer("secstream.stream")
        self.messages = meter.create_counter("secstream.stream.messages_in", description="raw Kafka messages")
        self.events_in = meter.create_counter("secstream.stream.events_in", description="raw events read")
        self.rows_out = meter.create_counter("secstream.stream.events_out", description="SecurityEvent rows written")
        self.filtered = meter.create_counter("secstream.stream.events_filtered", description="dropped by the rules")
        self.duplicates = meter.create_counter("secstream.stream.events_deduplicated",
                                               description="dropped as duplicates")
        self.dead = meter.create_counter("secstream.stream.events_dead_lettered",
                                         description="events (or undecodable messages) sent to the dead-letter topic")
        self.seconds = meter.create_histogram("secstream.stream.batch_seconds", unit="s",
                                              description="processing time per message")
        self.batch_events = meter.create_histogram("secstream.stream.batch_events", unit="{event}",
                                                   description="raw events per Kafka message")

    def record(self, outcome: Outcome, seconds: float) -> None:
        self.messages.add(1)
        self.events_in.add(outcome.events_in)
        self.batch_events.record(outcome.events_in)
        if outcome.rows:
            self.rows_out.add(outcome.rows)
        if outcome.filtered:
            self.filtered.add(outcome.filtered)
        if outcome.duplicates:
            self.duplicates.add(outcome.duplicates)
        if outcome.dead_lettered:
            self.dead.add(outcome.dead_lettered)
        self.seconds.record(seconds)


class StreamStage:
    """State and per-message handling shared by the agent, the timer and the rebalance hooks."""

    def __init__(self, settings: Settings, app: faust.App, table: Any, rules: RuleSet) -> None:
        self.settings = settings
        self.app = app
        self.table = table
        self.processor = BatchProcessor(rules, flavour=settings.stream.flavour)
        self.window = settings.stream.dedup_window_seconds
        self.exactly_once = settings.stream.processing_guarantee == "exactly_once"
        self.source_topic = settings.topics.raw
        self.output_topic = settings.topics.normalized
        self.output_partitions = settings.topics.normalized_partitions
        self.dead_letter_topic = settings.topics.dead_letter
        self.changelog_topic = changelog_topic_name(settings)
        self.dedupers: dict[int, Deduper] = {}
        self.pending: dict[int, dict[bytes, bytes | None]] = {}
        self.state = StageState("stream")
        self.assigned_once = False  # the worker has been running, not just starting
        self.instruments = _Instruments()
        self.lag = FaustLagReporter(app, self.source_topic, f"{settings.kafka.client_id}-stream")

    # ------------------------------------------------------------------------------------------ per message
    def deduper(self, partition: int) -> Deduper:
        deduper = self.dedupers.get(partition)
        if deduper is None:
            deduper = Deduper(self.window)
            deduper.load(iter_partition_records(self._table_items(), partition_prefix(partition)))
            self.dedupers[partition] = deduper
            log.info("dedup state of partition %d: %d logs, %d events", partition, len(deduper.logs),
                     deduper.event_count())
        return deduper

    def _table_items(self) -> Iterable[tuple[bytes, bytes | None]]:
        return list(self.table.data.items())

    def _transactional_id(self, partition: int) -> str | None:
        if not self.exactly_once:
            return None
        group = self.app.assignor.group_for_topic(self.source_topic)
        return f"{self.app.conf.id}-{group}-{partition}"

    async def handle(self, message: Any) -> None:
        started = time.perf_counter()
        partition: int = message.partition
        source = f"{message.topic}/{partition}/{message.offset}"
        deduper = self.deduper(partition)
        headers = message.headers
        with batch_span(self.instruments.tracer, "stream.batch", headers or None,
                        {"messaging.kafka.partition": partition, "messaging.kafka.offset": message.offset}):
            outcome = self.processor.process(message.value, message.key, deduper, source)
            tid = self._transactional_id(partition)
            send = self.app.producer.send
            trace_headers = inject_trace_headers() if outcome.values else []
            parts = len(outcome.values)
            for part, value in enumerate(outcome.values):
                # The raw position lets the sink recognise this output if it is ever written again.
                out_headers = trace_headers + source_headers(message.topic, partition, message.offset, part, parts)
                await send(self.output_topic, message.key, value, partition % self.output_partitions,
                           None, out_headers, transactional_id=tid)  # type: ignore[arg-type]
            for letter in outcome.dead_letters:
                await send(self.dead_letter_topic, letter.key, letter.value, None, None,
                           letter.headers, transactional_id=tid)  # type: ignore[arg-type]
            delta = deduper.delta()
            if delta:
                if self.exactly_once:
                    await self._send_state(partition, delta, tid)
                else:
                    self.pending.setdefault(partition, {}).update(delta)
        self.instruments.record(outcome, time.perf_counter() - started)
        self.lag.processed[partition] = message.offset
        self.state.progressed()

    async def _send_state(self, partition: int, delta: dict[bytes, bytes | None], tid: str | None) -> None:
        prefix = partition_prefix(partition)
        for key, value in delta.items():
            await self.app.producer.send(self.changelog_topic, prefix + key, value, partition, None, None,
                                         transactional_id=tid)

    # ------------------------------------------------------------------------------------ checkpoints
    async def checkpoint(self, partitions: Iterable[int] | None = None) -> None:
        """at_least_once: write held-back state records, after the outputs they cover are durable."""
        chosen = list(self.pending) if partitions is None else [p for p in partitions if p in self.pending]
        taken = {p: self.pending.pop(p) for p in chosen}
        if not taken:
            return
        await self.app.producer.flush()
        for partition, delta in taken.items():
            await self._send_state(partition, delta, None)
        await self.app.producer.flush()

    async def on_revoked(self, revoked: set[TP]) -> None:
        mine = {tp.partition for tp in revoked if tp.topic == self.source_topic}
        if mine and not self.exactly_once:
            await self.checkpoint(mine)
        self.state.ready = False
        self.state.detail = "rebalancing"

    async def on_assigned(self, assigned: set[TP]) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.source_topic}
        # A partition that stayed here keeps its state; one that left is rebuilt from the table (restored by
        # Faust from the changelog) when it comes back.
        for partition in set(self.dedupers) - mine:
            del self.dedupers[partition]
        self.state.ready = True
        if not self.assigned_once:
            # Start-up is over: what exists now (modules, Faust, clients) lives as long as the worker. Frozen, it
            # is no longer traversed by every full collection that the per-batch allocations trigger.
            gc.freeze()
        self.assigned_once = True
        self.state.detail = f"running ({len(mine)} partitions)"


def _never_commit(message: Any) -> None:
    """Keep a failed message's offset, and every later one of its partition, out of all commits.

    Faust records an offset for commit on the message's first ack (``Consumer.ack`` tests and sets ``acked``), and
    the stream acks the message it handed out when its iterator is closed, failure or not. Taking that first ack
    here leaves a gap at this offset, and Faust commits a partition only up to its first gap.
    """
    message.acked = True


def _stop_waiting_for_streams(app: faust.App) -> None:
    """Faust's shutdown waits (``stream_wait_empty``) until every message taken is acked; a failed one never is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlreadyConfiguredWarning)
        app.conf.stream_wait_empty = False


def _exit_after(seconds: float, reason: str) -> None:
    """End the process with code 1 if Faust's shutdown has not ended it within ``seconds`` (signals included)."""

    def _exit() -> None:
        log.error("the stream worker did not stop within %.0f s of a failure (%s); exiting", seconds, reason)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, _exit)
    timer.daemon = True
    timer.start()


def build_app(settings: Settings, rules: RuleSet | None = None) -> tuple[faust.App, StreamStage]:
    """The Faust app with its topic, table, agent, timer and rebalance hooks. Rules are compiled if not given."""
    s = settings.stream
    rules = rules if rules is not None else RuleSet.compile(cast(Sequence[RuleLike], settings.rules))
    install_empty_fetch_wait(s.empty_fetch_wait_ms)
    install_threaded_batch_build(s.producer_build_thread)
    install_keep_member_id()
    install_uncommitted_start([settings.topics.raw], AUTO_OFFSET_RESET)
    partitions = settings.topics.raw_partitions
    app = faust.App(
        s.app_id,
        **faust_broker_options(settings.kafka),
        store=s.store,
        datadir=str(s.data_dir),
        processing_guarantee=s.processing_guarantee,
        topic_partitions=partitions,
        topic_replication_factor=settings.topics.replication_factor,
        table_standby_replicas=0,
        broker_session_timeout=s.session_timeout_seconds,
        broker_rebalance_timeout=s.rebalance_timeout_seconds,
        broker_heartbeat_interval=min(3.0, s.session_timeout_seconds / 3),
        broker_commit_interval=s.commit_interval_seconds,
        broker_client_id=settings.kafka.client_id,
        consumer_auto_offset_reset=AUTO_OFFSET_RESET,
        producer_max_batch_size=s.producer_max_batch_bytes,
        producer_linger=s.producer_linger_ms / 1000.0,
        producer_compression_type=None if s.producer_compression == "none" else s.producer_compression,
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
    )
    source = app.topic(settings.topics.raw, key_serializer="raw", value_serializer="raw", partitions=partitions)
    table = app.Table(TABLE_NAME, key_type=bytes, value_type=bytes, partitions=partitions)
    # Keys and values are our own bytes: no codec (set before the changelog topic is first built).
    table.key_serializer = table.value_serializer = "raw"  # type: ignore[attr-defined]
    stage = StreamStage(settings, app, table, rules)

    async def process(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                await stage.handle(event.message)
            except Exception as exc:
                # A dead agent in a live worker would stall its partitions silently: fail the whole worker so
                # the orchestrator restarts it. The message's offset is never committed, so nothing is lost.
                stage.state.live = False
                stage.state.detail = f"failed: {exc.__class__.__name__}: {exc}"
                _never_commit(event.message)
                _stop_waiting_for_streams(app)
                _exit_after(FAILED_EXIT_SECONDS, stage.state.detail)
                await app.crash(exc)
                raise

    app.agent(source, name="secstream.stream.process")(process)

    async def checkpoint() -> None:
        if not stage.exactly_once:
            await stage.checkpoint()

    app.timer(s.commit_interval_seconds, name="secstream.stream.checkpoint")(checkpoint)
    app.timer(INTERVAL_SECONDS, name="secstream.stream.lag")(stage.lag.update)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(app: faust.App, revoked: set[TP], **_: Any) -> None:
        await stage.on_revoked(revoked)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def _shutdown(app: faust.App, **_: Any) -> None:
        # Faust stops the consumer without a revoke signal: write the held-back state while the producer runs.
        if not stage.exactly_once:
            await stage.checkpoint()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(app: faust.App, assigned: set[TP], **_: Any) -> None:
        await stage.on_assigned(assigned)

    return app, stage
