"""Kafka client health as OpenTelemetry gauges, from librdkafka's own statistics.

librdkafka computes consumer lag per partition and producer queue depth itself and hands them over as a JSON
document every ``statistics.interval.ms`` (from the client's ``poll``/``consume``). A stage adds
``KafkaClientStats(stage).client_options()`` to its confluent-kafka config; the gauges below report the latest
document of every such client in the process:

* ``secstream.kafka.consumer_lag`` {stage, client, topic, partition}: high watermark minus committed offset, for
  the partitions this consumer is fetching. Offsets are committed after the work is durable, so this is the work
  not yet done, in records (batches).
* ``secstream.kafka.producer_queue_messages`` / ``producer_queue_bytes`` {stage, client}: records waiting in
  the producer for delivery.
* ``secstream.kafka.brokers_up`` {stage, client}: brokers this client is connected to.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation


@dataclass(frozen=True)
class ClientSnapshot:
    """What one statistics document says, reduced to the figures we report."""

    client: str
    kind: str  # producer | consumer
    queue_messages: int
    queue_bytes: int
    brokers_up: int
    # (topic, partition) -> lag in records, for partitions being fetched with a known committed offset
    consumer_lag: dict[tuple[str, int], int] = field(default_factory=dict)


def parse_statistics(stats: dict[str, Any]) -> ClientSnapshot:
    """Reduce librdkafka's statistics JSON (already decoded) to a snapshot."""
    lag: dict[tuple[str, int], int] = {}
    for topic, topic_stats in (stats.get("topics") or {}).items():
        for partition_stats in (topic_stats.get("partitions") or {}).values():
            partition = int(partition_stats.get("partition", -1))
            value = int(partition_stats.get("consumer_lag", -1))
            # -1 is the internal "unassigned" partition; lag -1 means no committed offset or watermark yet.
            if partition >= 0 and value >= 0 and partition_stats.get("fetch_state") == "active":
                lag[(topic, partition)] = value
    brokers = (stats.get("brokers") or {}).values()
    return ClientSnapshot(
        # librdkafka's handle name ("secstream#consumer-2") is unique in the process, where client.id is shared by
        # a sink's consumer and producer and by the consumers of several destinations (same topic, partitions).
        client=str(stats.get("name") or stats.get("client_id") or ""),
        kind=str(stats.get("type", "")),
        queue_messages=int(stats.get("msg_cnt", 0)),
        queue_bytes=int(stats.get("msg_size", 0)),
        # Bootstrap entries (nodeid -1) are only the seed connections, not brokers of the cluster.
        brokers_up=sum(1 for b in brokers if b.get("state") == "UP" and b.get("nodeid", -1) >= 0),
        consumer_lag=lag,
    )


class KafkaClientStats:
    """Receives one confluent-kafka client's statistics and publishes them through the gauges.

    ``Consumer({**consumer_config(kafka, group), **stats.client_options()})``. Call ``close()`` when the client is
    closed, so its last figures stop being reported.
    """

    def __init__(self, stage: str, interval_seconds: float = 5.0) -> None:
        self.stage = stage
        self.interval_ms = max(1, int(interval_seconds * 1000))
        self.latest: ClientSnapshot | None = None
        _ensure_instruments()
        _clients.add(self)

    def client_options(self) -> dict[str, Any]:
        return {"statistics.interval.ms": self.interval_ms, "stats_cb": self.record}

    def record(self, stats_json: str) -> None:
        """The ``stats_cb``: runs on the thread that polls the client, every ``statistics.interval.ms``."""
        self.latest = parse_statistics(orjson.loads(stats_json))

    def close(self) -> None:
        _clients.discard(self)
        self.latest = None


_clients: weakref.WeakSet[KafkaClientStats] = weakref.WeakSet()
_instruments_lock = threading.Lock()
_instruments_created = False


def _snapshots() -> Iterator[tuple[KafkaClientStats, ClientSnapshot]]:
    for client in list(_clients):
        snapshot = client.latest
        if snapshot is not None:
            yield client, snapshot


def _observe_lag(_options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(lag, {"stage": c.stage, "client": s.client, "topic": topic, "partition": partition})
        for c, s in _snapshots()
        for (topic, partition), lag in s.consumer_lag.items()
    ]


def _observe_queue_messages(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(s.queue_messages, {"stage": c.stage, "client": s.client})
            for c, s in _snapshots() if s.kind == "producer"]


def _observe_queue_bytes(_options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(s.queue_bytes, {"stage": c.stage, "client": s.client})
            for c, s in _snapshots() if s.kind == "producer"]


def _observe_brokers_up(_options: CallbackOptions) -> Iterable[Observation]:
    # A snapshot that cannot know (the Faust worker's lag reporter) says -1.
    return [Observation(s.brokers_up, {"stage": c.stage, "client": s.client})
            for c, s in _snapshots() if s.brokers_up >= 0]


def _ensure_instruments() -> None:
    """Create the gauges once per process; they report every registered client."""
    global _instruments_created
    with _instruments_lock:
        if _instruments_created:
            return
        meter = metrics.get_meter("secstream.kafka")
        meter.create_observable_gauge("secstream.kafka.consumer_lag", [_observe_lag], unit="{record}",
                                      description="high watermark minus committed offset, per partition")
        meter.create_observable_gauge("secstream.kafka.producer_queue_messages", [_observe_queue_messages],
                                      unit="{record}", description="records waiting in the producer")
        meter.create_observable_gauge("secstream.kafka.producer_queue_bytes", [_observe_queue_bytes], unit="By",
                                      description="bytes waiting in the producer")
        meter.create_observable_gauge("secstream.kafka.brokers_up", [_observe_brokers_up], unit="{broker}",
                                      description="brokers the client is connected to")
        _instruments_created = True
