"""The sink skips the stream stage's re-emissions (real broker, real SDK, the workspace emulator): within one run,
across a restart (marks from the commit metadata) and where the broker keeps no commit metadata (marks read back)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.codec import encode_security_batch
from secstream.config import Settings
from secstream.kafka import consumer_config, producer_config
from secstream.lifecycle import run_stage
from secstream.source_position import source_headers
from sinks.reemission import decode_marks
from sinks.runner import SinkStage, group_id
from tests.sinks.helpers import origin_ids, stored_counts
from tests.sinks.rows import make_batches
from workspace.testing import WorkspaceEmulator

pytestmark = pytest.mark.integration

RAW = "secstream.raw"
PARTITION = 1


def batches_for(count: int) -> list[dict[str, Any]]:
    """``count`` one-host batches of 20 golden rows each, made unique (one per raw offset 0..count-1)."""
    prefix = uuid.uuid4().hex[:8]
    batches = make_batches(20 * count, 20, 1)
    for batch in batches:
        batch["computer"] = f"{prefix}-{batch['computer']}"
        for row in batch["rows"]:
            row["Computer"] = batch["computer"]
    return batches


def write(settings: Settings, batches: list[dict[str, Any]], raw_offsets: list[int] | None,
          raw_partition: int = 2) -> None:
    """The batches to one normalized partition as the stream stage writes them (``raw_offsets`` None: no
    position headers, as an older producer writes them)."""
    producer = Producer(producer_config(settings.kafka))
    for n, batch in enumerate(batches):
        headers = source_headers(RAW, raw_partition, raw_offsets[n], 0, 1) if raw_offsets is not None else None
        producer.produce(settings.topics.normalized, key=batch["computer"].encode(),
                         value=encode_security_batch(batch), partition=PARTITION, headers=headers)
    assert producer.flush(30) == 0


def run_sink(settings: Settings) -> SinkStage:
    stage = SinkStage(settings, settings.destinations[0], idle_exit_seconds=1.5)
    run_stage(stage, checkpoint_seconds=settings.sink.checkpoint_seconds)
    return stage


def committed(settings: Settings) -> TopicPartition:
    consumer = Consumer(consumer_config(settings.kafka, group_id(settings, settings.destinations[0])))
    try:
        return consumer.committed([TopicPartition(settings.topics.normalized, PARTITION)], timeout=10)[0]
    finally:
        consumer.close()


def drop_commit_metadata(settings: Settings) -> None:
    """Commit the same offset with empty metadata, as a broker that keeps none would hand it back."""
    tp = committed(settings)
    consumer = Consumer(consumer_config(settings.kafka, group_id(settings, settings.destinations[0])))
    try:
        consumer.commit(offsets=[TopicPartition(tp.topic, tp.partition, tp.offset, metadata="")],
                        asynchronous=False)
    finally:
        consumer.close()


def test_reemission_in_one_run_is_skipped_and_messages_without_position_are_not(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator) -> None:
    batches = batches_for(8)
    write(sink_settings, batches[:6], [0, 1, 2, 3, 4, 5])
    write(sink_settings, batches[3:6], [3, 4, 5])  # the stream restarted from raw offset 3
    write(sink_settings, batches[6:], [6, 7])
    unlabelled = batches_for(2)
    write(sink_settings, unlabelled + unlabelled, None)  # the same two batches twice, without positions

    stage = run_sink(sink_settings)

    assert stored_counts(workspace_emulator, batches) == dict.fromkeys(origin_ids(batches), 1)
    assert stored_counts(workspace_emulator, unlabelled) == dict.fromkeys(origin_ids(unlabelled), 2)
    assert stage.totals["reemissions_skipped"] == 3
    assert stage.totals["rows_accepted"] == 20 * (8 + 4)
    assert committed(sink_settings).offset == 6 + 3 + 2 + 4  # skipped messages are committed past too


@pytest.mark.parametrize("metadata", [True, False], ids=["commit-metadata", "read-back"])
def test_reemission_after_a_sink_restart_is_skipped(
        sink_settings: Settings, workspace_emulator: WorkspaceEmulator, metadata: bool) -> None:
    batches = batches_for(7)
    write(sink_settings, batches[:5], [10, 11, 12, 13, 14])
    first = run_sink(sink_settings)
    assert first.totals["rows_accepted"] == 100
    marks = decode_marks(committed(sink_settings).metadata)
    assert marks is not None and marks[(RAW, 2)].offset == 14
    if not metadata:
        drop_commit_metadata(sink_settings)
        assert decode_marks(committed(sink_settings).metadata) is None

    write(sink_settings, batches[2:5], [12, 13, 14])  # re-emitted after the sink stopped
    write(sink_settings, batches[5:], [15, 16])
    second = run_sink(sink_settings)

    assert stored_counts(workspace_emulator, batches) == dict.fromkeys(origin_ids(batches), 1)
    assert second.totals["reemissions_skipped"] == 3 and second.totals["rows_accepted"] == 40
    assert second.reemissions is not None
    stats = second.reemissions.stats
    assert (stats.restored_from_metadata, stats.restored_from_tail) == ((1, 0) if metadata else (0, 1))
