"""Consumer lag of the Faust worker, reported through the same gauge as the confluent-kafka stages.

aiokafka has no librdkafka statistics, so a Faust timer computes, per assigned source partition, the high
watermark minus the committed offset (or, before the first commit, minus the next offset to process) and hands it
to a ``KafkaClientStats`` as a snapshot: ``secstream.kafka.consumer_lag`` {stage="stream", topic, partition}.
The timer runs on the worker's event loop, so the consumer is only touched there; the gauge callback, on the
exporter's thread, reads the finished snapshot.
"""

from __future__ import annotations

import logging
from typing import Any

from secstream.kafka_metrics import ClientSnapshot, KafkaClientStats

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0


def partition_lag(highwater: int | None, committed: int | None, processed: int | None) -> int | None:
    """Records not yet committed: ``highwater`` is the next offset the partition will get; ``committed`` the next
    offset to read after a restart; ``processed`` the last offset handled (a fallback before the first commit)."""
    if highwater is None or highwater < 0:
        return None
    position = committed if committed is not None else (None if processed is None else processed + 1)
    if position is None:
        return None
    return max(0, highwater - position)


class FaustLagReporter:
    """``app.timer(INTERVAL_SECONDS)(reporter.update)``; ``processed`` is filled in by the stage per message."""

    def __init__(self, app: Any, topic: str, client: str) -> None:
        self.app = app
        self.topic = topic
        self.client = client
        self.processed: dict[int, int] = {}
        self.stats = KafkaClientStats("stream", INTERVAL_SECONDS)

    async def update(self) -> None:
        try:
            consumer = self.app.consumer
            assignment = [tp for tp in consumer.assignment() if tp.topic == self.topic]
            committed = getattr(consumer, "_committed_offset", {})  # Faust keeps what it committed here
            lag: dict[tuple[str, int], int] = {}
            for tp in assignment:
                value = partition_lag(consumer.highwater(tp), committed.get(tp), self.processed.get(tp.partition))
                if value is not None:
                    lag[(tp.topic, tp.partition)] = value
        except Exception as exc:  # not started or rebalancing: report nothing this round
            log.debug("stream lag not available: %s", exc)
            return
        self.stats.latest = ClientSnapshot(client=self.client, kind="consumer", queue_messages=0, queue_bytes=0,
                                           brokers_up=-1, consumer_lag=lag)  # -1: not known, not reported

    def close(self) -> None:
        self.stats.close()
