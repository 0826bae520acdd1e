"""Test data for replays: SecurityEventBatch messages from the golden rows, RawEventBatch messages from the corpus."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Any

from confluent_kafka import Producer

from schemas.codec import encode_raw_batch
from secstream.config import Settings
from secstream.kafka import producer_config
from secstream.lifecycle import run_stage
from sinks.runner import SinkStage
from tests.sinks.rows import encoded, make_batches
from tests.streams.corpus_events import corpus_events


def security_batches(prefix: str, total_rows: int, rows_per_batch: int = 10) -> list[dict[str, Any]]:
    """Golden-row batches for hosts named ``<prefix>-HOST-nn``, every row with its own EventOriginId."""
    batches = make_batches(total_rows, rows_per_batch, computers=3)
    for batch in batches:
        batch["computer"] = f"{prefix}-{batch['computer']}"
        for row in batch["rows"]:
            row["Computer"] = batch["computer"]
            row["EventOriginId"] = str(uuid.uuid4())
    return batches


def produce(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(producer_config(settings.kafka))
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def produce_security(settings: Settings, batches: list[dict[str, Any]]) -> None:
    produce(settings, settings.topics.normalized, encoded(batches))


def row_ids(batches: list[dict[str, Any]]) -> set[str]:
    return {row["EventOriginId"] for batch in batches for row in batch["rows"]}


def run_live_sink(settings: Settings, idle: float = 1.5) -> SinkStage:
    """The real sink of the first destination, until it has had nothing to do for ``idle`` seconds."""
    stage = SinkStage(settings, settings.destinations[0], idle_exit_seconds=idle)
    run_stage(stage, checkpoint_seconds=settings.sink.checkpoint_seconds)
    return stage


def stored_counts(ws: Any, hosts: set[str]) -> dict[str, int]:
    """EventOriginId -> rows the workspace holds for ``hosts``."""
    marks = ",".join("?" * len(hosts))
    rows = ws.query(f"SELECT EventOriginId AS id, count(*) AS n FROM SecurityEvent WHERE Computer IN ({marks}) "
                    "GROUP BY EventOriginId", sorted(hosts))
    return {r["id"]: r["n"] for r in rows}


def now_ms() -> int:
    return int(time.time() * 1000)


def raw_batches(prefix: str, limit: int, per_batch: int = 40) -> list[dict[str, Any]]:
    """Real corpus events (the first ``limit`` of the Security channel), Computer prefixed to be unique to a test,
    as RawEventBatch dicts of one host each."""
    by_host: dict[str, list[dict[str, Any]]] = defaultdict(list)
    taken = 0
    for event in corpus_events():
        if event["channel"] != "Security" or taken >= limit:
            continue
        copy = dict(event)
        copy["computer"] = f"{prefix}-{event['computer']}"
        by_host[copy["computer"]].append(copy)
        taken += 1
    batches = []
    for host, events in by_host.items():
        for i in range(0, len(events), per_batch):
            batches.append({"host": host, "batch_id": str(uuid.uuid4()), "sequence": i, "agent_id": "test",
                            "send_time_us": int(time.time() * 1e6), "events": events[i:i + per_batch]})
    return batches


def encoded_raw(batches: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(b["host"].encode(), encode_raw_batch(b)) for b in batches]
