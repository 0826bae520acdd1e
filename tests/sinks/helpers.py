"""Produce SecurityEventBatch messages, and read back what the workspace and Kafka hold."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from secstream.config import Settings
from secstream.kafka import consumer_config, producer_config
from tests.sinks.rows import encoded, make_batches


def produce_rows(settings: Settings, total_rows: int, rows_per_batch: int, computers: int = 3,
                 prefix: str | None = None) -> list[dict[str, Any]]:
    """Produce SecurityEventBatch messages (hosts named after a fresh prefix); returns the batches."""
    prefix = prefix or uuid.uuid4().hex[:8]
    batches = make_batches(total_rows, rows_per_batch, computers)
    for batch in batches:
        batch["computer"] = f"{prefix}-{batch['computer']}"
        for row in batch["rows"]:
            row["Computer"] = batch["computer"]
    producer = Producer(producer_config(settings.kafka))
    for key, value in encoded(batches):
        producer.produce(settings.topics.normalized, key=key, value=value)
    assert producer.flush(30) == 0
    return batches


def origin_ids(batches: list[dict[str, Any]]) -> set[str]:
    return {row["EventOriginId"] for batch in batches for row in batch["rows"]}


def stored_counts(ws: Any, batches: list[dict[str, Any]]) -> dict[str, int]:
    """EventOriginId -> number of rows the workspace holds, for the hosts of ``batches``."""
    hosts = sorted({b["computer"] for b in batches})
    marks = ",".join("?" * len(hosts))
    rows = ws.query(f"SELECT EventOriginId AS id, count(*) AS n FROM SecurityEvent WHERE Computer IN ({marks}) "
                    "GROUP BY EventOriginId", hosts)
    return {r["id"]: r["n"] for r in rows}


def committed_offsets(settings: Settings, group: str) -> dict[int, int]:
    consumer = Consumer(consumer_config(settings.kafka, group))
    try:
        meta = consumer.list_topics(settings.topics.normalized, timeout=10).topics[settings.topics.normalized]
        parts = [TopicPartition(settings.topics.normalized, p) for p in meta.partitions]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def end_offsets(settings: Settings) -> dict[int, int]:
    consumer = Consumer(consumer_config(settings.kafka, f"probe-{uuid.uuid4().hex[:6]}"))
    try:
        meta = consumer.list_topics(settings.topics.normalized, timeout=10).topics[settings.topics.normalized]
        return {p: consumer.get_watermark_offsets(TopicPartition(settings.topics.normalized, p), timeout=10)[1]
                for p in meta.partitions}
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str, timeout: float = 10.0) -> list[Message]:
    """Every message of ``topic`` (all partitions), read from the start."""
    consumer = Consumer(consumer_config(settings.kafka, f"probe-{uuid.uuid4().hex[:6]}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p, 0) for p in meta.partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while sum(ends.values()) > len(out) and time.monotonic() < deadline:
            out += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
        return out
    finally:
        consumer.close()
