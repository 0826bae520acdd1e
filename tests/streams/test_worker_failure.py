"""A `secstream stream` worker whose message handling fails exits non-zero, without committing that message.

The fault is a damaged record in the dedup changelog (a key that is not a state key): the worker restores it into
its table at start, and building the partition's dedup state on the partition's first message raises. That is
outside the per-event handling that turns bad events into dead letters, so the agent fails; the worker must then
exit promptly with an error (so systemd / ``docker --restart on-failure`` restart it) and leave the message's
offset uncommitted. Once the damaged record is deleted (a tombstone), a new worker processes the message.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer
from confluent_kafka.admin import AdminClient

from schemas.codec import encode_raw_batch
from secstream.config import Settings
from secstream.kafka import client_config, producer_config
from secstream.topics import delete_topics, ensure_topics
from streams.app import changelog_topic_name, partition_prefix
from streams.cli import stage_topics
from tests.conftest import CORPUS
from tests.streams.corpus_events import events_of
from tests.streams.worker_harness import OutputReader, Worker, make_batches

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECURITY_EVTX = CORPUS / "omerbenamram__evtx/samples/security.evtx"
DAMAGED_KEY = partition_prefix(0) + b"not a dedup state key"
# From the failing message's send: the failure itself takes about a second; the rest is room for a loaded machine.
EXIT_WITHIN_SECONDS = 45.0


@pytest.fixture
def stream_settings(settings: Settings) -> Iterator[Settings]:
    s = settings.model_copy(update={"stream": settings.stream.model_copy(update={
        "app_id": f"stream-fail-{uuid.uuid4().hex[:8]}", "commit_interval_seconds": 0.5,
        "session_timeout_seconds": 6.0, "rebalance_timeout_seconds": 8.0})})
    yield s
    t = s.topics
    delete_topics(s, [t.raw, t.normalized, t.dead_letter, changelog_topic_name(s),
                      f"{s.stream.app_id}-__assignor-__leader"])


def _committed(settings: Settings) -> dict[int, int]:
    """The worker group's committed offsets of the raw topic (absent: never committed)."""
    admin = AdminClient(client_config(settings.kafka))
    group = settings.stream.app_id
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    return {tp.partition: tp.offset for tp in res.topic_partitions or []
            if tp.topic == settings.topics.raw and tp.offset >= 0}


def _send(settings: Settings, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
    producer = Producer(producer_config(settings.kafka))
    producer.produce(topic, key=key, value=value, partition=partition)
    assert producer.flush(30) == 0


def test_failed_message_stops_the_worker_with_an_error_and_stays_uncommitted(
    stream_settings: Settings, tmp_path: Path
) -> None:
    s = stream_settings
    assert not [r for r in ensure_topics(s, stage_topics(s)) if r.action == "error"]
    _send(s, changelog_topic_name(s), DAMAGED_KEY, b"\x01" * 16, 0)
    logons = [e for e in events_of(SECURITY_EVTX) if e["event_id"] == 4624]  # in the default "Common" set
    events = [e for e in logons if e["computer"] == logons[0]["computer"]][:20]
    [batch] = make_batches(events, 100, "collector-1")
    worker = Worker(s, tmp_path, "failing").start()
    assert worker.proc is not None
    try:
        worker.wait_ready()  # the damaged record is restored into the table by now
        _send(s, s.topics.raw, batch["host"].encode(), encode_raw_batch(batch), 0)
        code = worker.proc.wait(EXIT_WITHIN_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the failed worker was still running after {EXIT_WITHIN_SECONDS:.0f} s:\n{worker.log()}")
    finally:
        worker.stop(timeout=10)
    log = worker.log()
    assert code == 1, log
    assert "the stream worker stopped: failed: ValueError" in log, log
    assert _committed(s).get(0, 0) == 0, "the failed message's offset was committed"

    # Without the damaged record, a new worker processes the message: nothing was lost.
    _send(s, changelog_topic_name(s), DAMAGED_KEY, None, 0)
    worker = Worker(s, tmp_path, "repaired").start()
    worker.wait_ready()
    reader = OutputReader(s)
    try:
        deadline = time.monotonic() + 60
        while _committed(s).get(0, 0) < 1:
            assert time.monotonic() < deadline, f"the message was not processed after the repair:\n{worker.log()}"
            time.sleep(0.3)
        reader.wait_rows(len(events), timeout=20, settle=0.5)
        assert len(reader.rows) == len(events)
    finally:
        reader.close()
        assert worker.stop() == 0, worker.log()
